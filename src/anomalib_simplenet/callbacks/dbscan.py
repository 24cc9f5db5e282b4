"""``DBSCANPostProcessor``: cluster the model's per-image embeddings with DBSCAN and read noise as anomalies.

Lightning glue only; the computation lives in :mod:`anomalib_simplenet.clustering`, the collected rows in
:mod:`.dbscan_rows`, the files and the printed table in :mod:`.dbscan_report`. Any model whose torch
module (``lightning_module.model``) has ``image_embedding(images (N, 3, H, W)) -> (N, E)`` works: SimpleNet,
DistillClassifier and UNetAE do. Use it as ``Engine(callbacks=[DBSCANPostProcessor(mode="override")])`` or,
with ``anomalib train --config config.yaml``::

    trainer:
      callbacks:
        - class_path: anomalib_simplenet.callbacks.DBSCANPostProcessor
          init_args: {mode: report, min_samples: 5, pca_components: 0.9}

When things happen during ``trainer.test`` (also the test run of ``anomalib train``):

* ``setup``: the callback moves itself in ``trainer.callbacks`` to just after the model's post-processor.
  Lightning runs trainer callbacks before the model's own (pre-processor, post-processor, evaluator,
  visualizer); from this place, ``on_test_batch_end`` sees the post-processed ``pred_score``/``pred_label``
  (needed by ``mode="combine"``) and writes its decision before the evaluator's metrics and the visualizer
  read the batch.
* ``on_test_start``: embeds the normal images (training set, or the normal images of the validation set)
  with the final model, through the model's pre-processor, and fits standardisation, PCA, ``eps`` and DBSCAN.
* ``on_test_batch_end``: embeds the batch's images (already pre-processed by the model's ``PreProcessor``,
  exactly what the model scored), labels them, and in ``override``/``combine`` mode rewrites ``pred_label``.
* ``on_test_epoch_end``: metrics (logged as ``dbscan_*`` and printed as a table), ``dbscan_results.csv``,
  ``dbscan_pca.png`` and ``dbscan_tsne.png`` in the run folder (``trainer.default_root_dir``).

Degenerate input (fewer normal images than ``min_samples``, every normal image noise, NaN embeddings, no
datamodule to take normal images from) gives a warning and a printed line saying why and what to change; the
model's own predictions then pass through untouched. Limits: the test loop only (``predict`` has neither
labels nor a reference set).

Under DDP the reference and test rows are gathered over ranks (:mod:`.dbscan_rows`): every rank fits what one
process would, and metrics, CSV and plots cover every test image once (files written by rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from anomalib_simplenet.clustering import (
    DBSCANDetector,
    DegenerateInputError,
    EmbeddingProjector,
    NoveltyAssignment,
    embed_tsne_jointly,
    finite_rows,
)
from anomalib_simplenet.components.distributed import is_distributed

from .dbscan_report import assignment_metrics, print_line, print_table, write_plots, write_results
from .dbscan_rows import ImageRows, normal_embeddings


class DBSCANPostProcessor(Callback):
    """DBSCAN on per-image embeddings as a post-processor: measure, plot, and optionally decide.

    Args:
        mode: ``"report"`` only measures and plots; ``"override"`` replaces each test image's ``pred_label``
            by the DBSCAN decision (noise = anomalous); ``"combine"`` merges it with the model's own label
            using ``combine_rule``. ``pred_score`` is never changed, so anomalib's AUROC stays the model's.
        normal_source: where the normal reference images come from: ``"train"`` (the training set) or
            ``"val"`` (the images of the validation set labelled normal). The images go through the dataset's
            own transforms, so random ``train_augmentations`` also reach the reference embeddings.
        min_samples: DBSCAN's ``min_samples`` (a core point has this many images within ``eps``, itself included).
        eps: DBSCAN's radius in the clustering space; ``None`` = automatic: the ``eps_quantile`` quantile of
            the normal images' ``(min_samples-1)``-th neighbour distances, so that share of them are core points.
        eps_quantile: see ``eps``.
        pca_components: PCA components (``int``) or fraction of explained variance to keep (``float``).
        cluster_space: ``"pca"`` (default) runs DBSCAN in the standardised PCA space; ``"tsne"`` in the 2-D
            t-SNE of normal and test images together. t-SNE cannot place a new image without refitting, so it
            decides only at the end of the test epoch and allows ``mode="report"`` only.
        tsne_perplexity: t-SNE perplexity (lowered automatically for small sets).
        combine_rule: ``"or"`` (anomalous if the model or DBSCAN says so) or ``"and"`` (if both do).
        plots: write the PNG scatter plots (t-SNE costs a few seconds on a few hundred images).
        output_dir: folder for the files; ``None`` = the run folder, ``trainer.default_root_dir``.
        seed: t-SNE random state.

    After a test run, ``metrics`` holds the metrics, ``results`` the per-image rows and ``messages`` any notes.
    """

    def __init__(
        self,
        mode: Literal["report", "override", "combine"] = "report",
        normal_source: Literal["train", "val"] = "train",
        min_samples: int = 5,
        eps: float | None = None,
        eps_quantile: float = 0.95,
        pca_components: int | float | None = 0.9,  # noqa: PYI041 - an int is a count, a float a fraction
        cluster_space: Literal["pca", "tsne"] = "pca",
        tsne_perplexity: float = 30.0,
        combine_rule: Literal["or", "and"] = "or",
        plots: bool = True,
        output_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("mode", mode, ("report", "override", "combine")),
            ("normal_source", normal_source, ("train", "val")),
            ("cluster_space", cluster_space, ("pca", "tsne")),
            ("combine_rule", combine_rule, ("or", "and")),
        ):
            if value not in allowed:
                msg = f"{name} must be one of {allowed}, got {value!r}"
                raise ValueError(msg)
        if cluster_space == "tsne" and mode != "report":
            msg = (
                "cluster_space='tsne' decides only after all test images are embedded (t-SNE has no transform "
                "for new points), too late to change pred_label; use mode='report' or cluster_space='pca'"
            )
            raise ValueError(msg)
        if tsne_perplexity <= 0:
            msg = f"tsne_perplexity must be > 0, got {tsne_perplexity}"
            raise ValueError(msg)
        self.mode = mode
        self.normal_source = normal_source
        self.cluster_space = cluster_space
        self.tsne_perplexity = tsne_perplexity
        self.combine_rule = combine_rule
        self.plots = plots
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.seed = seed
        # Validate the numeric arguments now (construction from a YAML config fails early, not after training).
        self._projector = EmbeddingProjector(pca_components)
        self._detector = DBSCANDetector(min_samples=min_samples, eps=eps, eps_quantile=eps_quantile)
        self._reset()

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the model's embedding interface and run right after its post-processor (see module doc)."""
        del stage
        if not callable(getattr(getattr(pl_module, "model", None), "image_embedding", None)):
            msg = (
                f"DBSCANPostProcessor needs {type(pl_module).__name__}.model.image_embedding(images) -> (N, E); "
                "the plugin's SimpleNet, DistillClassifier and UNetAE have it"
            )
            raise TypeError(msg)
        self._place_after_post_processor(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Embed the normal reference images with the final model and fit the clustering on them."""
        self._reset()
        try:
            normal = normal_embeddings(trainer, pl_module, self.normal_source, self._embed)
            finite = finite_rows(normal)
            if not finite.all():
                self._note(f"{int((~finite).sum())} of {len(normal)} normal embeddings contain NaN/inf: left out")
            self._normal = normal[finite]
            self._detector.check_enough(len(self._normal))  # before the projector, which needs fewer
            self._projector.fit(self._normal)
            self._normal_projected = self._projector.transform(self._normal)
            if self.cluster_space == "pca":
                self._detector.fit(self._normal_projected)
                self._fitted = True
        except DegenerateInputError as error:
            self._problem = f"DBSCANPostProcessor skipped: {error}"
            self._note(self._problem)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Embed the batch (already pre-processed), label it, and write ``pred_label`` unless reporting."""
        del trainer, dataloader_idx
        target = outputs if getattr(outputs, "image", None) is not None else batch
        embeddings = self._embed(pl_module, target.image)
        self._test.add(target, embeddings, batch_idx)
        if self._fitted:
            assignment = self._assign(embeddings)
            self._test.add_assignment(assignment)
            if self.mode != "report":
                label = self._decide(target.pred_label, torch.as_tensor(assignment.anomalous))
                target.pred_label = label.to(target.image.device)
                if batch is not target and hasattr(batch, "pred_label"):
                    batch.pred_label = target.pred_label
        self._test.add_final_label(target.pred_label, len(embeddings))  # what the evaluator will see

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Metrics (logged and printed), the CSV and the plots."""
        if self._problem is not None:
            print_line(self._problem)  # already warned in on_test_start; repeat it where the table would be
            return
        if is_distributed():
            self._test.gather(self._assign if self._fitted else None)
        if not len(self._test):
            self._report_problem("DBSCANPostProcessor: no test images were seen")
            return
        test = self._test.embeddings()
        gt = self._test.gt()
        test_projected = self._projector.transform(test)
        tsne_xy = None
        if self.cluster_space == "tsne" or self.plots:
            try:
                tsne_xy = self._tsne(test_projected)
            except DegenerateInputError as error:
                if self.cluster_space == "tsne":
                    self._report_problem(f"DBSCANPostProcessor skipped: {error}")
                    return
                self._note(f"no t-SNE plot: {error}")
        if self.cluster_space == "tsne":
            normal_xy, test_xy = tsne_xy
            try:
                self._detector.fit(normal_xy)
            except DegenerateInputError as error:
                self._report_problem(f"DBSCANPostProcessor skipped: {error}")
                return
            assignment = self._detector.assign(test_xy)
        else:
            assignment = self._test.assignment()

        self.metrics, notes = assignment_metrics(gt, assignment, self._detector)
        for message in notes:
            self._note(message)
        # Every rank holds the same gathered metrics; sync_dist only tells Lightning so (mean of equal values).
        pl_module.log_dict({f"dbscan_{k}": value for k, value in self.metrics.items()}, sync_dist=is_distributed())
        self.results = self._test.rows(gt, assignment)
        folder = self.output_dir or Path(trainer.default_root_dir)
        model = type(pl_module).__name__
        write_results(folder, self.results)
        if self.plots:
            clustering = (self._projector, self._detector, self.cluster_space)
            write_plots(folder, model, clustering, self._normal, test, gt, assignment, tsne_xy)
        title = f"DBSCAN post-processor — {model} (mode={self.mode}, space={self.cluster_space})"
        print_table(title, self.metrics, self.messages, folder, self.plots)

    # ------------------------------------------------------------------ helpers

    def _reset(self) -> None:
        self._fitted = False
        self._problem: str | None = None
        self._normal = np.zeros((0, 0))
        self._normal_projected = np.zeros((0, 0))
        self._test = ImageRows()
        self.metrics: dict[str, float] = {}
        self.results: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def _note(self, message: str) -> None:
        self.messages.append(message)
        rank_zero_warn(message)

    def _report_problem(self, message: str) -> None:
        self._note(message)
        print_line(message)

    def _place_after_post_processor(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reorder ``trainer.callbacks`` so this callback runs after the post-processor, before metrics/visuals.

        A new list is assigned (not mutated in place), so Lightning's loop over the old list in this very hook
        is unaffected; every ``fit``/``test`` rebuilds the list and calls ``setup`` again.
        """
        callbacks = [callback for callback in trainer.callbacks if callback is not self]
        anchors = [getattr(pl_module, name, None) for name in ("post_processor", "evaluator", "visualizer")]
        positions = [next((i for i, c in enumerate(callbacks) if c is a), None) for a in anchors]
        if positions[0] is not None:
            index = positions[0] + 1
        elif any(p is not None for p in positions[1:]):
            index = min(p for p in positions[1:] if p is not None)
        else:
            return  # no anomalib components: the order does not matter
        callbacks.insert(index, self)
        trainer.callbacks = callbacks

    @torch.no_grad()
    def _embed(self, pl_module: LightningModule, images: torch.Tensor) -> np.ndarray:
        """``(N, E)`` float64 embeddings of pre-processed images ``(N, 3, H, W)``."""
        embeddings = pl_module.model.image_embedding(images.to(pl_module.device))
        return embeddings.detach().double().cpu().numpy().reshape(len(images), -1)

    def _assign(self, embeddings: np.ndarray) -> NoveltyAssignment:
        """DBSCAN's decision for embeddings ``(N, E)`` in the fitted clustering space."""
        return self._detector.assign(self._projector.transform(embeddings))

    def _decide(self, own: torch.Tensor | None, dbscan: torch.Tensor) -> torch.Tensor:
        """New ``pred_label`` ``(N,)`` bool from the model's ``own`` label and DBSCAN's noise flags."""
        if self.mode == "override":
            return dbscan
        if own is None:
            self._note_once("the model produced no pred_label to combine with: using the DBSCAN decision alone")
            return dbscan
        own = own.reshape(-1).bool().cpu()
        return own | dbscan if self.combine_rule == "or" else own & dbscan

    def _note_once(self, message: str) -> None:
        if message not in self.messages:
            self._note(message)

    def _tsne(self, test_projected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """2-D t-SNE of the normal and test points together → ``(N, 2)``, ``(M, 2)`` (NaN rows kept NaN)."""
        normal_xy, test_xy, note = embed_tsne_jointly(self._normal_projected, test_projected, self.tsne_perplexity,
                                                      self.seed)
        if note:
            self.messages.append(note)
        return normal_xy, test_xy
