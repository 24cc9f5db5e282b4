"""Accuracy of SimpleNet against anomalib's Padim, Patchcore, Glass and Supersimplenet on one category.

    nice -n 10 .venv/bin/python benchmarks/accuracy.py --category magnetic_tile            # all training images
    .venv/bin/python benchmarks/accuracy.py --category magnetic_tile --train-images 100 --models simplenet padim

Every model gets the same backbone weights (default: the packaged ImageNet EfficientNet-Lite0; ``--weights
random`` or a state-dict file), the same layers (the backbone's stride-8 and stride-16 stages, SimpleNet's
default), the same input size and pre-processing, the same data and seed. SimpleNet loads the weights itself
(its "weights:" line says from where); anomalib's models are built inside a patched ``timm.create_model`` that
loads them (checked on their first convolution). Validation images are half of the test folder
(``val_split_mode="from_test"``), disjoint from the test images the metrics are computed on; nothing is
selected on test images. Peers keep anomalib's defaults except where noted in the table (runtime).

Prints and writes (``accuracy.md``, ``accuracy.json`` in ``--output``): image/pixel AUROC, image/pixel F1
(anomalib's defaults: thresholds fitted on the validation images), AUPRO with ``--aupro``, fit seconds and test
images/s (``engine.test`` wall time over the test images, data loading and metrics included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from anomalib_simplenet.components.weights_option import add_weights_argument, weights_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_tools import injected_timm_weights

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MODELS = ("simplenet", "padim", "patchcore", "glass", "supersimplenet")
METRICS = ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score", "pixel_AUPRO")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the category")
    parser.add_argument("--output", type=Path, default=None, help="default: results/accuracy_<category>")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    add_weights_argument(parser)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="SimpleNet epochs (default: the benchmark default)")
    parser.add_argument("--peer-epochs", type=int, default=None,
                        help="Glass and Supersimplenet epochs (default: SimpleNet's; their papers use 640 / 300)")
    parser.add_argument("--coreset-ratio", type=float, default=0.01,
                        help="Patchcore coreset_sampling_ratio (anomalib default 0.1: hours on 2 CPU cores)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--aupro", action="store_true", help="also compute anomalib's AUPRO (slow on CPU)")
    parser.add_argument("--batch", type=int, default=8, help="training batch size (evaluation: 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--no-location-gaussian", action="store_true",
                        help="SimpleNet scores with its discriminator alone (the official scoring)")
    parser.add_argument("--merge", nargs="*", type=Path, default=None,
                        help="only write the table of the accuracy.json files in these output folders (runs split "
                             "over processes); the first header is used, the others are printed")
    return parser.parse_args(argv)


# SimpleNet epochs: with the default σ the validation loss is below 0.05 (and flattening) by epoch 10 on
# magnetic_tile, elpv_mono and elpv_poly with efficientnet_lite0 (benchmarks/simplenet_sweep.py, README).
DEFAULT_SIMPLENET_EPOCHS = 10


def backbone_state(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float, str]:
    """Weights every model gets (timm names), the BatchNorm epsilon they need, and their source sentence."""
    from anomalib_simplenet.components.backbone import create_network, weights_source

    torch.manual_seed(args.seed)
    network = create_network(args.backbone, args.weights.pre_trained, args.weights.path)
    eps = next(m.eps for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return network.state_dict(), eps, weights_source(network)


def evaluator(aupro: bool) -> Any:
    """anomalib's default test metrics, plus AUPRO when asked."""
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

    metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
    ]
    if aupro:
        metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    return Evaluator(test_metrics=metrics)


def pre_processor(size: int) -> Any:
    """The same input for every model: SimpleNet's resize (antialiased) and ImageNet normalisation."""
    from anomalib_simplenet import SimpleNet

    return SimpleNet.configure_pre_processor((size, size))


def build(name: str, args: argparse.Namespace, state: dict[str, torch.Tensor], eps: float, layers: list[str]) -> Any:
    """Model ``name`` with the shared weights, layers, input size and metrics; notes on non-default settings."""
    from anomalib.models import Glass, Padim, Patchcore, Supersimplenet

    from anomalib_simplenet import SimpleNet
    from anomalib_simplenet.components.backbone import layer_channels

    common = {"pre_processor": pre_processor(args.image_size), "evaluator": evaluator(args.aupro), "visualizer": False}
    if name == "simplenet":
        weights = weights_kwargs("SimpleNet", args.weights)
        if args.weights.kind == "random":  # the seeded state every peer gets
            path = args.output / "random_backbone.pth"
            torch.save(state, path)
            weights["backbone_weights"] = str(path)
        if args.no_location_gaussian:
            model = SimpleNet(backbone=args.backbone, image_size=args.image_size, location_gaussian=False, **weights,
                              **common)
            return model, "discriminator alone (location_gaussian=False)"
        return SimpleNet(backbone=args.backbone, image_size=args.image_size, **weights, **common), "defaults"
    size = (args.image_size, args.image_size)
    with injected_timm_weights(state, bn_eps=eps) as created:
        if name == "padim":
            n_features = sum(layer_channels(args.backbone, layers))  # no default for this backbone: keep all
            model = Padim(backbone=args.backbone, layers=layers, n_features=n_features, **common)
            note = f"n_features {n_features} (all; anomalib has no default for this backbone)"
        elif name == "patchcore":
            model = Patchcore(backbone=args.backbone, layers=layers, coreset_sampling_ratio=args.coreset_ratio,
                              **common)
            note = f"coreset_sampling_ratio {args.coreset_ratio} (default 0.1: runtime)"
        elif name == "glass":
            model = Glass(backbone=args.backbone, layers=layers, input_shape=size, pre_trained=True, **common)
            note = f"{args.peer_epochs} epochs (paper 640: runtime); no DTD textures (Perlin noise only)"
        else:
            model = Supersimplenet(backbone=args.backbone, layers=layers, **common)
            note = f"{args.peer_epochs} epochs (paper 300: runtime)"
    if not created:
        msg = f"{name}: the shared backbone weights were not injected"
        raise RuntimeError(msg)
    return model, note


