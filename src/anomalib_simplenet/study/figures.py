"""The study's figures: ROC curves of the chosen models, loss curves of every setting, UNetAE reconstructions
(drawn by :mod:`anomalib_simplenet.lab.figures`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anomalib_simplenet.lab.data import images_by_label
from anomalib_simplenet.lab.figures import loss_figure, roc_figure
from anomalib_simplenet.models.unet_ae import save_reconstructions

if TYPE_CHECKING:
    from .run import Candidate


def write_all(
    folder: Path, chosen: Mapping[str, Mapping[str, Candidate]], candidates: list[Candidate], datamodules: Mapping
) -> dict[str, Path]:
    """Write every figure; return ``caption → path``."""
    files: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for category in datamodules:
        curves = {}
        for scope, best in chosen.items():
            for candidate in best.values():
                if category in candidate.roc:
                    fpr, tpr = candidate.roc[category]
                    suffix = " [all categories]" if scope != category else ""
                    label = f"{candidate.title}{suffix}"
                    curves[label] = (fpr, tpr, candidate.metrics[category]["image_auroc"])
        if curves:
            files[f"ROC {category}"] = roc_figure(curves, folder / f"roc_{category}.png", f"test ROC, {category}")
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for candidate in candidates:
        history = candidate.fit.history
        if history and any(row["val_loss"] == row["val_loss"] for row in history):
            groups.setdefault((candidate.scope, candidate.key, candidate.title), {})[candidate.setting.name] = history
    for (scope, key, title), histories in groups.items():
        path = folder / f"loss_{scope}_{key}.png"
        loss_figure(histories, title=f"{scope}: {title}").savefig(path, dpi=80)
        files[f"loss curves {scope} {key}"] = path
    for category, datamodule in datamodules.items():
        candidate = chosen.get(category, {}).get("unet_ae")
        if candidate is not None and candidate.fit.model is not None:
            model = candidate.fit.model
            transform = getattr(model.pre_processor, "transform", None)
            normal, defective = images_by_label(datamodule.test_dataloader(), 2, 2, transform)
            images = torch.stack(normal + defective)
            path = folder / f"reconstructions_{category}.png"
            files[f"UNetAE reconstructions {category} (rows: 2 normal, 2 defective; input | reconstruction | "
                  "error map)"] = save_reconstructions(model, images, path)
    return files
