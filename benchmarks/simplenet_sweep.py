"""SimpleNet's relative noise σ, discriminator width and epoch count, chosen on validation images of several categories.

Trains adapter and discriminator from frozen features cached once per category, records validation loss and AUROC
per epoch next to untrained references on the same features; ``--feature-scale`` instead reports SimpleNet's feature
scale and noise σ per backbone. Usage and method: ``docs/measuring.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import operator
import time
from pathlib import Path
from typing import Any

import torch
from anomalib.data.utils import read_image

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.backbone import PACKAGED_WEIGHTS, weights_source
from anomalib_simplenet.components.grid_geometry import resample
from anomalib_simplenet.components.mahalanobis import ESTIMATORS, MahalanobisDistance
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.report import fmt, markdown_table
from anomalib_simplenet.lab.scores import auroc
from anomalib_simplenet.lab.weights import add_weights_argument, weights_kwargs
from anomalib_simplenet.models.simplenet.feature_noise import DEFAULT_RELATIVE_NOISE_STD
from anomalib_simplenet.models.simplenet.feature_scale import FeatureMoments
from anomalib_simplenet.models.simplenet.location_gaussian import LocationGaussianEnsemble
from anomalib_simplenet.models.simplenet.training_step import discriminator_step

REPO = Path(__file__).resolve().parents[1]
VAL_NOISE_SEED = 1  # the same noise for every setting's validation loss
OFFICIAL_NOISE_STD = 0.015
SCALE_BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["magnetic_tile", "elpv_mono", "elpv_poly"])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "simplenet_sweep")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    add_weights_argument(parser)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--relative-noise", nargs="*", type=float, default=[0.2, 0.4, 0.8])
    parser.add_argument("--hidden", nargs="+", type=int, default=[None],
                        help="discriminator widths (default: SimpleNet's)")
    parser.add_argument("--location-gaussian", nargs="+", type=int, default=[0, 1], choices=[0, 1],
                        help="score with the discriminator alone (0, official) and/or with the per-location Gaussian")
    parser.add_argument("--gaussian-estimator", choices=ESTIMATORS, default="ridge",
                        help="covariance of the location Gaussian and of the per-location reference")
    parser.add_argument("--gaussian-channels", type=int, default=None,
                        help="the location Gaussian on a seeded random subset of N feature channels")
    parser.add_argument("--finer-grid", action="store_true",
                        help="train and score on features resampled to a grid twice as fine (on the cells' positions)")
    parser.add_argument("--train-images", type=int, default=None, help="N evenly spaced training images per category")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank", type=int, default=40000,
                        help="training locations of the nearest-neighbour reference (0: no references)")
    parser.add_argument("--feature-scale", nargs="*", metavar="BACKBONE",
                        help=f"only the feature scale per backbone (none named: {', '.join(SCALE_BACKBONES)})")
    parser.add_argument("--images", type=int, default=32, help="--feature-scale: first N training images")
    return parser.parse_args(argv)


def finer_grid(features: torch.Tensor, geometry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D, h, w)`` on cells at ``geometry`` ``(2, 2)`` resampled to ``(N, D, 2h, 2w)`` on a grid of
    half the stride over the same span; returns them and the finer grid's geometry."""
    fine = geometry.clone()
    fine[0] -= geometry[1] / 4
    fine[1] /= 2
    size = (2 * features.shape[-2], 2 * features.shape[-1])
    parts = [resample(part.float(), size, geometry, fine).to(features.dtype) for part in features.split(16)]
    return torch.cat(parts), fine


def build(args: argparse.Namespace, **settings: Any) -> SimpleNet:
    """SimpleNet with the sweep's backbone, weights and input size, and ``settings``."""
    torch.manual_seed(args.seed)
    settings = {key: value for key, value in settings.items() if value is not None}
    return SimpleNet(backbone=args.backbone, image_size=args.image_size, **weights_kwargs("SimpleNet", args.weights),
                     **settings)


@torch.no_grad()
def features_of(model: SimpleNet, loader: Any) -> dict[str, torch.Tensor]:
    """Patch features ``(N, D, h, w)`` (float16 to halve the memory), image labels ``(N,)``, masks ``(N, H, W)``."""
    network = model.model.eval()
    features, labels, masks = [], [], []
    for batch in loader:
        features.append(network.extract_features(model.pre_processor(batch.image)).half())
        labels.append(batch.gt_label)
        if batch.gt_mask is not None:
            masks.append(batch.gt_mask.bool())
    out = {"features": torch.cat(features), "labels": torch.cat(labels).long()}
    if masks:
        out["masks"] = torch.cat(masks)
    return out


