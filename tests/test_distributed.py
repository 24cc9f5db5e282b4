"""The shared DDP pieces: gathering per-sample rows by key across ranks (padding repeats dropped), sums over
unique samples, gradient averaging, per-rank folders, fixed training shards, and the callback's samplers.

Multi-rank cases run two forked gloo processes on this CPU.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from anomalib_simplenet.components import distributed
from anomalib_simplenet.components.distributed import (
    DistributedDataCallback,
    FixedShardSampler,
    RowsByKey,
    all_reduce_sum,
    average_gradients,
    gather_by_key,
    rank_directory,
    sum_over_samples,
)

# Rank 1's shard repeats "a" (the sampler's padding) and is one row longer than rank 0's.
KEYS = [["c", "a"], ["b", "d", "a"]]


def _values(keys: list[str]) -> torch.Tensor:
    """``(N, 2)`` rows that depend on the key only: ``[ord(key), 10·ord(key)]``."""
    return torch.tensor([[float(ord(k)), 10.0 * ord(k)] for k in keys], dtype=torch.float64)


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        keys = KEYS[rank]
        ordered, (rows, counts) = gather_by_key(keys, _values(keys), torch.ones(len(keys), dtype=torch.long))
        assert ordered == ["a", "b", "c", "d"], ordered
        torch.testing.assert_close(rows, _values(ordered))
        assert counts.tolist() == [1, 1, 1, 1]
        streamed = RowsByKey()
        streamed.add(_values(keys)[:1], keys[:1])
        streamed.add(_values(keys)[1:], keys[1:])
        count, batches = streamed.batches(3)
        assert count == 4
        torch.testing.assert_close(torch.cat(list(batches)), _values(ordered))
        torch.testing.assert_close(torch.cat(list(batches)), _values(ordered))  # re-iterable
        (total,) = sum_over_samples(keys, _values(keys))
        torch.testing.assert_close(total, _values(ordered).sum(0))  # "a" once, although two ranks hold it
        (reduced,) = all_reduce_sum(torch.tensor([rank + 1.0]))
        assert reduced.item() == 3.0
        parameter = torch.nn.Parameter(torch.zeros(2))
        parameter.grad = torch.full((2,), float(rank))
        average_gradients([parameter])
        torch.testing.assert_close(parameter.grad, torch.full((2,), 0.5))
        assert rank_directory(folder) == Path(folder) / f"rank{rank}"
        assert distributed.rank_and_world() == (rank, 2)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_ranks_gather_each_sample_once(tmp_path: Path) -> None:
    # fork: the children start in a second, instead of importing torch and Lightning again (CPU, gloo only).
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")


def test_one_process_dedupes_and_orders_by_key(tmp_path: Path) -> None:
    keys = ["b", "a", "b"]
    ordered, (rows,) = gather_by_key(keys, _values(keys))
    assert ordered == ["a", "b"]
    torch.testing.assert_close(rows, _values(["a", "b"]))
    assert rank_directory(tmp_path) == tmp_path
    (copy,) = all_reduce_sum(torch.ones(2))
    assert copy.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="3 keys for a tensor of 2 rows"):
        gather_by_key(keys, torch.zeros(2))


def test_fixed_shards_keep_their_images_and_reshuffle() -> None:
    dataset = list(range(11))
    samplers = [FixedShardSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3) for rank in (0, 1)]
    epochs = []
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        epochs.append([list(sampler) for sampler in samplers])
    for rank in (0, 1):
        assert len(epochs[0][rank]) == 6  # padded to equal lengths, as DDP training needs
        assert set(epochs[0][rank]) == set(epochs[1][rank])
    assert epochs[0][0] != epochs[1][0]  # a new order every epoch
    assert set(epochs[0][0]) | set(epochs[0][1]) == set(dataset)
    # Lightning's own sampler deals other shards each epoch: what a per-rank cache would suffer from.
    plain = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=3)
    shards = []
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        shards.append(set(plain))
    assert shards[0] != shards[1]


class _Trainer:
    """What the callback reads from a Lightning trainer."""

    def __init__(self, world_size: int, rank: int, datamodule: object) -> None:
        self.world_size, self.global_rank, self.datamodule = world_size, rank, datamodule


class _DataModule:
    def train_dataloader(self) -> DataLoader:
        return DataLoader(list(range(9)), batch_size=2, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(list(range(9)), batch_size=2)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(list(range(9)), batch_size=2)


class _Model:
    fixed_train_shards = True


def test_callback_gives_unpadded_evaluation_shards_and_restores_the_datamodule() -> None:
    datamodule = _DataModule()
    callback = DistributedDataCallback()
    callback.setup(_Trainer(2, 1, datamodule), _Model(), "fit")
    val, test, train = datamodule.val_dataloader(), datamodule.test_dataloader(), datamodule.train_dataloader()
    assert isinstance(val.sampler, UnrepeatedDistributedSampler) and list(val.sampler) == [1, 3, 5, 7]
    assert isinstance(test.sampler, UnrepeatedDistributedSampler)
    assert isinstance(train.sampler, FixedShardSampler) and len(list(train.sampler)) == 5
    callback.teardown(None, None, "fit")
    assert "val_dataloader" not in vars(datamodule)
    assert not isinstance(datamodule.val_dataloader().sampler, DistributedSampler)


def test_callback_does_nothing_in_one_process() -> None:
    datamodule = _DataModule()
    DistributedDataCallback().setup(_Trainer(1, 0, datamodule), _Model(), "fit")
    assert not vars(datamodule)


def test_rows_by_key_read_back_in_gather_order_without_concatenating() -> None:
    keys = ["c", "a", "e", "b", "a", "d"]  # "a" twice: the sampler's padding, read back once
    rows = RowsByKey()
    for start, stop in ((0, 2), (2, 5), (5, 6)):
        rows.add(_values(keys[start:stop]), keys[start:stop])
    count, batches = rows.batches(2)
    parts = list(batches)
    _, (expected,) = gather_by_key(keys, _values(keys))
    assert count == 5 and [len(part) for part in parts] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(parts), expected)
    torch.testing.assert_close(torch.cat(list(batches)), expected)  # a second pass reads the same rows
    with pytest.raises(ValueError, match="2 keys for 1 rows"):
        rows.add(_values(["x"]), ["x", "y"])
