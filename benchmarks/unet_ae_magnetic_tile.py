"""UNetAE on the real magnetic_tile set for several latent sizes; prints a Markdown table.

    python benchmarks/unet_ae_magnetic_tile.py --train-images 200 --image-size 128 --epochs 10 --latents 64 128 256

The default UNetAE (only ``image_size`` and ``latent_dim`` changed) is trained on evenly spaced train/good
images. The test folder is subsampled (``--test-good`` good images and ``--test-defects`` per defect type, evenly
spaced) to keep CPU runs short; half of it is the validation split (``val_split_mode=from_test``, for the
post-processor and ``val_loss``), disjoint from the test half on which every number is computed.

Columns: image AUROC of the default score (map maximum) and of the map + embedding-distance score
(``use_embedding_score``: the same weights with a Gaussian fitted on the training embeddings), pixel AUROC,
mean anomaly-map value inside / outside the defect masks of defect images, and the fit time. Each run folder
gets ``loss_curves.png`` (train and val loss per epoch) and reconstruction grids.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from sklearn.metrics import roc_auc_score

from anomalib_simplenet import UNetAE
from anomalib_simplenet.models.unet_ae import ReconstructionSaver
from anomalib_simplenet.data.subset import make_subset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class LossHistory(Callback):
    """Record ``train_loss`` and ``val_loss`` per epoch."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        if "val_loss" in trainer.callback_metrics:
            self.val.append(float(trainer.callback_metrics["val_loss"]))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        self.train.append(float(trainer.callback_metrics["train_loss"]))

    def plot(self, path: Path, title: str) -> None:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        axis.plot(range(1, len(self.train) + 1), self.train, "o-", label="train_loss")
        axis.plot(range(1, len(self.val) + 1), self.val, "s-", label="val_loss (normal val images)")
        axis.set(xlabel="epoch", ylabel="L2 + (1 − SSIM)", title=title)
        axis.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


@torch.no_grad()
def evaluate(model: UNetAE, datamodule: MVTecAD) -> dict[str, float]:
    """Image AUROC of the model's score, pixel AUROC, and mean map inside / outside the masks (test split)."""
    model.eval()
    scores, labels, maps, masks = [], [], [], []
    for batch in datamodule.test_dataloader():
        images, gt_masks = model.pre_processor.transform(batch.image, batch.gt_mask)
        output = model.model(images)
        scores.append(output.pred_score)
        labels.append(batch.gt_label)
        maps.append(output.anomaly_map[:, 0])
        masks.append(gt_masks > 0.5)
    scores, labels, maps, masks = (torch.cat(x) for x in (scores, labels, maps, masks))
    defect = labels == 1
    return {
        "image_auroc": roc_auc_score(labels.numpy(), scores.numpy()),
        "pixel_auroc": roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()),
        "inside": maps[defect][masks[defect]].mean().item(),
        "outside": maps[defect][~masks[defect]].mean().item(),
    }


def run(latent_dim: int, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Train one UNetAE, test it, and return the table row."""
    torch.manual_seed(0)
    datamodule = MVTecAD(root=root, category="magnetic_tile", train_batch_size=16, eval_batch_size=16,
                         num_workers=2, val_split_mode="from_test", val_split_ratio=0.5, seed=0)
    model = UNetAE(image_size=args.image_size, latent_dim=latent_dim)
    history = LossHistory()
    run_dir = args.output / f"latent{latent_dim}"
    saver = ReconstructionSaver(every_n_epochs=max(1, args.epochs // 2))
    engine = Engine(max_epochs=args.epochs, default_root_dir=run_dir, logger=False, enable_progress_bar=False,
                    accelerator="cpu", callbacks=[history, saver])
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    engine.test(model, datamodule=datamodule)
    history.plot(run_dir / "loss_curves.png", f"UNetAE latent {latent_dim}")
    row = evaluate(model, datamodule)

    # The same weights scored with the embedding distance (Gaussian fitted on the training images only).
    combined = UNetAE(image_size=args.image_size, latent_dim=latent_dim, use_embedding_score=True)
    combined.load_state_dict(model.state_dict(), strict=False)
    combined.fit_embedding_distribution(datamodule.train_dataloader())
    row["image_auroc_embedding"] = evaluate(combined, datamodule)["image_auroc"]
    return {**row, "fit_seconds": fit_seconds, "epochs": engine.trainer.current_epoch}


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

    root = make_subset(args.data / "magnetic_tile", args.output / "data" / "magnetic_tile", args.train_images,
                  args.test_good, args.test_defects)
    rows = {latent: run(latent, root, args) for latent in args.latents}
    print(f"\nUNetAE on magnetic_tile: {args.image_size}px, {args.train_images} train images, up to {args.epochs} "
          f"epochs, test split of {args.test_good} good + {args.test_defects}/defect type (half validation), "
          f"{torch.get_num_threads()} CPU threads")
    print("| latent | image AUROC | image AUROC (+emb) | pixel AUROC | map in mask | map outside | in/out | fit |")
    print("|---|---|---|---|---|---|---|---|")
    for latent, r in rows.items():
        print(f"| {latent} | {r['image_auroc']:.3f} | {r['image_auroc_embedding']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['inside']:.4f} | {r['outside']:.4f} | {r['inside'] / r['outside']:.2f} | "
              f"{r['fit_seconds']:.0f}s / {r['epochs']} ep |")


if __name__ == "__main__":
    main()
