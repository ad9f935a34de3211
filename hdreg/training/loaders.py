"""Datasets and samplers behind the DataModules' loaders: the training stream's share per epoch
and process (:class:`StreamSampler`), fixed pairs as a dataset (:class:`FixedPairs`) and batch
indices for on-device generation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hdreg.data.benchmarks.synthetic import SyntheticBenchmark

__all__ = ["BatchIndices", "FixedPairs", "StreamSampler"]


class BatchIndices(Dataset):
    """Item ``i`` is the global batch index ``i`` as a 0-d tensor (for on-device generation)."""

    def __len__(self) -> int:
        return np.iinfo(np.int64).max // 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index, dtype=torch.int64)


class StreamSampler(Sampler[int]):
    """Indices ``[start + rank, start + n)`` with stride ``world_size``: one epoch's share of an
    endless stream for one process.

    ``start`` is ``epoch·n`` (Lightning calls :meth:`set_epoch` at every epoch start), or, with
    ``position``, ``position()`` read when the epoch's iteration begins: the training stream's
    index after the optimizer steps already taken. A run resumed from a checkpoint then goes on
    at exactly the pair where it stopped, whatever epoch number Lightning restores.
    """

    def __init__(
        self,
        pairs_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        position: Callable[[], int] | None = None,
    ) -> None:
        if pairs_per_epoch % world_size:
            raise ValueError(f"pairs_per_epoch {pairs_per_epoch} not divisible by {world_size}")
        self.pairs_per_epoch, self.rank, self.world_size = pairs_per_epoch, rank, world_size
        self.position = position
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.pairs_per_epoch // self.world_size

    def __iter__(self) -> Iterator[int]:
        start = self.position() if self.position else self.epoch * self.pairs_per_epoch
        start += self.rank
        return iter(range(start, start + self.pairs_per_epoch, self.world_size))


class FixedPairs(Dataset):
    """A :class:`SyntheticBenchmark` as a dataset of the same items as :class:`SyntheticPairs`."""

    def __init__(self, bench: SyntheticBenchmark) -> None:
        self.bench = bench

    def __len__(self) -> int:
        return len(self.bench)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.bench
        item = {
            "patch_a": torch.from_numpy(b.patch_a[i])[None],
            "patch_b": torch.from_numpy(b.patch_b[i])[None],
            "offsets": torch.from_numpy(b.offsets[i]),
            "corners": torch.from_numpy(b.corners[i]),
        }
        if "image_a" in b.extra:
            item["image_a"] = torch.from_numpy(b.extra["image_a"][i])[None]
            item["top_left"] = torch.from_numpy(b.extra["top_left"][i])
        return item
