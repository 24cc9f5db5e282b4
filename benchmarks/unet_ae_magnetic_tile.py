"""UNetAE on the real magnetic_tile set for several latent sizes; prints a Markdown table.

    python benchmarks/unet_ae_magnetic_tile.py --train-images 200 --image-size 128 --epochs 10 --latents 64 128 256

The default UNetAE (only ``image_size`` and ``latent_dim`` changed) is trained on evenly spaced train/good
images. The test folder is subsampled (``--test-good`` good images and ``--test-defects`` per defect type) to keep
CPU runs short; half of it is the validation split (for the post-processor and ``val_loss``), disjoint from the
test half on which every number is computed.

Columns: image and pixel AUROC on raw scores next to anomalib's normalised ones (:mod:`anomalib_simplenet.lab`),
image AUROC of the map + embedding-distance score (``use_embedding_score``: the same weights with a Gaussian
fitted on the training embeddings), mean anomaly-map value inside / outside the defect masks of defect images, and
the fit time. Each run folder gets ``loss_curve.png`` and reconstruction grids.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anomalib_simplenet import UNetAE
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.figures import loss_figure
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.report import fmt, markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.scores import Predictions, metrics, predict
from anomalib_simplenet.models.unet_ae import ReconstructionSaver

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def inside_outside(predictions: Predictions) -> tuple[float, float]:
    """Mean raw anomaly-map value inside and outside the defect masks of the defect images."""
    defect = predictions.labels == 1
    maps, masks = predictions.maps[defect], predictions.masks[defect]
    return float(maps[masks].mean()), float(maps[~masks].mean())


def run(latent_dim: int, root: Path, args: argparse.Namespace) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=Path("results/bench_unet_ae_magnetic_tile"))
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-good", type=int, default=80)
    parser.add_argument("--test-defects", type=int, default=24, help="per defect type")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latents", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = subset(args.data, "magnetic_tile", args.output / "data", args.train_images, test_good=args.test_good,
                  test_defects=args.test_defects)
    rows = {latent: run(latent, root, args) for latent in args.latents}
    ok = [r for r in rows.values() if "error" not in r]
    print(f"\nUNetAE on magnetic_tile: {args.image_size}px, {args.train_images} train images, up to {args.epochs} "
          f"epochs, test split of {args.test_good} good + {args.test_defects}/defect type (half validation), "
          f"{torch.get_num_threads()} CPU threads\n")
    print(markdown_table(
        ["latent", *metric_header(ok), "image AUROC raw (+emb)", "map in mask", "map outside", "in/out", "fit"],
        [[latent, f"failed: {r['error']}"] if "error" in r else
         [latent, *metric_cells(r, ok), fmt(r["image_auroc_embedding"], ".3f"), fmt(r["inside"]),
          fmt(r["outside"]), fmt(r["inside"] / r["outside"], ".2f"), f"{r['fit_s']:.0f}s / {r['epochs']} ep"]
         for latent, r in rows.items()]))


if __name__ == "__main__":
    main()
