"""LightningDataModule: training pairs generated on the fly, fixed validation and test pairs.

Images are split by source image (``split_by_image``) into train / val / test. Training pairs
form one endless seeded stream: epoch ``e`` of ``steps_per_epoch`` steps takes pairs
``[e·n, (e+1)·n)`` (n = steps × batch × world size), counted from the optimizer steps already
taken, so a run resumed from a checkpoint continues the stream at the pair where it stopped.
Validation and test pairs are generated once, from their own images and streams, and never
change.

Two training generators share the protocol: ``generator="cpu"`` makes pairs in DataLoader
workers (seeded per pair); ``generator="torch"`` makes whole batches on the training device
(seeded per batch, :mod:`hdreg.data.synthetic.detone_torch`): the DataLoader then carries only batch
indices, and :meth:`SyntheticDataModule.on_after_batch_transfer` turns each into pairs on the
GPU. ``cache_dir`` decodes the source once into a memory-mapped file
(:mod:`hdreg.training.image_cache`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from hdreg.data.benchmarks.synthetic import SyntheticBenchmark, make_synthetic_benchmark
from hdreg.data.benchmarks.wide import make_wide_benchmark
from hdreg.data.decoding import ImageSet, load_images, min_source_side
from hdreg.data.seeding import single_threaded_opencv, worker_init_fn
from hdreg.data.sources import resolve_source
from hdreg.data.splits import split_by_image
from hdreg.data.synthetic.detone import DeToneProtocol, SyntheticPairs
from hdreg.data.synthetic.detone_torch import TorchPairGenerator
from hdreg.data.synthetic.wide import WidePairs
from hdreg.data.synthetic.wide_torch import TorchWideGenerator
from hdreg.training.data_config import DataConfig
from hdreg.training.image_cache import load_cached_images
from hdreg.training.loaders import BatchIndices, FixedPairs, StreamSampler

__all__ = ["SyntheticDataModule"]


class SyntheticDataModule(pl.LightningDataModule):
    """DeTone (or wide-motion) pairs from an image source, split by image.

    Takes one :class:`~hdreg.training.data_config.DataConfig`; Hydra builds it from
    ``hdreg/configs/data/*.yaml``, which hold every value (the protocol's in
    ``hdreg/configs/protocol/``), through :meth:`from_values`.
    """

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config
        self.pairs, self.wide = config.pairs, config.wide
        self.source, self.coco_split = config.source.source, config.source.coco_split
        self.generator, self.cache_dir = config.loader.generator, config.source.cache_dir
        self._torch_generators: dict[torch.device, TorchPairGenerator | TorchWideGenerator] = {}
        self.protocol = config.protocol
        self.split_fractions, self.split_seed = config.split.fractions, config.split.seed
        self.seed = config.seed
        self.batch_size, self.steps_per_epoch = (
            config.loader.batch_size,
            config.loader.steps_per_epoch,
        )
        self.val_pairs, self.test_pairs = config.loader.val_pairs, config.loader.test_pairs
        self.eval_batch_size = config.loader.eval_batch_size
        self.num_workers = config.loader.num_workers
        self.with_full_image, self.flips = config.with_full_image, config.flips
        self.splits: dict[str, ImageSet] = {}
        self._val: SyntheticBenchmark | None = None
        self._test: SyntheticBenchmark | None = None

    @classmethod
    def from_values(cls, **values: Any) -> SyntheticDataModule:
        """From the flat keys of ``hdreg/configs/data/*.yaml`` (the configs' ``_target_``)."""
        return cls(DataConfig.from_values(values))

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
            return DataLoader(BatchIndices(), batch_size=None, sampler=batches)
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