def fit_and_test(name: str, model: Any, data: Any, args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """Fit, then test; metrics, fit seconds and test images/s."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(args.seed, workers=True)
    history = _ValLoss()
    engine = Engine(max_epochs=epochs, default_root_dir=args.output / "runs" / name, accelerator="cpu", devices=1,
                    logger=False, enable_progress_bar=False, callbacks=[history])
    start = time.perf_counter()
    engine.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = engine.test(model, datamodule=data, verbose=False)[0]
    test_seconds = time.perf_counter() - start
    result = {key: float(metrics[key]) for key in METRICS if key in metrics}
    result.update(fit_s=fit_seconds, test_images_per_s=len(data.test_data) / test_seconds,
                  epochs=engine.trainer.current_epoch)
    if history.rows:
        result["per_epoch"] = history.rows
    return result


class _ValLoss(Callback):
    """Per epoch: val_loss and training p_normal / p_noised, where the model logs them (SimpleNet)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        keys = ("val_loss", "train_loss_epoch", "p_normal_epoch", "p_noised_epoch")
        row = {key: round(float(trainer.callback_metrics[key]), 4) for key in keys if key in trainer.callback_metrics}
        if "val_loss" in row:
            self.rows.append(row)


def markdown(results: dict[str, dict[str, Any]], header: str) -> str:
    columns = [key for key in METRICS if any(key in row for row in results.values())]
    lines = [header, "", "| model | " + " | ".join(columns) + " | fit s | test img/s | epochs | settings |",
             "|---" * (len(columns) + 5) + "|"]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} |")
            continue
        values = " | ".join(f"{row[key]:.3f}" if key in row else "–" for key in columns)
        lines.append(f"| {name} | {values} | {row['fit_s']:.0f} | {row['test_images_per_s']:.1f} | {row['epochs']} "
                     f"| {row['note']} |")
    return "\n".join(lines)


def merge(folders: list[Path], output: Path) -> dict[str, dict[str, Any]]:
    """One table from the results of several runs (e.g. SimpleNet and the peers in two processes)."""
    runs = [json.loads((folder / "accuracy.json").read_text()) for folder in folders]
    results: dict[str, dict[str, Any]] = {}
    for run in runs:
        results.update(run["results"])
    results = {name: results[name] for name in MODELS if name in results}
    headers = list(dict.fromkeys(run["header"] for run in runs))
    table = markdown(results, "\n".join(headers))
    (output / "accuracy.md").write_text(table + "\n")
    (output / "accuracy.json").write_text(json.dumps({"header": headers[0], "results": results}, indent=1))
    print(table)
    return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    from anomalib.data import MVTecAD

    from anomalib_simplenet.components.backbone import default_layers
    from anomalib_simplenet.data.subset import make_subset

    args = parse_args(argv)
    args.output = args.output or REPO / "results" / f"accuracy_{args.category}"
    args.output.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge(args.merge, args.output)
    args.epochs = args.epochs or DEFAULT_SIMPLENET_EPOCHS
    args.peer_epochs = args.peer_epochs or args.epochs
    root = args.data_root
    if args.train_images is not None:
        root = make_subset(root / args.category, args.output / "data" / args.category, args.train_images)
    state, eps, source = backbone_state(args)
    layers = default_layers(args.backbone)
    header = (f"{args.category}: backbone {args.backbone} {layers}, weights: {source}, {args.image_size} px, "
              f"train images: {args.train_images or 'all'}, seed {args.seed}, SimpleNet {args.epochs} epochs, "
              f"torch threads {torch.get_num_threads()}")
    print(header, flush=True)
    results: dict[str, dict[str, Any]] = {}
    previous = args.output / "accuracy.json"
    if previous.is_file():  # rows of models not run now come from the last run with the same settings
        earlier = json.loads(previous.read_text())
        if earlier.get("header", "").split(", SimpleNet")[0] == header.split(", SimpleNet")[0]:
            results = {k: v for k, v in earlier["results"].items() if k not in args.models}
    for name in args.models:
        data = MVTecAD(root=root, category=args.category, train_batch_size=args.batch, eval_batch_size=16,
                       num_workers=args.num_workers, val_split_mode="from_test", val_split_ratio=0.5, seed=args.seed)
        torch.manual_seed(args.seed)
        try:
            model, note = build(name, args, state, eps, layers)
            epochs = args.epochs if name == "simplenet" else args.peer_epochs
            results[name] = {**fit_and_test(name, model, data, args, epochs), "note": note}
        except Exception as error:  # noqa: BLE001 (one failing peer must not lose the others' figures)
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps({name: results[name]}), flush=True)
        (args.output / "accuracy.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    results = {name: results[name] for name in MODELS if name in results}
    table = markdown(results, header)
    (args.output / "accuracy.md").write_text(table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
