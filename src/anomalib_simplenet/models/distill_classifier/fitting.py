"""Fit the Gaussians on student features of the normal training images; choose the held-out threshold images."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from anomalib_simplenet.components.distributed import gather_by_key

from .networks import Student, StudentFeatures
from .tasks import category_labels

if TYPE_CHECKING:
    from .torch_model import DistillClassifierModel


def fit_gaussians(
    model: DistillClassifierModel,
    batches: Iterable,
    pre_process: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
    holdout_fraction: float,
    threshold_percentile: float,
) -> None:
    """Fit ``model``'s Gaussians and percentile threshold on the normal images of ``batches`` (anomalib batches).

    Under DDP each rank embeds its shard and the features of all ranks are gathered (duplicates dropped),
    so every rank fits the same Gaussians and threshold as one process on the whole training set.
    """
    features, paths = collect_features(model.student, batches, pre_process, device)
    # Under DDP: every rank's images, once each (the sampler pads shards with repeats), in path order.
    paths, gathered = gather_by_key(paths, *features)
    features = type(features)(*gathered)
    categories = model.categories
    if len(categories) > 1:
        category_index = category_labels(paths, categories)
    else:
        category_index = torch.zeros(len(paths), dtype=torch.long)
    fit_mask = holdout_mask(paths, category_index, holdout_fraction)
    model.fit(features, category_index, fit_mask, threshold_percentile)


@torch.no_grad()
def collect_features(
    student: Student,
    batches: Iterable,
    pre_process: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
) -> tuple[StudentFeatures, list[str]]:
    """Run the student (eval mode) over anomalib batches; return CPU features of all images and their paths.

    Batches come straight from a dataloader, so the pre-processor's transform is applied here, exactly as
    anomalib's ``PreProcessor`` callback does before training and validation steps.
    """
    was_training = student.training
    student.eval()
    parts: list[StudentFeatures] = []
    paths: list[str] = []
    try:
        for batch in batches:
            images = batch.image.to(device)
            if pre_process is not None:
                images = pre_process(images)
            parts.append(StudentFeatures(*(f.cpu() for f in student.features(images))))
            paths.extend(str(p) for p in batch.image_path)
    finally:
        student.train(was_training)
    if not parts:
        msg = "the training dataloader is empty: no normal images to fit the Gaussians on"
        raise ValueError(msg)
    return StudentFeatures(*(torch.cat(f) for f in zip(*parts, strict=True))), paths


def holdout_mask(paths: Sequence[str], category_index: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """``(N,)`` True for images that fit the Gaussians, False for the held-out ones.

    Per category, ``round(fraction · n)`` images (at least one when ``fraction > 0``, and always leaving two to
    fit on) are drawn by a seeded permutation of the sorted paths: the same images whatever the loader order.
    """
    if not 0 <= fraction < 1:
        msg = f"holdout_fraction must be in [0, 1), got {fraction}"
        raise ValueError(msg)
    fit = torch.ones(len(paths), dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    for category in category_index.unique().tolist():
        members = sorted(torch.nonzero(category_index == category).flatten().tolist(), key=lambda i: paths[i])
        count = max(1, round(fraction * len(members))) if fraction > 0 else 0
        count = min(count, len(members) - 2)
        order = torch.randperm(len(members), generator=generator).tolist()
        for position in order[: max(count, 0)]:
            fit[members[position]] = False
    return fit
