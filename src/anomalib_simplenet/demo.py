"""Demo: train and test SimpleNet on a generated dataset, with no download.

``python -m anomalib_simplenet.demo`` writes a small synthetic MVTec-layout dataset, trains SimpleNet with
the anomalib Engine, tests it, prints the metrics table and where the result images are. By default the
backbone is EfficientNet-Lite0 with the ImageNet weights of its installed package (no network needed);
``--weights random`` gives a randomly initialised backbone, ``--weights FILE`` a local state dict, and
``--backbone wide_resnet50_2`` (etc.) takes ImageNet weights from the hub, failing with a clear error offline.
The "weights:" line says where the weights came from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from anomalib_simplenet.lab.weights import add_weights_argument

logger = logging.getLogger(__name__)
DEMO_EPOCHS = 10


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train and test SimpleNet on generated data (no download).")
    parser.add_argument("--output", type=Path, default=Path("results/demo"), help="run folder")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    add_weights_argument(parser)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _build_model(args: argparse.Namespace):  # noqa: ANN202
    """SimpleNet with the weights asked for, and the sentence naming their source."""
    from anomalib_simplenet import SimpleNet
    from anomalib_simplenet.components.backbone import weights_source
    from anomalib_simplenet.lab.weights import weights_kwargs

    model = SimpleNet(backbone=args.backbone, image_size=args.image_size, **weights_kwargs("SimpleNet", args.weights))
    return model, weights_source(model.model.feature_extractor)


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Run the demo and return the test metrics."""
    args = _parse_args(argv)
    from anomalib.engine import Engine

    from anomalib_simplenet.lab.data import make_synthetic_mvtec
    from anomalib_simplenet.lab.data import datamodule as make_datamodule
    from anomalib_simplenet.lab.report import markdown_table

    torch.manual_seed(args.seed)
    data_root = args.output / "data"
    make_synthetic_mvtec(data_root, image_size=args.image_size, n_train=32, n_test_good=12, n_test_defect=12)
    # Validation images are split off the test folder (disjoint from the test images): the post-processor
    # fits its threshold and normalisation on them, never on the images we report metrics for.
    datamodule = make_datamodule(data_root, "synthetic", batch_size=8, seed=args.seed)
    model, weights = _build_model(args)
    print(f"[demo] Backbone: {args.backbone}, weights: {weights}")
    engine = Engine(max_epochs=args.epochs, default_root_dir=args.output, accelerator="cpu", logger=False)
    engine.fit(model, datamodule=datamodule)
    metrics = engine.test(model, datamodule=datamodule)[0]
    run_dir = Path(engine.trainer.default_root_dir)
    print("\n[demo] SimpleNet on the synthetic dataset")
    print(f"[demo] backbone {args.backbone}, weights: {weights}, input {args.image_size}px, {args.epochs} epochs")
    print(markdown_table(["metric", "value"], [[name, float(value)] for name, value in metrics.items()]), end="")
    print(f"[demo] Result images: {run_dir / 'images'}")
    # anomalib's checkpoint callback keeps no "last" file: the checkpoint it wrote is the "best" path.
    print(f"[demo] Checkpoint: {engine.trainer.checkpoint_callback.best_model_path}")
    return metrics


def main() -> None:
    """Console entry point."""
    run()


if __name__ == "__main__":
    main()
