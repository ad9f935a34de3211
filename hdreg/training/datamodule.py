"""LightningDataModule: training pairs generated on the fly, fixed validation and test pairs.

Images are split by source image (``split_by_image``) into train / val / test. Training pairs
form one endless seeded stream: epoch ``e`` of ``steps_per_epoch`` steps takes pairs
``[e·n, (e+1)·n)`` (n = steps × batch × world size), counted from the optimizer steps already
taken, so a run resumed from a checkpoint continues the stream at the pair where it stopped.
Validation and test pairs are generated once, from their own images and streams, and never
change.

Two training generators share the protocol: ``generator="cpu"`` makes pairs in DataLoader
workers (seeded per pair); ``generator="torch"`` makes whole batches on the training device
(seeded per batch, :mod:`hdreg.data.torch_generator`): the DataLoader then carries only batch
indices, and :meth:`SyntheticDataModule.on_after_batch_transfer` turns each into pairs on the
GPU. ``cache_dir`` decodes the source once into a memory-mapped file (:mod:`hdreg.data.cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hdreg.data.benchmark import SyntheticBenchmark, make_synthetic_benchmark
from hdreg.data.cache import load_cached_images
from hdreg.data.sources import (
    ImageSet,
    load_images,
    min_source_side,
    resolve_source,
    split_by_image,
)
from hdreg.data.synthetic import (
    DeToneProtocol,
    PhotometricJitter,
    SyntheticPairs,
    single_threaded_opencv,
    worker_init_fn,
)
from hdreg.data.torch_generator import TorchPairGenerator
from hdreg.data.torch_wide import TorchWideGenerator
from hdreg.data.wide import WidePairs, WideProtocol

__all__ = ["FixedPairs", "StreamSampler", "SyntheticDataModule", "make_wide_benchmark"]

PAIR_KINDS = ("detone", "wide")


def make_wide_benchmark(
    images: ImageSet,
    n: int,
    seed: int,
    patch_size: int,
    protocol: WideProtocol,
    *,
    stream: str = "benchmark",
) -> SyntheticBenchmark:
    """``n`` fixed square wide-motion pairs (:class:`hdreg.data.wide.WidePairs`) in the synthetic
    benchmark format; ``rho`` holds the largest corner offset (the format's range field)."""
    if n < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {n}")
    ds = WidePairs(images.images, patch_size, protocol, seed=seed, length=n, stream=stream)
    p = int(patch_size)
    patch_a = np.empty((n, p, p), np.uint8)
    patch_b = np.empty((n, p, p), np.uint8)
    offsets = np.empty((n, 4, 2), np.float32)
    corners = np.empty((n, 4, 2), np.float32)
    sources = []
    for i in range(n):
        k, pair = ds.pair(i)
        patch_a[i], patch_b[i] = pair["patch_a"], pair["patch_b"]
        offsets[i], corners[i] = pair["offsets"], pair["corners"]
        sources.append(images.names[k])
    return SyntheticBenchmark(
        patch_a, patch_b, offsets, corners, np.array(sources, dtype=str),
        rho=float(np.abs(offsets).max()), patch_size=p, seed=int(seed),
        image_size=images.image_size, extra={"protocol": np.array("wide")},
    )  # fmt: skip


class _BatchIndices(Dataset):
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


class SyntheticDataModule(pl.LightningDataModule):
    """DeTone pairs from an image source, split by image.

    Built from ``hdreg/configs/data/*.yaml``, which hold every default (the protocol's in
    ``hdreg/configs/protocol/detone.yaml``); the arguments are keyword-only.

    Args:
        source: ``"samples"`` (scikit-image's photos), ``"samples-all"`` (those and the
            public-domain photos of other required packages), a folder, or a COCO root.
        coco_split: for a COCO root, the folder the train/val/test images come from (``train``
            uses the COCO train images; the split below still holds out val and test images).
        image_size, patch_size, rho: the pair protocol (``DeToneProtocol``).
        jitter: photometric jitter of the *training* pairs (false, true or a mapping, see
            :meth:`PhotometricJitter.from_spec`); validation and test pairs are never jittered.
        split_fractions, split_seed: shares of images (groups) for train / val / test.
        seed: seed of the pair streams.
        batch_size: training batch size per process.
        steps_per_epoch: optimizer steps per epoch; validation and ``last.ckpt`` come at the end
            of each.
        val_pairs, test_pairs: sizes of the fixed sets.
        eval_batch_size: batch size for validation and test.
        num_workers: DataLoader worker processes for training pairs.
        with_full_image: also deliver each pair's full image A (the unsupervised model warps it).
        flips: flip training source images at random (see :class:`SyntheticPairs`).
        pairs: ``"detone"`` (DeTone pairs, the protocol above) or ``"wide"`` (wide-motion pairs
            of :mod:`hdreg.data.wide`: both views rendered into ``patch_size`` squares from the
            images of ``image_size``; validation and test pairs are wide pairs too, with the
            same photometric augmentation).
        wide: the wide-pair parameters (``hdreg/configs/protocol/wide.yaml``), used with
            ``pairs="wide"``.
        generator: ``"cpu"`` (DataLoader workers) or ``"torch"`` (batches made on the training
            device; the training images are copied there once).
        cache_dir: decode and resize the source once into a memory-mapped file in this folder
            and reuse it in later runs (None: decode in memory at every start).
    """

    def __init__(
        self,
        *,
        source: str,
        coco_split: str,
        image_size: tuple[int, int],
        patch_size: int,
        rho: float,
        jitter: bool | dict[str, float] | None,
        split_fractions: tuple[float, float, float],
        split_seed: int,
        seed: int,
        batch_size: int,
        steps_per_epoch: int,
        val_pairs: int,
        test_pairs: int,
        eval_batch_size: int,
        num_workers: int,
        with_full_image: bool = False,
        flips: bool = False,
        generator: str = "cpu",
        cache_dir: str | None = None,
        pairs: str = "detone",
        wide: dict | None = None,
    ) -> None:
        super().__init__()
        if generator not in ("cpu", "torch"):
            raise ValueError(f"generator must be 'cpu' or 'torch', got {generator!r}")
        if pairs not in PAIR_KINDS:
            raise ValueError(f"data.pairs must be one of {', '.join(PAIR_KINDS)}, got {pairs!r}")
        if pairs == "wide" and wide is None:
            raise ValueError("data.pairs=wide needs data.wide (hdreg/configs/protocol/wide.yaml)")
        if pairs == "wide" and with_full_image:
            raise ValueError("data.pairs=wide has no full image A: set data.with_full_image=false")
        self.pairs = pairs
        self.wide = WideProtocol.from_mapping(dict(wide)) if pairs == "wide" else None
        self.generator, self.cache_dir = generator, cache_dir
        self._torch_generators: dict[torch.device, TorchPairGenerator | TorchWideGenerator] = {}
        self.source, self.coco_split = source, coco_split
        self.protocol = DeToneProtocol(
            tuple(image_size),
            int(patch_size),
            float(rho),
            PhotometricJitter.from_spec(jitter),
        )
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.split_seed, self.seed = int(split_seed), int(seed)
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}"
            )
        self.batch_size, self.steps_per_epoch = int(batch_size), int(steps_per_epoch)
        self.val_pairs, self.test_pairs = int(val_pairs), int(test_pairs)
        self.eval_batch_size, self.num_workers = int(eval_batch_size), int(num_workers)
        self.with_full_image = with_full_image
        self.flips = flips
        self.splits: dict[str, ImageSet] = {}
        self._val: SyntheticBenchmark | None = None
        self._test: SyntheticBenchmark | None = None

    # -- data ----------------------------------------------------------------------------------
    def _load(self, source) -> ImageSet:
        # Images too small for a patch and its margin are skipped (and counted in the warning).
        min_side = min_source_side(self.protocol.patch_size, self.protocol.rho)
        if self.cache_dir:
            # lazy: a memory map that pickles by path (spawned workers, DDP) and subsets
            # without copying; rows come out as ordinary arrays
            return load_cached_images(
                source, self.protocol.image_size, self.cache_dir, lazy=True, min_side=min_side
            )
        return load_images(source, self.protocol.image_size, min_side=min_side)

    def prepare_data(self) -> None:
        """Build the image cache once (Lightning calls this on one process per node)."""
        if self.cache_dir:
            self._load(resolve_source(self.source, coco_split=self.coco_split))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self._split(self._load(resolve_source(self.source, coco_split=self.coco_split)))

    def _split(self, images: ImageSet) -> None:
        """Split ``images`` by group into train / val / test and make the fixed val and test
        pairs."""
        eval_protocol = DeToneProtocol(
            self.protocol.image_size, self.protocol.patch_size, self.protocol.rho
        )
        train, val, test = split_by_image(images.groups, self.split_fractions, self.split_seed)
        self.splits = {
            "train": images.subset(train),
            "val": images.subset(val),
            "test": images.subset(test),
        }
        for part in ("val", "test"):
            if len(self.splits[part].images) == 0:
                self.splits[part] = self._empty_split(part)
        if self.wide is not None:
            p = self.protocol.patch_size
            self._val = make_wide_benchmark(
                self.splits["val"], self.val_pairs, self.seed, p, self.wide, stream="val"
            )
            self._test = make_wide_benchmark(
                self.splits["test"], self.test_pairs, self.seed, p, self.wide, stream="test"
            )
            return
        self._val = make_synthetic_benchmark(
            self.splits["val"], self.val_pairs, self.seed, eval_protocol,
            stream="val", full_images=self.with_full_image,
        )  # fmt: skip
        self._test = make_synthetic_benchmark(
            self.splits["test"], self.test_pairs, self.seed, eval_protocol, stream="test"
        )

    def _empty_split(self, part: str) -> ImageSet:
        """What to use when ``data.split_fractions`` leaves no ``part`` images."""
        raise ValueError(
            f"data.split_fractions={list(self.split_fractions)} leaves no {part} images: give "
            f"the {part} split a positive share"
        )

    @property
    def val_benchmark(self) -> SyntheticBenchmark:
        if self._val is None:
            self.setup()
        assert self._val is not None
        return self._val

    @property
    def test_benchmark(self) -> SyntheticBenchmark:
        """The fixed test pairs (held-out images), for the end-of-training evaluation."""
        if self._test is None:
            self.setup()
        assert self._test is not None
        return self._test

    def train_dataset(self) -> SyntheticPairs | WidePairs:
        if self.wide is not None:
            return WidePairs(
                self.splits["train"].images, self.protocol.patch_size, self.wide,
                seed=self.seed, length=np.iinfo(np.int64).max // 2, stream="train",
                flips=self.flips,
            )  # fmt: skip
        return SyntheticPairs(
            self.splits["train"].images, self.protocol, seed=self.seed,
            length=np.iinfo(np.int64).max // 2, stream="train",
            with_full_image=self.with_full_image, flips=self.flips,
        )  # fmt: skip

    # -- loaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if self.generator == "torch":
            # Batch indices only: each becomes a batch of pairs on the device after transfer.
            batches = StreamSampler(self.steps_per_epoch, 0, 1, position=self._batches_done)
            return DataLoader(_BatchIndices(), batch_size=None, sampler=batches)
        sampler = StreamSampler(
            self.steps_per_epoch * self.batch_size * world, rank, world,
            position=lambda: self._batches_done() * self.batch_size * world,
        )  # fmt: skip
        if self.num_workers > 0:
            single_threaded_opencv()  # before the workers fork (see its docstring)
        return DataLoader(
            self.train_dataset(),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_fn,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )

    def _batches_done(self) -> int:
        """Training batches (per process) consumed so far: optimizer steps × accumulation."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.global_step) * int(trainer.accumulate_grad_batches)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``generator="torch"``: a training batch index, now on the device, becomes a
        batch of pairs generated there."""
        if not (isinstance(batch, torch.Tensor) and batch.ndim == 0):
            return batch
        device = batch.device
        if device not in self._torch_generators:
            images = torch.from_numpy(np.ascontiguousarray(self.splits["train"].images))
            self._torch_generators[device] = (
                TorchWideGenerator(
                    images.to(device), self.protocol.patch_size, self.wide, self.seed,
                    flips=self.flips,
                )
                if self.wide is not None
                else TorchPairGenerator(
                    images.to(device), self.protocol, self.seed,
                    flips=self.flips, with_full_image=self.with_full_image,
                )
            )  # fmt: skip
        rank = self.trainer.global_rank if self.trainer else 0
        return self._torch_generators[device].generate(self.batch_size, int(batch), rank=rank)

    def _fixed_loader(self, bench: SyntheticBenchmark) -> DataLoader:
        return DataLoader(FixedPairs(bench), batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val_benchmark)

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test_benchmark)