@torch.no_grad()
def validate(model: SimpleNet, val: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, float]:
    """Validation loss on the normal images, image AUROC, and pixel AUROC where masks exist."""
    network = model.model.eval()
    scores, map_maxima, maps = [], [], []
    for start in range(0, len(val["features"]), 32):
        prediction = network.predict(val["features"][start : start + 32].float(), size)
        scores.append(prediction.pred_score)
        map_maxima.append(prediction.anomaly_map.flatten(1).amax(dim=1))
        maps.append(prediction.anomaly_map[:, 0, ::2, ::2])  # every 2nd pixel: the AUROC barely moves, 4× faster
    normal = val["features"][val["labels"] == 0].float()
    generator = torch.Generator().manual_seed(VAL_NOISE_SEED)
    row = {"val_loss": float(model.loss(*network.discriminate(normal, generator=generator))),
           "image_auroc": auroc(val["labels"].numpy(), torch.cat(scores).numpy()),
           "image_auroc_map": auroc(val["labels"].numpy(), torch.cat(map_maxima).numpy())}
    if "masks" in val and val["masks"].any():
        truth = val["masks"][:, ::2, ::2].flatten().numpy()
        row["pixel_auroc"] = auroc(truth, torch.cat(maps).flatten().numpy())
    network.train()
    return row


@torch.no_grad()
def references(train: torch.Tensor, val: dict[str, torch.Tensor], bank_size: int, estimator: str) -> dict[str, float]:
    """Validation image AUROC (maximum over locations) of three untrained scores on the same features."""
    labels = val["labels"].numpy()
    train_maps = train.float().flatten(2).transpose(1, 2)  # (N, h·w, D)
    val_maps = val["features"].float().flatten(2).transpose(1, 2)
    per_location = MahalanobisDistance(train_maps.shape[2], groups=train_maps.shape[1], estimator=estimator)
    per_location.fit(train_maps)
    locations = train_maps.reshape(-1, train_maps.shape[2])
    bank = locations[torch.randperm(len(locations), generator=torch.Generator().manual_seed(0))[:bank_size]]
    shared = MahalanobisDistance(locations.shape[1], estimator=estimator).fit(bank)
    queries = val_maps.reshape(-1, val_maps.shape[2])
    nearest = torch.cat([torch.cdist(chunk, bank).amin(dim=1) for chunk in queries.split(4096)])
    scores = {
        "Gaussian per location (Padim's model)": per_location(val_maps),
        "one Gaussian for all locations": shared(queries).reshape(len(val_maps), -1),
        f"nearest of {len(bank)} training locations": nearest.reshape(len(val_maps), -1),
    }
    return {name: auroc(labels, score.amax(dim=1).numpy()) for name, score in scores.items()}


