"""Statistics over every rank's samples, each exactly once, under Lightning's DDP; the samplers that allow it.

Under DDP each process (rank) iterates its own shard of every dataloader. Lightning's ``DistributedSampler``
pads the shards by repeating images so that all ranks run the same number of steps: a sum over shards counts
some images twice, and a statistic of one shard sees only part of the data. The functions here gather
per-sample values keyed by image path, keep one row per key and order the rows by key, so a statistic fitted
on the result is the same on every rank and the same as in one process on the same images. Without an
initialised process group each function is the one-process case (same ordering, same deduplication).

:class:`DistributedDataCallback` (added to every plugin model's callbacks) gives validation and test loaders
unpadded shards, so the post-processor's normalisation and thresholds and the metrics (torchmetrics states,
gathered on ``compute``) see each image once, and gives a model that asks for it (``fixed_train_shards``)
training shards that stay with their rank for the whole fit (per-rank feature caches).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(global rank, world size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def all_reduce_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sums over ranks of same-shaped tensors (copies). Only for sums over *disjoint* samples (no padding)."""
    if not is_distributed():
        return tuple(t.clone() for t in tensors)
    out = []
    for tensor in tensors:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        out.append(total)
    return tuple(out)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks in place, for parameters DDP does not manage (outside the wrapped module)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(world)


def log_global_mean(module: LightningModule, name: str, value: torch.Tensor | None, count: int, **kwargs: Any) -> None:
    """``module.log`` an epoch mean over all ranks' samples: ``value`` is the mean of ``count`` samples.

    ``sync_dist`` with Lightning's mean reduction weights each rank by its ``count``. Under DDP a rank with
    nothing to add (``value is None`` or ``count == 0``) logs zero weight, since every rank must take part in
    the synchronisation; in one process it logs nothing. Pass the same ``kwargs`` in both cases (Lightning
    refuses one name logged with different arguments).
    """
    if value is None or count == 0:
        if not is_distributed():
            return
        value, count = torch.zeros((), device=module.device), 0
    module.log(name, value, on_step=False, on_epoch=True, batch_size=count, sync_dist=True, **kwargs)


def _all_gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows ``(n_r, ...)`` of every rank concatenated in rank order; shards may differ in length."""
    home = tensor.device
    device = home
    if dist.get_backend() == "nccl" and home.type != "cuda":  # NCCL moves CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    padded = torch.zeros((max(counts), *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(home)


def gather_by_key(keys: Sequence[str], *tensors: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Per-sample rows of all ranks, one row per distinct key, sorted by key.

    Args:
        keys: ``N`` sample keys of this rank (image paths); repeated keys are the sampler's padding.
        tensors: per-sample values ``(N, ...)``, numeric; gathered on their own device (NCCL needs CUDA).

    Returns:
        The ``M`` distinct keys of all ranks, sorted, and each tensor's ``(M, ...)`` rows in that order. The
        first row of each key is kept: a padded repeat is the same image with the same value.
    """
    keys = [str(key) for key in keys]
    for tensor in tensors:
        if len(tensor) != len(keys):
            msg = f"gather_by_key: {len(keys)} keys for a tensor of {len(tensor)} rows"
            raise ValueError(msg)
    rows = list(tensors)
    if is_distributed():
        per_rank: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(per_rank, keys)
        counts = [len(part) for part in per_rank]
        keys = [key for part in per_rank for key in part]
        rows = [_all_gather_rows(tensor, counts) for tensor in tensors]
    first: dict[str, int] = {}
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    ordered = sorted(first)
    index = torch.tensor([first[key] for key in ordered], dtype=torch.long)
    return ordered, [row[index.to(row.device)] for row in rows]


class RowsByKey:
    """Per-sample rows added batch by batch, read back in :func:`gather_by_key`'s order: all ranks' rows, one per
    distinct key, sorted by key.

    In one process the rows are not concatenated: :meth:`batches` stacks a batch at a time from those added (one
    copy of the rows in memory, not three). Under DDP they are gathered as :func:`gather_by_key` does.
    """

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.keys: list[str] = []

    def add(self, rows: torch.Tensor, keys: Sequence[str]) -> None:
        """Add rows ``(n, ...)`` and their ``n`` keys (kept on the CPU in one process; on their device under DDP,
        where the gather needs them there)."""
        if len(rows) != len(keys):
            msg = f"RowsByKey: {len(keys)} keys for {len(rows)} rows"
            raise ValueError(msg)
        self.parts.append(rows if is_distributed() else rows.cpu())
        self.keys += [str(key) for key in keys]

    def batches(self, size: int) -> tuple[int, Iterable[torch.Tensor]]:
        """Number of distinct keys and their rows in batches of ``size`` (CPU tensors), re-iterable: each pass
        stacks the batches anew from the rows added.

        A collective under DDP: every rank must call it.
        """
        if is_distributed():
            _, (everything,) = gather_by_key(self.keys, torch.cat(self.parts))
            self.parts = []
            return len(everything), everything.cpu().split(size)
        first: dict[str, tuple[int, int]] = {}
        locations = ((part, row) for part, rows in enumerate(self.parts) for row in range(len(rows)))
        for key, location in zip(self.keys, locations, strict=True):
            first.setdefault(key, location)
        ordered = [first[key] for key in sorted(first)]
        return len(ordered), _StackedBatches(self.parts, ordered, size)


class _StackedBatches:
    """Rows at ``(part, row)`` positions of ``parts``, stacked ``size`` at a time on every pass."""

    def __init__(self, parts: list[torch.Tensor], ordered: list[tuple[int, int]], size: int) -> None:
        self.parts, self.ordered, self.size = parts, ordered, size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.ordered), self.size):
            yield torch.stack([self.parts[part][row] for part, row in self.ordered[start : start + self.size]])


