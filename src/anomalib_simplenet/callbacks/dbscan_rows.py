"""What :class:`~.dbscan.DBSCANPostProcessor` collects: the normal reference embeddings and one row per test image.

Both are gathered over DDP ranks by image path (one row per image, in path order), so every rank holds what one
process would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from anomalib_simplenet.clustering import NOISE, DegenerateInputError, NoveltyAssignment
from anomalib_simplenet.components.distributed import batch_keys, gather_by_key, rank_and_world

Embed = Callable[[LightningModule, torch.Tensor], np.ndarray]


def normal_embeddings(trainer: Trainer, pl_module: LightningModule, normal_source: str, embed: Embed) -> np.ndarray:
    """Embeddings ``(N, E)`` of the normal reference images, pre-processed as the model's test batches.

    ``normal_source`` is ``"train"`` (the training set) or ``"val"`` (the normal images of the validation set).
    Under DDP each rank embeds its unpadded share; the shares are gathered, so every rank returns all rows.
    """
    datamodule = trainer.datamodule
    name = f"{normal_source}_data"
    dataset = getattr(datamodule, name, None)
    if dataset is None:
        msg = (
            f"no normal images: the trainer has no datamodule with `{name}` (use Engine.test(model, "
            "datamodule=...) or the anomalib CLI with --data)"
        )
        raise DegenerateInputError(msg)
    rank, world = rank_and_world()
    loader = DataLoader(
        dataset,
        batch_size=getattr(datamodule, "eval_batch_size", 32),
        # Under DDP: this rank's share, each image on one rank only (gathered below).
        sampler=UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False),
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=getattr(datamodule, "external_collate_fn", None) or dataset.collate_fn,
    )
    # The same transform the PreProcessor applies to each test batch in on_test_batch_start.
    transform = getattr(getattr(pl_module, "pre_processor", None), "transform", None)
    chunks, paths = [], []
    for item in loader:
        images = item.image.to(pl_module.device)
        if transform is not None:
            images = transform(images)
        embeddings = embed(pl_module, images)
        item_paths = batch_keys(item.image_path, len(embeddings), len(paths))
        if normal_source == "val":
            if item.gt_label is None:
                msg = "normal_source='val' needs labelled validation images"
                raise DegenerateInputError(msg)
            keep = item.gt_label.cpu().numpy() == 0
            embeddings, item_paths = embeddings[keep], [p for p, k in zip(item_paths, keep, strict=True) if k]
        chunks.append(embeddings)
        paths += item_paths
    if not chunks:
        msg = f"the {normal_source} set is empty"
        raise DegenerateInputError(msg)
    _, (rows,) = gather_by_key(paths, torch.from_numpy(np.concatenate(chunks)))
    return rows.numpy()


class ImageRows:
    """Per-test-image embeddings ``(E,)``, labels, the model's scores and DBSCAN's assignments, batch by batch."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._embeddings: list[np.ndarray] = []
        self._gt: list[np.ndarray] = []
        self._model_score: list[np.ndarray] = []
        self._model_label: list[np.ndarray] = []
        self._final_label: list[np.ndarray] = []
        self._assignments: list[NoveltyAssignment] = []

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, batch: Any, embeddings: np.ndarray, batch_idx: int) -> None:
        """One batch's embeddings ``(N, E)`` and its fields as the model predicted them (``-1``/NaN if absent)."""
        count = len(embeddings)
        paths = batch.image_path if batch.image_path is not None else [None] * count
        self._embeddings.append(embeddings)
        self.paths += [str(p) if p is not None else f"batch{batch_idx}_{i}" for i, p in enumerate(paths)]
        self._gt.append(_as_numpy(batch.gt_label, count, fill=-1))
        self._model_score.append(_as_numpy(batch.pred_score, count, fill=np.nan))
        self._model_label.append(_as_numpy(batch.pred_label, count, fill=-1))

    def add_assignment(self, assignment: NoveltyAssignment) -> None:
        """DBSCAN's decision for the last added batch."""
        self._assignments.append(assignment)

    def add_final_label(self, pred_label: torch.Tensor | None, count: int) -> None:
        """The ``pred_label`` ``(N,)`` the evaluator will see for the last added batch."""
        self._final_label.append(_as_numpy(pred_label, count, fill=-1))

    def embeddings(self) -> np.ndarray:
        """All test embeddings ``(M, E)``."""
        return np.concatenate(self._embeddings)

    def gt(self) -> np.ndarray:
        """Ground-truth labels ``(M,)`` (``-1`` where the batch had none)."""
        return np.concatenate(self._gt)

    def assignment(self) -> NoveltyAssignment:
        """DBSCAN's decisions for all test images, in row order."""
        return NoveltyAssignment(
            labels=np.concatenate([a.labels for a in self._assignments]),
            scores=np.concatenate([a.scores for a in self._assignments]),
        )

    def gather(self, assign: Callable[[np.ndarray], NoveltyAssignment] | None) -> None:
        """Replace this rank's rows by those of all ranks (one per image path, in path order).

        ``assign`` re-assigns the gathered embeddings (DBSCAN assigns each image on its own: the same labels as
        the ranks gave); ``None`` when nothing was assigned.
        """
        columns = (self._embeddings, self._gt, self._model_score, self._model_label, self._final_label)
        self.paths, rows = gather_by_key(self.paths, *(torch.from_numpy(np.concatenate(c)) for c in columns))
        embeddings, gt, model_score, model_label, final_label = (row.numpy() for row in rows)
        self._embeddings, self._gt, self._final_label = [embeddings], [gt], [final_label]
        self._model_score, self._model_label = [model_score], [model_label]
        if assign is not None:
            self._assignments = [assign(embeddings)]

    def rows(self, gt: np.ndarray, assignment: NoveltyAssignment) -> list[dict[str, Any]]:
        """One row per test image, also the CSV rows (``-1``: the batch had no such field)."""
        columns = zip(
            self.paths,
            gt,
            assignment.labels,
            assignment.scores,
            np.concatenate(self._model_score),
            np.concatenate(self._model_label),
            np.concatenate(self._final_label),
            strict=True,
        )
        return [
            {
                "image_path": path,
                "gt_label": int(truth),
                "dbscan_label": int(label),
                "dbscan_anomalous": int(label == NOISE),
                "dbscan_score": float(score),
                "model_score": float(model_score),
                "model_label": int(model_label),
                "pred_label": int(final),
            }
            for path, truth, label, score, model_score, model_label, final in columns
        ]


def _as_numpy(values: torch.Tensor | None, count: int, fill: float) -> np.ndarray:
    """``(count,)`` float array of a per-image batch field, ``fill`` when the field is missing."""
    if values is None:
        return np.full(count, fill, dtype=np.float64)
    return values.detach().reshape(-1).double().cpu().numpy()
