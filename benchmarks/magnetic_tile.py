"""Each plugin model trained briefly on a subset of the real magnetic_tile set; prints a Markdown table.

    python benchmarks/magnetic_tile.py distill_classifier --train-images 100 --test-good 50 --test-defects 10 --epochs 3
    python benchmarks/magnetic_tile.py unet_ae --train-images 80 --test-good 40 --test-defects 8 --latents 128 64
    nice -n 10 python benchmarks/magnetic_tile.py dbscan --train-images 80 --test-good 40 --test-defects 8 --epochs 3

The subset is evenly spaced images of each folder in sorted order (``--train-images`` of train/good,
``--test-good`` good and ``--test-defects`` per defect type of the test folder), linked under ``--output``; half
of its test images are the validation split (seeded, ``val_split_mode=from_test``: anomalib's post-processor and
``val_loss`` see it), disjoint from the test half on which every number is computed. Image/pixel AUROC are on raw
scores next to anomalib's normalised ones. Backbone and teacher weights are ``--weights`` (default ``packaged``:
ImageNet weights with no network; ``random`` only checks the plumbing).

- ``distill_classifier``: ``mode="scratch"`` vs ``mode="distill"`` (teacher ``--teacher``) on the same data, seed
  and settings, plus the raw image AUROC of the other image score (``map_max`` / ``embedding``) of the same model.
- ``unet_ae``: the default UNetAE per ``--latents`` bottleneck size, plus the image AUROC of the map + embedding
  distance score (``use_embedding_score``: the same weights, a Gaussian fitted on the training embeddings), the
  mean anomaly-map value inside / outside the defect masks of defect images; ``loss_curve.png`` and
  reconstruction grids in each run folder.
- ``dbscan``: ``DBSCANPostProcessor`` in ``report`` mode after each model (SimpleNet on efficientnet_lite0,
  DistillClassifier distilled from efficientnet_lite0, UNetAE) with the training images as the normal reference,
  so nothing is fitted on test images; the DBSCAN metrics next to the model's own image AUROC and F1, the CSV
  and plots in each run folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anomalib_simplenet import DistillClassifier, SimpleNet, UNetAE
from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.figures import loss_figure
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.report import fmt, markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.scores import Predictions, metrics, predict, raw_metrics
from anomalib_simplenet.lab.weights import (
    DEFAULT_BACKBONE,
    SIMPLENET_LITE0,
    add_weights_argument,
    weights_description,
    weights_kwargs,
)
from anomalib_simplenet.models.unet_ae import ReconstructionSaver

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DBSCAN_MODELS: dict[str, Callable[[int, str], Any]] = {
    "simplenet": lambda size, weights: SimpleNet(**SIMPLENET_LITE0, **weights_kwargs("SimpleNet", weights),
                                                 image_size=size, discriminator_hidden=256),
    "distill_classifier": lambda size, weights: DistillClassifier(
        mode="distill", teacher_backbone=DEFAULT_BACKBONE, **weights_kwargs("DistillClassifier", weights),
        image_size=size),
    "unet_ae": lambda size, weights: UNetAE(image_size=size),
}


def distill_row(mode: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fit and test one DistillClassifier mode: metrics (raw and normalised), training time, teacher weights."""
    torch.manual_seed(args.seed)
    data = datamodule(root, "magnetic_tile", batch_size=args.batch_size, seed=args.seed, num_workers=args.workers)
    model = DistillClassifier(mode=mode, teacher_backbone=args.teacher, image_size=args.image_size, visualizer=False,
                              **weights_kwargs("DistillClassifier", args.weights))
    result = fit(mode, model, data, args.output / mode, args.epochs, test=True, accelerator=args.accelerator)
    if result.status != "ok":
        return {"error": result.error}
    row = {**result.metrics, **raw_metrics(model, data.test_dataloader())}
    other = "map_max" if model.model.image_score != "map_max" else "embedding"
    model.model.image_score = other
    row["other_score"], row["other_auroc"] = other, raw_metrics(model, data.test_dataloader())["image_auroc"]
    model.model.image_score = model.hparams.image_score
    return {**row, "train_s": result.fit_s, "teacher": model.teacher_weights_source or "none"}


