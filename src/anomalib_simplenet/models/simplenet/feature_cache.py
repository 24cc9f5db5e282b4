"""Cache of frozen-backbone features, so models with a frozen extractor train their heads without re-running it.

A frozen backbone maps the same pre-processed image to the same features every epoch; only augmentations
change the input. With deterministic training data the features of each image are computed in the first
epoch, kept (CPU memory or files), and served by image path in later epochs, in whatever order the sampler
draws them. Everything random in the training step (noise, dropout) still runs every step. Under DDP each
process caches its own shard (fixed for the fit by
:class:`~anomalib_simplenet.components.distributed.FixedShardSampler`); a shared ``directory`` gets one
sub-folder per rank, so no rank reads another's files.

:func:`~.training_data.uncacheable_reason` tells whether training data is deterministic;
:class:`FeatureCache` is the bounded store; :class:`TrainingFeatureCache` serves a fit.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from anomalib_simplenet.components.distributed import rank_directory

from .training_data import (
    check_stage,
    fetch_in_process,
    loader_size,
    read_only_uncached_images,
    set_size,
    uncacheable_reason,
)

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "off")
# Storage precisions: float16 halves the cache; its rounding (relative 2⁻¹¹) is far below the training noise.
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FeatureCache:
    """Bounded map from an image key (its path) to its features ``(D, h, w)``.

    Args:
        max_bytes: most bytes of feature data to hold; :meth:`put` refuses entries beyond it.
        directory: store entries as files here (created; a temporary directory when ``""``) instead of in
            CPU memory. Files are removed by :meth:`clear`.
        dtype: precision entries are stored in (``None``: as given); :meth:`get` returns them in the dtype
            they were given in.
    """

    def __init__(self, max_bytes: int, directory: str | Path | None = None, dtype: torch.dtype | None = None) -> None:
        if max_bytes <= 0:
            msg = f"feature cache size bound must be > 0 bytes, got {max_bytes}"
            raise ValueError(msg)
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.dtype = dtype
        self._given_dtype: torch.dtype | None = None  # what get() returns
        self._memory: dict[str, torch.Tensor] = {}
        self._files: dict[str, Path] = {}
        self._owned_dir = False
        self.directory: Path | None = None
        if directory is not None:
            if directory == "":
                self.directory, self._owned_dir = Path(tempfile.mkdtemp(prefix="simplenet_features_")), True
            else:
                self.directory = Path(directory).expanduser()
                self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def storage(self) -> str:
        """``"disk"`` or ``"memory"``."""
        return "disk" if self.directory is not None else "memory"

    def __len__(self) -> int:
        return len(self._files) if self.directory is not None else len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._files or key in self._memory

    def keys(self) -> list[str]:
        """The keys of the cached entries."""
        return list(self._files if self.directory is not None else self._memory)

    def fits(self, count: int, entry_bytes: int) -> bool:
        """Whether ``count`` entries of ``entry_bytes`` each (as stored) stay within the bound."""
        return count * entry_bytes <= self.max_bytes

    def stored_bytes(self, entry: torch.Tensor) -> int:
        """Bytes ``entry`` takes in this cache."""
        return entry.numel() * (entry.element_size() if self.dtype is None else self.dtype.itemsize)

    def get(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        """Cached features ``(D, h, w)`` (on CPU) for each key, ``None`` where absent."""
        if self.directory is None:
            entries = [self._memory.get(key) for key in keys]
        else:
            entries = [torch.load(self._files[key], weights_only=True) if key in self._files else None for key in keys]
        return [None if entry is None else entry.to(self._given_dtype) for entry in entries]

    def put(self, keys: Sequence[str], features: torch.Tensor) -> bool:
        """Store ``features`` ``(N, D, h, w)`` under ``keys``; ``False`` (nothing stored) if over the bound."""
        if len(keys) != len(features):
            msg = f"feature cache: {len(keys)} keys for {len(features)} feature maps"
            raise ValueError(msg)
        new = [(key, entry) for key, entry in zip(keys, features, strict=True) if key not in self]
        size = sum(self.stored_bytes(entry) for _, entry in new)
        if self.nbytes + size > self.max_bytes:
            return False
        if self.directory is not None and new:
            self.directory.mkdir(parents=True, exist_ok=True)  # again after clear() removed a temporary one
        self._given_dtype = features.dtype
        for key, entry in new:
            # clone: an entry must not keep the whole batch tensor (or GPU memory) alive.
            entry = entry.detach().to("cpu", dtype=self.dtype or entry.dtype, copy=True)
            if self.directory is None:
                self._memory[key] = entry
            else:
                path = self.directory / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
                torch.save(entry, path)
                self._files[key] = path
        self.nbytes += size
        return True

    def clear(self) -> None:
        """Drop every entry (and delete the files, or the temporary directory this cache made)."""
        for path in self._files.values():
            path.unlink(missing_ok=True)
        if self._owned_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._memory.clear()
        self._files.clear()
        self.nbytes = 0


def cache_mode(value: bool | str) -> str:
    """Normalise a ``feature_cache`` argument: ``True`` → ``"memory"``, ``False`` → ``"off"``, else one of
    :data:`CACHE_MODES`."""
    if isinstance(value, bool):
        return "memory" if value else "off"
    if value not in CACHE_MODES:
        msg = f"feature_cache must be a bool or one of {CACHE_MODES}, got {value!r}"
        raise ValueError(msg)
    return value


class TrainingFeatureCache:
    """Training features per batch: from a :class:`FeatureCache` when the data allow it, else computed.

    Args:
        extract: the frozen extractor, images ``(N, 3, H, W)`` → features ``(N, D, h, w)``.
        mode: ``"auto"``/``"memory"`` (CPU memory), ``"disk"`` (files), ``"off"``. ``"auto"`` reports a
            fallback at INFO level, an explicit mode at WARNING level.
        max_bytes: bound of the cached data; if the whole training set would not fit, nothing is cached.
        directory: folder for ``"disk"`` (a temporary one, removed at :meth:`stop`, when ``None``).
        dtype: storage precision, one of :data:`CACHE_DTYPES` (features are served back in float32).
        stage: the images it serves: ``"train"`` or ``"val"`` (whose data decide whether caching is safe).

    Call :meth:`start` when fitting starts, the object itself in each training step, :meth:`stop` at the end.
    """

    def __init__(
        self,
        extract: Callable[[torch.Tensor], torch.Tensor],
        mode: str = "auto",
        max_bytes: int = 4 * 2**30,
        directory: str | Path | None = None,
        dtype: str = "float32",
        stage: str = "train",
    ) -> None:
        if dtype not in CACHE_DTYPES:
            msg = f"feature cache dtype must be one of {list(CACHE_DTYPES)}, got {dtype!r}"
            raise ValueError(msg)
        self.stage = check_stage(stage)
        self.extract = extract
        self.dtype = CACHE_DTYPES[dtype]
        self.mode = cache_mode(mode)
        self.max_bytes = max_bytes
        self.directory = directory
        self.cache: FeatureCache | None = None
        self.reason: str | None = "not started"
        self.expected_images: int | None = None
        self._full_reported = False
        self.computed_images = 0  # images that went through the extractor since start()
        self.served_images = 0  # images served from the cache since start()
        self._read_images_again: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """True while features are being cached and served."""
        return self.cache is not None

    def _fall_back(self, reason: str) -> None:
        self.stop()
        self.reason = reason
        level = logging.INFO if self.mode == "auto" else logging.WARNING
        logger.log(level, "Feature cache off: %s. Backbone features are recomputed in every training step.", reason)

    def start(self, trainer: Any, pre_processor: Any = None) -> None:
        """Decide for this fit whether to cache (and say why not in the log)."""
        self.stop()
        self.computed_images = self.served_images = 0
        if self.mode == "off":
            self.reason = "feature_cache is off"
            return
        reason = uncacheable_reason(trainer, pre_processor, self.stage)
        if reason is not None:
            self._fall_back(reason)
            return
        # Under DDP each rank caches the images of its own shard; on disk, in its own folder.
        directory = None
        if self.mode == "disk":
            directory = rank_directory(self.directory) if self.directory else ""
        self.cache = FeatureCache(self.max_bytes, directory, self.dtype)
        self.expected_images = set_size(trainer, self.stage)
        self.reason, self._full_reported = None, False
        logger.info(
            "Feature cache on (%s, at most %.2f GB): backbone features are computed in the first epoch only.",
            self.cache.storage, self.max_bytes / 2**30,
        )

    def stop(self) -> None:
        """Free the cache (memory or files); the training loader reads every image again."""
        if self._read_images_again is not None:
            self._read_images_again()
            self._read_images_again = None
        if self.cache is not None:
            self.cache.clear()
        self.cache = None

    def skip_cached_images(self, loader: Any) -> bool:
        """Let ``loader`` skip reading the image files whose features are cached, until :meth:`stop`.

        Call it once the cache is filled. Training: a partly filled cache still reads the other images.
        Validation: only once every image of the loader is cached (its batches go through the pre-processor,
        which cannot resize stand-ins and real images into one batch); the masks are still read. Once every image
        of the loader is cached, its batches are also fetched without worker processes
        (:func:`~.training_data.fetch_in_process`). ``False`` when
        the loader's dataset is not one whose reading can be skipped (see
        :func:`~.training_data.read_only_uncached_images`) or nothing (validation: not everything) is cached.
        """
        if self.cache is None or len(self.cache) == 0 or self._read_images_again is not None:
            return False
        validation = self.stage == "val"
        complete = len(self.cache) == loader_size(loader)
        if validation and not complete:
            return False
        skip = read_only_uncached_images(loader, self.cache.keys(), keep_masks=validation)
        if skip is None:
            return False
        in_process = fetch_in_process(loader) if complete else None

        def read_again() -> None:
            skip()
            if in_process is not None:
                in_process()

        self._read_images_again = read_again
        return True

    def holds(self, keys: Sequence[str] | None) -> bool:
        """True when the features of every one of ``keys`` are cached: that batch's images will not be read."""
        return self.cache is not None and keys is not None and all(key in self.cache for key in keys)

    def __call__(self, images: torch.Tensor, keys: Sequence[str] | None) -> torch.Tensor:
        """Features ``(N, D, h, w)`` of ``images`` ``(N, 3, H, W)`` whose paths are ``keys``."""
        if self.cache is not None and keys is None:
            self._fall_back("the training batches carry no image_path to key the cache by")
        if self.cache is None:
            self.computed_images += len(images)
            return self.extract(images)
        cached = self.cache.get(keys)
        missing = [index for index, entry in enumerate(cached) if entry is None]
        self.computed_images += len(missing)
        self.served_images += len(keys) - len(missing)
        if not missing:
            return torch.stack(cached).to(images.device, non_blocking=True)  # type: ignore[arg-type]
        # A whole batch of new images goes through the extractor as it is (the uncached computation).
        computed = self.extract(images if len(missing) == len(keys) else images[missing])
        self._store([keys[index] for index in missing], computed)
        if len(missing) == len(keys):
            return computed
        for index, entry in zip(missing, computed, strict=True):
            cached[index] = entry
        return torch.stack([entry.to(images.device) for entry in cached])  # type: ignore[union-attr]

    def _store(self, keys: list[str], features: torch.Tensor) -> None:
        assert self.cache is not None
        entry_bytes = self.cache.stored_bytes(features[0])
        if len(self.cache) == 0 and self.expected_images and not self.cache.fits(self.expected_images, entry_bytes):
            needed = self.expected_images * entry_bytes / 2**30
            self._fall_back(
                f"the cache would not fit: {self.expected_images} images × {entry_bytes / 2**20:.1f} MB = "
                f"{needed:.2f} GB > feature_cache_max_gb={self.max_bytes / 2**30:.2f}"
            )
            return
        if not self.cache.put(keys, features) and not self._full_reported:
            self._full_reported = True
            level = logging.INFO if self.mode == "auto" else logging.WARNING
            logger.log(
                level, "Feature cache full at %d images (%.2f GB); further images are recomputed every epoch.",
                len(self.cache), self.cache.nbytes / 2**30,
            )
