"""SimpleNet's feature caches for one fit: built with the model, started with each fit, freed when it ends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .feature_cache import TrainingFeatureCache, cache_mode
from .training_data import stage_loader


class FitFeatureCaches:
    """The training and validation feature caches of a SimpleNet fit, and when they fill, serve and free.

    The frozen backbone maps a training or validation image to the same features ``(D, h, w)`` every epoch, so
    the features of both sets are kept for one fit (see :class:`~.feature_cache.TrainingFeatureCache`); with
    them, every epoch after the first costs the adapter and discriminator only. The Lightning module calls
    :meth:`start` when training starts, :meth:`skip_cached_images` at each training epoch start,
    :meth:`skip_cached_validation_images` at each validation epoch end while fitting and :meth:`stop`
    when fitting ends or fails, and answers the plugin's hooks with :meth:`needs_images` and
    :attr:`fixed_shards`.

    Args:
        extract: the frozen extractor, images ``(N, 3, H, W)`` → features ``(N, D, h, w)``.
        mode: SimpleNet's ``feature_cache`` argument (``"auto"``, ``"memory"``, ``"disk"``, ``"off"`` or a bool).
        max_gb: bound of each cache in GiB.
        directory: folder for ``"disk"``; the validation cache uses its sub-folder ``validation``, so the two
            are filled and freed independently. ``None``: temporary folders.
        dtype: precision the features are stored in (``"float32"``, ``"float16"``, ``"bfloat16"``).
    """

    def __init__(
        self,
        extract: Callable[[torch.Tensor], torch.Tensor],
        mode: bool | str = "auto",
        max_gb: float = 4.0,
        directory: str | None = None,
        dtype: str = "float32",
    ) -> None:
        if max_gb <= 0:
            msg = f"feature_cache_max_gb must be > 0, got {max_gb}"
            raise ValueError(msg)
        arguments: dict[str, Any] = {"mode": cache_mode(mode), "max_bytes": int(max_gb * 2**30), "directory": directory,
                                     "dtype": dtype}
        self.training = TrainingFeatureCache(extract, **arguments)
        if directory is not None:
            arguments["directory"] = str(Path(directory) / "validation")
        # Validation images are as deterministic as training ones: val_loss and predictions of every epoch
        # after the first then cost the head only.
        self.validation = TrainingFeatureCache(extract, **arguments, stage="val")

    def start(self, trainer: Any, pre_processor: Any) -> None:
        """Decide for this fit whether each cache is used (the log says why not)."""
        self.training.start(trainer, pre_processor)
        self.validation.start(trainer, pre_processor)

    def skip_cached_images(self, trainer: Any) -> None:
        """Let the training loader stop reading the files of images whose features are cached.

        Called at every training epoch start: it takes effect from the first epoch after the training features
        were cached (at the start of fit, or in the first epoch with an absolute ``noise_std``), also when the
        cache is only partly filled.
        """
        self.training.skip_cached_images(trainer.train_dataloader)

    def skip_cached_validation_images(self, trainer: Any) -> None:
        """Let the validation loader stop reading the image files (not the masks) once every validation image's
        features are cached: called at the end of each validation epoch while fitting, it takes effect from
        the second validation. Decoding and resizing the images would otherwise cost more than the head's
        predictions (toothbrush, 10 epochs on 2 CPU cores: a sixth of SimpleNet's fit)."""
        loader = stage_loader(trainer, "val")
        if loader is not None:
            self.validation.skip_cached_images(loader)

    def stop(self) -> None:
        """Free both caches (memory or files); they serve one fit only."""
        self.training.stop()
        self.validation.stop()

    def needs_images(self, image_paths: Sequence[str] | None) -> bool:
        """False when every one of a training batch's images has its features in the training cache."""
        return not self.training.holds(image_paths)

    @property
    def fixed_shards(self) -> bool:
        """Under DDP, each rank must keep its training images for the whole fit, so its cache fills once."""
        return self.training.mode != "off"