def batch_keys(paths: Sequence[Any] | None, count: int, start: int) -> list[str]:
    """Keys of a batch's ``count`` samples: their image paths, else this rank's running numbers from ``start``
    (distinct across ranks, so samples without a path are never merged)."""
    if paths is not None:
        return [str(path) for path in paths]
    rank, _ = rank_and_world()
    return [f"rank{rank}#{start + i}" for i in range(count)]


def sum_over_samples(keys: Sequence[str], *per_sample: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Totals ``(...)`` of per-sample values ``(N, ...)`` over all ranks, each key counted once.

    For statistics built from sums and counts (means, variances, scales): give each image's own sums, e.g. the
    per-channel mean and variance of features ``(N, D, h, w)`` over whatever loader this rank iterates::

        sums, squares, counts, keys = [], [], [], []
        for batch in loader:
            features = extract(batch.image).double()
            sums.append(features.sum(dim=(2, 3)))
            squares.append(features.square().sum(dim=(2, 3)))
            counts.append(torch.full((len(features),), features[0, 0].numel(), dtype=torch.float64))
            keys += batch_keys(batch.image_path, len(features), len(keys))
        total, total_sq, n = sum_over_samples(keys, torch.cat(sums), torch.cat(squares), torch.cat(counts))
        mean, var = total / n, total_sq / n - (total / n) ** 2

    Every rank must call it (a collective), with the same number of tensors.
    """
    _, rows = gather_by_key(keys, *per_sample)
    return tuple(row.sum(dim=0) for row in rows)


def rank_directory(directory: str | Path) -> Path:
    """``directory/rank<r>`` under DDP, else ``directory``: files a rank writes for itself (caches)."""
    rank, world = rank_and_world()
    return Path(directory) / f"rank{rank}" if world > 1 else Path(directory)


class FixedShardSampler(DistributedSampler):
    """Training shards that stay with their rank for the whole fit, in a new order every epoch.

    Rank ``r`` always gets the same ``⌈N/W⌉`` images (a permutation seeded by ``seed`` alone, padded by
    repetition as ``DistributedSampler`` pads); ``set_epoch`` reshuffles within the shard. Lightning's sampler
    deals new shards every epoch, so a per-rank cache of per-image results would fill up with every image.
    """

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order = (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size]
        shard = order[self.rank : self.total_size : self.num_replicas]
        if self.shuffle:
            generator.manual_seed(self.seed + 1 + self.epoch)
            shard = [shard[i] for i in torch.randperm(len(shard), generator=generator).tolist()]
        return iter(shard)


_STAGES = {"train_dataloader": RunningStage.TRAINING, "val_dataloader": RunningStage.VALIDATING,
           "test_dataloader": RunningStage.TESTING}


def _with_sampler(loader: DataLoader, sampler: DistributedSampler, stage: RunningStage) -> DataLoader:
    """``loader`` rebuilt with ``sampler`` (Lightning keeps a ``DistributedSampler`` it finds)."""
    return _update_dataloader(loader, sampler, mode=stage)


class DistributedDataCallback(Callback):
    """Under DDP, unpadded validation/test shards and (on request) fixed training shards.

    In ``setup`` it wraps the datamodule's dataloader methods for the run (restored in ``teardown``); Lightning
    leaves loaders that already carry a ``DistributedSampler`` alone. Evaluation shards may then differ by one
    image between ranks, which DDP allows outside training (no gradient synchronisation). Loaders passed to
    ``fit``/``test`` directly, not through a datamodule, keep Lightning's padded sampler.
    """

    def __init__(self) -> None:
        self._patched: dict[str, Any] = {}  # name -> the datamodule's own instance attribute (or None)
        self._datamodule: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Wrap the datamodule's loaders when running with several ranks and Lightning's samplers."""
        del stage
        self.teardown(trainer, pl_module, "")
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer.world_size <= 1 or not getattr(connector, "use_distributed_sampler", True):
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return
        names = ["val_dataloader", "test_dataloader"]
        # Only plugin models add this callback: the hook is declared on their base, PluginModuleMixin.
        if pl_module.fixed_train_shards:  # type: ignore[attr-defined]
            names.append("train_dataloader")
        self._datamodule = datamodule
        for name in names:
            original = getattr(datamodule, name, None)
            if callable(original):
                self._patched[name] = datamodule.__dict__.get(name)
                setattr(datamodule, name, self._wrap(original, name, trainer))

    @staticmethod
    def _wrap(original: Callable[[], Any], name: str, trainer: Trainer) -> Callable[[], Any]:
        def loaders() -> Any:
            loader = original()
            if not isinstance(loader, DataLoader) or isinstance(loader.sampler, DistributedSampler):
                return loader
            replicas, rank = trainer.world_size, trainer.global_rank
            if name == "train_dataloader":
                seed = int(os.getenv("PL_GLOBAL_SEED", "0"))  # as Lightning seeds its samplers
                sampler: DistributedSampler = FixedShardSampler(
                    loader.dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed
                )
            else:
                sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=replicas, rank=rank, shuffle=False)
            return _with_sampler(loader, sampler, _STAGES[name])

        return loaders

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the datamodule its own methods back."""
        del trainer, pl_module, stage
        for name, own in self._patched.items():
            self._datamodule.__dict__.pop(name, None)
            if own is not None:
                self._datamodule.__dict__[name] = own
        self._patched, self._datamodule = {}, None
