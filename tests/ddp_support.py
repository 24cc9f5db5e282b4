"""Train, validate and test one plugin model with anomalib's Engine, under Lightning DDP or in one process, and
save what it fitted, so that tests can compare a 2-process run with a 1-process run on the same images.

Run as a script (Lightning's ``ddp`` strategy starts the other ranks by running this file again)::

    python tests/ddp_support.py --model UNetAE --devices 2 --root ROOT --category synthetic --out DIR [--frozen]

Writes ``DIR/fitted.pt`` (rank 0): the model's state dict after fit (fitted statistics, post-processor
normalisation and thresholds), test metrics, DBSCAN results, checkpoint files; and ``DIR/rank<r>.json``: the
images each rank trained on per epoch and its feature-cache counters (SimpleNet).

``--frozen`` keeps every weight and BatchNorm statistic at its initial value (gradients dropped before each
step, BatchNorm momentum 0), so both runs fit their statistics on the same network: any difference is then in
how the statistics were gathered. ``--local-only`` makes each rank fit on its own share only (for the test
that shows the comparison catches exactly that).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from unittest import mock

import torch

MODELS = {
    "SimpleNet": {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "pretrain_embed_dim": 64,
                  "target_embed_dim": 64, "discriminator_hidden": 32},
    "DistillClassifier": {"mode": "distill", "pre_trained": False, "image_size": 64, "threshold_mode": "percentile",
                          "holdout_fraction": 0.25, "threshold_percentile": 90.0},
    "UNetAE": {"image_size": 64, "depth": 3, "base_channels": 8, "latent_dim": 16, "use_embedding_score": True},
}


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--category", default="synthetic")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--frozen", action="store_true")
    parser.add_argument("--local-only", action="store_true")
    parser.add_argument("--dbscan", action="store_true")
    parser.add_argument("--model-args", default="{}", help="JSON, added to the model's small settings")
    return parser.parse_args(argv)


def _local_only() -> None:
    """Make every consumer's ``gather_by_key`` see this rank's rows only (the bug the equivalence test catches)."""
    from anomalib_simplenet.callbacks import dbscan_rows
    from anomalib_simplenet.components import distributed
    from anomalib_simplenet.models.distill_classifier import fitting as distill
    from anomalib_simplenet.models.unet_ae import lightning_model as unet

    def gather_local(keys, *tensors):  # noqa: ANN001, ANN202
        with mock.patch.object(distributed, "is_distributed", lambda: False):
            return distributed.gather_by_key(keys, *tensors)

    for module in (dbscan_rows, distill, unet):
        module.gather_by_key = gather_local


def main(argv: list[str] | None = None) -> None:
    """Run as the command line ``argv`` says (also callable in-process for one-process reference runs)."""
    args = _arguments(argv)
    torch.set_num_threads(1)
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything

    import anomalib_simplenet
    from anomalib_simplenet.callbacks import DBSCANPostProcessor

    if args.local_only:
        _local_only()

    class Record(Callback):
        """Per rank: the training images of each epoch and SimpleNet's cache counters; optionally frozen."""

        def __init__(self) -> None:
            self.epochs: list[list[str]] = []
            self.cache: dict[str, object] = {}

        def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.epochs.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            self.epochs[-1] += [str(p) for p in batch.image_path]

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            if args.frozen:
                for group in optimizer.param_groups:
                    for parameter in group["params"]:
                        parameter.grad = None

        def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            features = getattr(pl_module, "training_features", None)
            if features is not None:
                cache = features.cache
                self.cache = {
                    "computed": features.computed_images, "served": features.served_images,
                    "entries": len(cache) if cache is not None else 0, "reason": features.reason,
                    "directory": str(cache.directory) if cache is not None and cache.directory else None,
                    "files": len(list(cache.directory.glob("*.pt"))) if cache is not None and cache.directory else 0,
                }

    seed_everything(0)
    settings = {**MODELS[args.model], **json.loads(args.model_args)}
    model = getattr(anomalib_simplenet, args.model)(**settings)
    if args.frozen:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
    datamodule = MVTecAD(root=args.root, category=args.category, train_batch_size=args.batch,
                         eval_batch_size=args.batch, num_workers=0, val_split_mode="from_test",
                         val_split_ratio=0.5, seed=0)
    record = Record()
    callbacks = [record] + ([DBSCANPostProcessor(mode="report", min_samples=3, plots=False)] if args.dbscan else [])
    strategy = "ddp" if args.devices > 1 else "auto"
    engine = Engine(max_epochs=args.epochs, default_root_dir=args.out / "run", accelerator=args.accelerator,
                    devices=args.devices, strategy=strategy, logger=False, enable_progress_bar=False,
                    callbacks=callbacks)
    engine.fit(model, datamodule=datamodule)
    fitted_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics = engine.test(model, datamodule=datamodule)[0]
    rank = engine.trainer.global_rank
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps({"epochs": record.epochs, "cache": record.cache}))
    if rank == 0:
        dbscan = next((c for c in engine.trainer.callbacks if isinstance(c, DBSCANPostProcessor)), None)
        torch.save({
            "state": {k: v for k, v in fitted_state.items() if not k.endswith("num_batches_tracked")},
            "metrics": {k: float(v) for k, v in metrics.items()},
            "checkpoints": sorted(str(p) for p in (args.out / "run").rglob("*.ckpt")),
            "dbscan": {"metrics": dbscan.metrics, "results": dbscan.results} if dbscan is not None else None,
            "world_size": engine.trainer.world_size,
        }, args.out / "fitted.pt")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