def train_curve(model: SimpleNet, train: torch.Tensor, val: dict[str, torch.Tensor], args: argparse.Namespace,
                scale: torch.Tensor) -> list[dict[str, float]]:
    """Train adapter and discriminator from cached features with SimpleNet's own step; one validation row per
    epoch."""
    network = model.model.train()
    if network.noise_generator.relative:
        network.noise_generator.set_feature_scale(scale)
    optimizers = model.configure_optimizers()
    size = (args.image_size, args.image_size)
    rows, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for indices in torch.randperm(len(train)).split(args.batch):
            discriminator_step(network, model.loss, train[indices].float(), optimizers)
        rows.append({"epoch": epoch, "train_s": round(time.perf_counter() - start, 1), **validate(model, val, size)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(runs: list[dict[str, Any]], epochs: int, reference: dict[str, dict[str, float]]) -> str:
    """Per category and setting, and averaged over categories: image AUROC (maximum over cells, and in brackets
    over the smoothed map) / pixel AUROC / val loss per epoch."""

    def cell(row: dict[str, float]) -> str:
        return (f"{fmt(row['image_auroc'], '.3f')} ({fmt(row.get('image_auroc_map'), '.3f')}) / "
                f"{fmt(row.get('pixel_auroc'), '.3f')} / {row['val_loss']:.3f}")

    setting = operator.itemgetter("relative_noise_std", "hidden", "location_gaussian")
    rows = [[run["category"], *map(str, setting(run)), *(cell(row) for row in run["rows"])] for run in runs]
    for key in sorted({setting(run) for run in runs}):
        chosen = [run for run in runs if setting(run) == key]
        means = [[sum(run["rows"][e].get(name, math.nan) for run in chosen) / len(chosen) for e in range(epochs)]
                 for name in ("image_auroc", "image_auroc_map")]
        rows.append([f"mean image AUROC ({len(chosen)} categories)", *map(str, key),
                     *(f"{fmt(cells, '.3f')} ({fmt(smoothed, '.3f')})" for cells, smoothed in zip(*means))])
    header = ["category", "σ (relative)", "hidden", "location Gaussian", *map(str, range(1, epochs + 1))]
    options = {key: runs[0][key] for key in ("gaussian_channels", "gaussian_estimator", "finer_grid")
               if runs and runs[0].get(key)}
    title = ("image AUROC (maximum over cells; over the smoothed map) / pixel AUROC / validation loss on validation "
             f"images (raw scores), per epoch{f', {options}' if options else ''}")
    lines = [title, "", markdown_table(header, rows)]
    if reference:
        names = list(next(iter(reference.values())))
        lines += ["Untrained scores on the same features (validation image AUROC)", "",
                  markdown_table(["category", *names], [[c, *(fmt(row[n], ".3f") for n in names)]
                                                       for c, row in reference.items()])]
    return "\n".join(lines)


@torch.no_grad()
def feature_scale_table(args: argparse.Namespace, category: str) -> str:
    """Per backbone: SimpleNet's default layers and feature size, the scale ``sqrt(mean_c Var_c)`` of the features of
    the first ``--images`` training images, the default σ and the official absolute σ against that scale. Backbones
    without packaged weights run with random weights, labelled as such: their scale shows plumbing only."""
    files = sorted((args.data_root / category / "train" / "good").glob("*"))[: args.images]
    print(f"{category}: first {len(files)} training images, {args.image_size} px")
    rows = []
    for backbone in args.feature_scale or SCALE_BACKBONES:
        torch.manual_seed(0)
        model = SimpleNet(backbone=backbone, pre_trained=backbone in PACKAGED_WEIGHTS, image_size=args.image_size)
        network, moments = model.model.eval(), FeatureMoments()
        for start in range(0, len(files), 8):  # images differ in size: each resized, then batched
            batch = [read_image(file, as_tensor=True)[None] for file in files[start : start + 8]]
            moments.update(network.extract_features(torch.cat([model.pre_processor.transform(b) for b in batch])))
        scale, relative = float(moments.scale()), network.noise_generator.relative_noise_std
        layers = ", ".join(network.feature_extractor.feature_info.module_name())
        rows.append([backbone, weights_source(network.feature_extractor), layers, network.aggregator.out_channels,
                     f"{scale:.4g}", f"{relative * scale:.4g}", f"1/{scale / OFFICIAL_NOISE_STD:.0f}"])
        print(f"{backbone}: feature scale {scale:.4g}", flush=True)
    return markdown_table(["backbone", "weights", "layers", "D", "feature scale",
                           f"default σ ({DEFAULT_RELATIVE_NOISE_STD} × scale)", "0.015 / scale"], rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.feature_scale is not None:
        for category in args.categories:
            print(feature_scale_table(args, category))
        return []
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    runs: list[dict[str, Any]] = []
    reference: dict[str, dict[str, float]] = {}
    for category in args.categories:
        root = args.data_root
        if args.train_images is not None:
            root = subset(root, category, args.output / "data", args.train_images)
        data = datamodule(root, category, (args.image_size, args.image_size), args.batch, args.seed)
        data.setup()
        extractor = build(args)
        train = features_of(extractor, data.train_dataloader())["features"]
        val = features_of(extractor, data.val_dataloader())
        if args.finer_grid:
            train, fine = finer_grid(train, extractor.model.grid_geometry[0])
            val["features"], _ = finer_grid(val["features"], extractor.model.grid_geometry[0])
        scale = FeatureMoments.of(train).scale()
        print(f"{category}: {len(train)} training, {len(val['labels'])} validation images, feature scale "
              f"{float(scale):.4g}", flush=True)
        if args.bank > 0:
            reference[category] = references(train, val, args.bank, args.gaussian_estimator)
            print(json.dumps({category: reference[category]}), flush=True)
        for hidden, relative, gaussian in itertools.product(args.hidden, args.relative_noise, args.location_gaussian):
            model = build(args, relative_noise_std=relative, discriminator_hidden=hidden,
                          location_gaussian=bool(gaussian))
            if gaussian:
                model.model.location_gaussian = LocationGaussianEnsemble(
                    train.shape[1], args.gaussian_estimator, channels=args.gaussian_channels
                )
            if args.finer_grid:
                model.model.grid_geometry[0] = fine
            start = time.perf_counter()
            if gaussian:
                model.model.location_gaussian.fit(train.float().split(64))
            hidden_width = model.model.discriminator[0].out_channels
            print(f"{category}: relative σ {relative}, discriminator width {hidden_width}, location Gaussian "
                  f"{bool(gaussian)} (fitted in {time.perf_counter() - start:.1f} s)", flush=True)
            rows = train_curve(model, train, val, args, scale)
            runs.append({"category": category, "relative_noise_std": relative, "hidden": hidden_width,
                         "location_gaussian": bool(gaussian), "gaussian_channels": args.gaussian_channels,
                         "gaussian_estimator": args.gaussian_estimator,
                         "finer_grid": args.finer_grid, "rows": rows})
            (args.output / "sweep.json").write_text(json.dumps({"runs": runs, "references": reference}, indent=1))
    table = markdown(runs, args.epochs, reference)
    (args.output / "sweep.md").write_text(table + "\n")
    print(table)
    return runs


if __name__ == "__main__":
    main()