def distill_classifier(root: Path, args: argparse.Namespace) -> str:
    """Both modes side by side."""
    results = {mode: distill_row(mode, root, args) for mode in args.modes}
    ok = [m for m in results.values() if "error" not in m]
    teacher = next((m["teacher"] for m in ok if m["teacher"] != "none"), "none")
    return (f"teacher: {args.teacher}, weights: {teacher}, seed {args.seed}\n\n" + markdown_table(
        ["mode", *metric_header(ok), "image AUROC raw, other image score", "image F1", "training time (s)"],
        [[mode, f"failed: {m['error']}"] if "error" in m else
         [mode, *metric_cells(m, ok), f"{fmt(m['other_auroc'], '.3f')} ({m['other_score']})",
          fmt(m.get("image_F1Score"), ".3f"), fmt(m["train_s"], ".0f")] for mode, m in results.items()]))


def inside_outside(predictions: Predictions) -> tuple[float, float]:
    """Mean raw anomaly-map value inside and outside the defect masks of the defect images."""
    defect = predictions.labels == 1
    maps, masks = predictions.maps[defect], predictions.masks[defect]
    return float(maps[masks].mean()), float(maps[~masks].mean())


def unet_ae_row(latent_dim: int, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Train one UNetAE, score it raw and normalised, and return the table row."""
    torch.manual_seed(0)
    data = datamodule(root, "magnetic_tile", batch_size=16, num_workers=2)
    model = UNetAE(image_size=args.image_size, latent_dim=latent_dim)
    run_dir = args.output / f"latent{latent_dim}"
    saver = ReconstructionSaver(every_n_epochs=max(1, args.epochs // 2))
    result = fit(f"latent {latent_dim}", model, data, run_dir, args.epochs, test=True, callbacks=[saver])
    if result.status != "ok":
        return {"error": result.error}
    loss_figure({f"latent {latent_dim}": result.history}, f"UNetAE latent {latent_dim}").savefig(
        run_dir / "loss_curve.png", dpi=120)
    predictions = predict(model, data.test_dataloader())
    row = metrics(predictions)
    row["inside"], row["outside"] = inside_outside(predictions)
    # The same weights scored with the embedding distance (Gaussian fitted on the training images only).
    combined = UNetAE(image_size=args.image_size, latent_dim=latent_dim, use_embedding_score=True)
    combined.load_state_dict(model.state_dict(), strict=False)
    combined.fit_embedding_distribution(data.train_dataloader())
    row["image_auroc_embedding"] = metrics(predict(combined, data.test_dataloader()))["image_auroc"]
    return {**row, "fit_s": result.fit_s, "epochs": len(result.epochs)}


def unet_ae(root: Path, args: argparse.Namespace) -> str:
    """One row per latent size."""
    rows = {latent: unet_ae_row(latent, root, args) for latent in args.latents}
    ok = [r for r in rows.values() if "error" not in r]
    return f"{torch.get_num_threads()} CPU threads\n\n" + markdown_table(
        ["latent", *metric_header(ok), "image AUROC raw (+emb)", "map in mask", "map outside", "in/out", "fit"],
        [[latent, f"failed: {r['error']}"] if "error" in r else
         [latent, *metric_cells(r, ok), fmt(r["image_auroc_embedding"], ".3f"), fmt(r["inside"]),
          fmt(r["outside"]), fmt(r["inside"] / r["outside"], ".2f"), f"{r['fit_s']:.0f}s / {r['epochs']} ep"]
         for latent, r in rows.items()])


def dbscan_section(name: str, root: Path, args: argparse.Namespace) -> str:
    """Fit one model, test it with the callback; its Markdown section (DBSCAN metrics, the model's own metrics)."""
    torch.manual_seed(0)
    data = datamodule(root, "magnetic_tile", batch_size=8, eval_batch_size=16)
    callback = DBSCANPostProcessor(mode="report", min_samples=args.min_samples, pca_components=args.pca)
    model = DBSCAN_MODELS[name](args.image_size, args.weights)
    result = fit(name, model, data, args.output / name, args.epochs, test=True, callbacks=[callback])
    if result.status != "ok":
        return f"\n### {name}: failed: {result.error}\n"
    raw = raw_metrics(model, data.test_dataloader())
    rows = [[key, fmt(value) if not float(value).is_integer() else int(value)]
            for key, value in callback.metrics.items()]
    rows += [["model image AUROC raw", fmt(raw["image_auroc"])],
             ["model image AUROC normalised (Engine.test)", fmt(result.metrics["image_AUROC"])],
             ["model image_F1Score", fmt(result.metrics["image_F1Score"])]]
    return (f"\n### {name} ({result.fit_s:.0f}s, files in {result.run_dir})\n\nweights: {weights_description(model)}"
            f"\n\n{markdown_table(['metric', 'value'], rows)}")


def dbscan(root: Path, args: argparse.Namespace) -> str:
    """One section per model."""
    return (f"DBSCAN on the embeddings: min_samples={args.min_samples}, PCA {args.pca:g} of the variance, eps "
            "automatic (95% of normal images core points)\n" + "\n".join(dbscan_section(n, root, args)
                                                                        for n in args.models))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding magnetic_tile/")
    common.add_argument("--output", type=Path, help="default: results/bench_<model>_magnetic_tile")
    common.add_argument("--image-size", type=int, default=128)
    add_weights_argument(common)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # Per command: training images, good and per-defect-type test images, epochs (each script's former defaults).
    for name, train, good, defects, epochs in (("distill_classifier", 200, 100, 30, 5), ("unet_ae", 200, 80, 24, 10),
                                               ("dbscan", 120, 60, 12, 3)):
        command = commands.add_parser(name, parents=[common])
        command.add_argument("--train-images", type=int, default=train)
        command.add_argument("--test-good", type=int, default=good)
        command.add_argument("--test-defects", type=int, default=defects, help="per defect type")
        command.add_argument("--epochs", type=int, default=epochs)
    distill = commands.choices["distill_classifier"]
    distill.add_argument("--batch-size", type=int, default=16)
    distill.add_argument("--workers", type=int, default=0)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--accelerator", default="cpu")
    distill.add_argument("--teacher", default=DEFAULT_BACKBONE, help="timm backbone of the distill teacher")
    distill.add_argument("--modes", nargs="+", default=["scratch", "distill"])
    commands.choices["unet_ae"].add_argument("--latents", type=int, nargs="+", default=[64, 128, 256])
    commands.choices["unet_ae"].add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    commands.choices["dbscan"].add_argument("--models", nargs="+", choices=list(DBSCAN_MODELS),
                                            default=list(DBSCAN_MODELS))
    commands.choices["dbscan"].add_argument("--min-samples", type=int, default=5)
    commands.choices["dbscan"].add_argument("--pca", type=float, default=0.9, help="PCA explained-variance fraction")
    args = parser.parse_args(argv)
    args.output = args.output or Path(f"results/bench_{args.command}_magnetic_tile")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    root = subset(args.data, "magnetic_tile", args.output / "data", args.train_images, test_good=args.test_good,
                  test_defects=args.test_defects)
    table = {"distill_classifier": distill_classifier, "unet_ae": unet_ae, "dbscan": dbscan}[args.command](root, args)
    print(f"\n{args.command} on magnetic_tile: {args.train_images} train, {args.test_good} good + "
          f"{args.test_defects}/defect type test images (half → validation), {args.image_size}px, up to "
          f"{args.epochs} epochs, --weights {args.weights}\n\n{table}")


if __name__ == "__main__":
    main()
