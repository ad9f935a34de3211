"""``data=unlabeled``: a DataModule of real pairs without ground truth (the pairs and views of
:mod:`hdreg.data.real.unlabeled`), validated on synthetic pairs of held-out images too."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from hdreg.data.decoding import ImageSet
from hdreg.data.real.unlabeled import UnlabeledPairs, find_unlabeled_pairs, load_views
from hdreg.data.sources import ImageSource
from hdreg.training.data_config import DataConfig
from hdreg.training.datamodule import SyntheticDataModule

__all__ = ["UnlabeledDataConfig", "UnlabeledDataModule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlabeledDataConfig(DataConfig):
    """A :class:`DataConfig` plus the settings of real pairs.

    Attributes:
        val_real_pairs: at most this many real validation pairs (``val/photometric``).
        split_block: the split keeps each run of this many consecutive images of a sequence
            together (one video then still splits into train, val and test; a pair that
            straddles two splits is used by neither).
    """

    val_real_pairs: int
    split_block: int

    def __post_init__(self) -> None:
        if self.loader.generator != "cpu":
            raise ValueError(
                "data=unlabeled makes its pairs in DataLoader workers: generator must be 'cpu', "
                f"got {self.loader.generator!r}"
            )
        super().__post_init__()
        if self.split_block < 1:
            raise ValueError(f"split_block must be >= 1, got {self.split_block}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return (*DataConfig.keys(), "val_real_pairs", "split_block")

    @classmethod
    def from_values(cls, values: Any) -> UnlabeledDataConfig:
        v = cls._checked(values)
        return cls(
            **cls._groups(v),
            val_real_pairs=int(v["val_real_pairs"]),
            split_block=int(v["split_block"]),
        )


class UnlabeledDataModule(SyntheticDataModule):
    """``data=unlabeled``: train on real pairs of a folder without ground truth.

    The folder's images are split into train / val / test by blocks of ``split_block``
    consecutive images of each sequence. Training pairs are the real pairs
    (:func:`find_unlabeled_pairs`) whose two views are training images. Validation has two
    parts: ``val/mace`` on synthetic DeTone pairs made from the validation images (labels the
    data module makes itself, so checkpoints are still chosen by corner error), and
    ``val/photometric``, the model's own loss on the real pairs whose two views are validation
    images (no labels). The test split is synthetic pairs of the test images; score real pairs
    with ground truth with ``evaluate.py benchmark=pairs``.

    Takes an :class:`UnlabeledDataConfig` (``source`` is the folder; ``flips`` also swaps the
    two views at random).
    """

    #: items carry no ``offsets``: only a label-free loss can train on them
    has_labels = False

    def __init__(self, config: UnlabeledDataConfig) -> None:
        super().__init__(config)
        self.val_real_pairs, self.split_block = config.val_real_pairs, config.split_block
        self._views: np.ndarray | None = None
        self._train_index = self._val_index = np.zeros((0, 2), np.int64)

    @classmethod
    def from_values(cls, **values: Any) -> UnlabeledDataModule:
        """From the flat keys of ``hdreg/configs/data/unlabeled.yaml`` (its ``_target_``)."""
        return cls(UnlabeledDataConfig.from_values(values))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        root = Path(str(self.source)).expanduser()
        pairs = find_unlabeled_pairs(root)
        views, index, files, sequences = load_views(pairs, self.protocol.patch_size)
        # Split groups: blocks of split_block consecutive images of a sequence, so that one
        # video can feed train, val and test while neighbouring frames stay together.
        groups, seen = [], dict.fromkeys(sequences, 0)
        for seq in sequences:
            groups.append(f"{seq}#{seen[seq] // self.split_block}")
            seen[seq] += 1
        rel = [Path(f).relative_to(root).as_posix() for f in files]
        self._split(self._load(ImageSource(root, tuple(rel), "folder", tuple(groups))))
        split_of = {
            name: k
            for k, part in enumerate(("train", "val", "test"))
            if k == 0 or self.splits[part] is not self.splits["train"]  # none held out
            for name in self.splits[part].names
        }
        # views too small for synthetic pairs are in no split: they still make training pairs
        both = np.array([split_of.get(name, 0) for name in rel])[index]
        self._views = views
        self._train_index = index[(both == 0).all(axis=1)]
        held_out = self.splits["val"] is not self.splits["train"]
        self._val_index = index[(both == (1 if held_out else 0)).all(axis=1)][: self.val_real_pairs]
        if len(self._train_index) == 0:
            raise ValueError(
                f"none of the {len(index)} pairs under {root} has both views in the training "
                "split: add images or change data.split_fractions"
            )

    def _empty_split(self, part: str) -> ImageSet:
        # Adapting to a set of pairs itself (data.split_fractions=[1,0,0], the setting of UDIS2's
        # fine-tuning): no image is held out, so validation and test use the training images.
        log.warning(
            "data.split_fractions=%s holds out no %s images: %s uses the training images "
            "(adaptation to the folder itself; its scores are not held-out scores)",
            list(self.split_fractions), part, part,
        )  # fmt: skip
        return self.splits["train"]

    def train_dataset(self) -> UnlabeledPairs:
        assert self._views is not None
        return UnlabeledPairs(
            self._views, self._train_index, seed=self.seed, length=np.iinfo(np.int64).max // 2,
            stream="train", draw=True, augment=self.flips,
        )  # fmt: skip

    @property
    def pair_counts(self) -> dict[str, int]:
        """Real pairs used for training and for ``val/photometric``."""
        self.setup()
        return {"train": len(self._train_index), "val": len(self._val_index)}

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        synthetic = super().val_dataloader()
        if len(self._val_index) == 0:
            return synthetic
        assert self._views is not None
        real = UnlabeledPairs(
            self._views, self._val_index, seed=self.seed, length=len(self._val_index),
            stream="val", draw=False, augment=False,
        )  # fmt: skip
        return [synthetic, DataLoader(real, batch_size=self.eval_batch_size, shuffle=False)]
