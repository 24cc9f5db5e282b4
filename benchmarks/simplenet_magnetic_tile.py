"""SimpleNet on the real magnetic_tile set: train on a subset of train/good, test on the held-out test split.

    python benchmarks/simplenet_magnetic_tile.py --train-images 200 --image-size 256 --epochs 8

Defaults: EfficientNet-Lite0 with its packaged ImageNet weights (``--weights random`` or a state-dict file
otherwise) and SimpleNet's defaults for it. Validation images are half of the test folder
(``val_split_mode=from_test``) and are disjoint from the test images the metrics are computed on. Prints a
Markdown table and the backbone weights used. For SimpleNet against anomalib's models: ``benchmarks/accuracy.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.backbone import weights_source
from anomalib_simplenet.components.weights_option import add_weights_argument, weights_kwargs
from anomalib_simplenet.data.subset import make_subset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=Path("results/bench_simplenet_magnetic_tile"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    add_weights_argument(parser)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    root = make_subset(args.data / "magnetic_tile", args.output / "data" / "magnetic_tile", args.train_images)
    datamodule = MVTecAD(root=root, category="magnetic_tile", train_batch_size=8, eval_batch_size=16,
                         num_workers=2, val_split_mode="from_test", val_split_ratio=0.5, seed=0)
    model = SimpleNet(backbone=args.backbone, image_size=args.image_size, **weights_kwargs("SimpleNet", args.weights))
    weights = weights_source(model.model.feature_extractor)
    engine = Engine(max_epochs=args.epochs, default_root_dir=args.output, logger=False, enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = engine.test(model, datamodule=datamodule)[0]
    print(f"\nSimpleNet on magnetic_tile: backbone {args.backbone}, weights: {weights}, {args.image_size}px, "
          f"{args.train_images} train images, {args.epochs} epochs, fit {fit_seconds:.0f}s on this machine")
    print("| metric | value |\n|---|---|")
    for name, value in metrics.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
