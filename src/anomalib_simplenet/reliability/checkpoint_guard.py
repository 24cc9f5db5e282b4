"""Clear errors for checkpoints loaded into the wrong model, and for exporting a model that was never fitted.

Checkpoints stay plain data (strings, numbers, tensors), so anomalib's ``weights_only=True`` loading works.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

IDENTITY_KEY = "anomalib_simplenet_model"
_LISTED = 4


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another model class, or with arguments that change the weights' shapes."""


class NotFittedError(RuntimeError):
    """The model has no threshold/normalisation statistics (or fitted distributions) yet."""


def stamp_checkpoint(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Record the model class and constructor arguments in ``checkpoint`` (plain data: ``weights_only``-safe).

    The arguments are kept apart from Lightning's ``hyper_parameters``, which ``load_from_checkpoint(**kwargs)``
    overwrites with the caller's overrides before the model sees the checkpoint.
    """
    cls = type(module)
    hparams = {str(k): _plain(v) for k, v in dict(module.hparams).items()}
    checkpoint[IDENTITY_KEY] = {"class": cls.__name__, "module": cls.__module__, "hparams": hparams}


def _where(module: LightningModule) -> str:
    trainer = module._trainer  # noqa: SLF001 (``module.trainer`` raises when no trainer is attached)
    path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
    return f"checkpoint {path}" if path else "the checkpoint"


def _plain(value: Any) -> Any:  # noqa: ANN401 (hyperparameter values of any type)
    """Tuples as lists and paths as strings, so saved and live hyperparameters compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _same(a: Any, b: Any) -> bool:  # noqa: ANN401
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return _plain(a) == _plain(b)


def _differing_hparams(module: LightningModule, checkpoint: dict[str, Any]) -> list[str]:
    stamp = checkpoint.get(IDENTITY_KEY)
    saved = stamp.get("hparams") if isinstance(stamp, dict) and stamp.get("hparams") else None
    saved = saved or checkpoint.get(module.CHECKPOINT_HYPER_PARAMS_KEY) or {}
    own = dict(module.hparams)
    return [
        f"{key}: checkpoint {saved[key]!r}, this model {own[key]!r}"
        for key in own
        if key in saved and not _same(saved[key], own[key])
    ]


def _weight_mismatch(module: LightningModule, state: dict[str, torch.Tensor]) -> list[str]:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:_LISTED])})")
    return problems


def _class_mismatch(stamp: object, name: str, where: str) -> CheckpointMismatchError | None:
    if isinstance(stamp, dict) and stamp.get("class") not in (None, name):
        msg = (
            f"{where} holds a {stamp['class']} model ({stamp.get('module')}), not a {name}: "
            f"load it with {stamp['class']}.load_from_checkpoint(...) or pass a {stamp['class']} to the Engine"
        )
        return CheckpointMismatchError(msg)
    return None


def check_checkpoint_file(cls: type, checkpoint_path: object) -> None:
    """Raise :class:`CheckpointMismatchError` if a local checkpoint file was written by another model class.

    For ``load_from_checkpoint``, which builds the model from the checkpoint's arguments *before* the model
    sees the checkpoint: a UNetAE checkpoint given to SimpleNet would otherwise first try to download SimpleNet's
    default ImageNet backbone. The file is memory-mapped (tensors are not read) under ``weights_only=True``.
    """
    if not isinstance(checkpoint_path, (str, Path)) or not Path(checkpoint_path).is_file():
        return  # URLs and file objects: left to the on_load_checkpoint check
    from anomalib.utils.serialization import anomalib_safe_globals

    try:
        with anomalib_safe_globals():
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (unreadable here: Lightning's own load reports it)
        return
    error = _class_mismatch(checkpoint.get(IDENTITY_KEY), cls.__name__, f"checkpoint {checkpoint_path}")
    if error is not None:
        raise error


def check_checkpoint(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` before loading a checkpoint that cannot fit ``module``.

    * The checkpoint's stamped model class differs (e.g. a UNetAE checkpoint given to SimpleNet).
    * Its weights do not fit (missing, unexpected or wrong-shape tensors) and constructor arguments differ: the
      message names those arguments (e.g. ``backbone: checkpoint 'resnet18', this model 'resnet34'``).

    A weight mismatch without differing arguments is left to Lightning (it lists the tensors and honours
    ``strict=False``). Call from ``on_load_checkpoint``, before ``super().on_load_checkpoint``.
    """
    name = type(module).__name__
    error = _class_mismatch(checkpoint.get(IDENTITY_KEY), name, _where(module))
    if error is not None:
        raise error
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    mismatch = _weight_mismatch(module, state)
    differing = _differing_hparams(module, checkpoint)
    if mismatch and differing:
        msg = (
            f"{_where(module)} does not fit this {name}: its weights were made with other arguments "
            f"({'; '.join(differing)}). Weights: {'; '.join(mismatch)}. Build the model with the checkpoint's "
            f"arguments, e.g. {name}.load_from_checkpoint(path) without overriding them."
        )
        raise CheckpointMismatchError(msg)


def check_export_ready(module: LightningModule, fitted: bool = True) -> None:
    """Raise :class:`NotFittedError` when an export would label images with meaningless thresholds.

    anomalib's ``PostProcessor`` starts with NaN statistics; unfitted, it passes raw scores through and labels
    every image ``score > 0.5`` — for these models, nearly everything normal (or anomalous), silently. The
    statistics come from validation during ``fit`` (or from a checkpoint). A model built with
    ``post_processor=False`` exports raw scores on purpose and passes.

    Args:
        module: the model to export.
        fitted: the model's own fitted state (e.g. DistillClassifier's Gaussians); ``False`` also raises.
    """
    name = type(module).__name__
    post = getattr(module, "post_processor", None)
    missing = []
    if not fitted:
        missing.append("its fitted distributions (run fit first)")
    if post is not None and hasattr(post, "image_min"):
        no_range = bool(torch.isnan(post.image_min) | torch.isnan(post.image_max))
        if getattr(post, "enable_normalization", False) and no_range:
            missing.append("the score normalisation statistics")
        if getattr(post, "enable_thresholding", False) and bool(torch.isnan(post.image_threshold)):
            missing.append("the image threshold")
    if missing:
        msg = (
            f"{name} cannot be exported: it has no {' and no '.join(missing)}, so the exported model would "
            "label images with a meaningless threshold. Fit it with a validation split first (engine.fit), or load "
            "a trained checkpoint (engine.export(model, ..., ckpt_path=...)); to export raw, unthresholded scores "
            f"on purpose, build it with post_processor=False."
        )
        raise NotFittedError(msg)
