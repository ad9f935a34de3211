"""Training on a user's own image pairs without ground truth (``data=unlabeled``).

A folder of real views is turned into pairs, each view resized *as a whole image* to P×P:

- a sequence in the HPatches or Oxford layout (``1.ppm, 2.ppm, …`` or ``img1.ppm, …``): the
  reference image with every other image of the sequence, ``(1, k)``; any ``H`` files are ignored;
- any other folder with two or more images (e.g. the frames of a video): consecutive images in
  natural sorted order (``frame2`` before ``frame10``).

A pair is a batch item of the same keys as a synthetic pair without ``offsets``: ``patch_a``,
``patch_b`` ``(1, P, P) uint8``, ``image_a`` (= ``patch_a``: the whole view is the image the
spatial transformer samples), ``corners`` (the view's corners) and ``top_left`` (0, 0), so every
label-free loss (``SequencePhotometric``, ``PhotometricL1``) trains on it unchanged.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hdreg.data.datamodule import SyntheticDataModule
from hdreg.data.pairs import _LAYOUTS
from hdreg.data.sources import IMAGE_EXTENSIONS, ImageSet, ImageSource, load_gray
from hdreg.data.synthetic import STREAMS, pair_rng
from hdreg.geometry_np import rect_corners

__all__ = [
    "UnlabeledDataModule",
    "UnlabeledPair",
    "UnlabeledPairs",
    "find_unlabeled_pairs",
    "load_views",
]

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class UnlabeledPair:
    """Two views of one scene: ``sequence`` (the folder relative to the root), two files."""

    sequence: str
    path_a: Path
    path_b: Path


def _natural_key(path: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(path.name)]


def _layout_sequence(images: list[Path]) -> dict[int, Path] | None:
    """``{index: file}`` when the folder's images follow the HPatches or Oxford layout (an image
    1 and at least one other), else None."""
    for image_pat, _ in _LAYOUTS.values():
        indexed: dict[int, Path] = {}
        for p in images:
            m = image_pat.match(p.stem)
            if m:
                indexed.setdefault(int(m.group(1)), p)
        if 1 in indexed and len(indexed) >= 2:
            return indexed
    return None


def find_unlabeled_pairs(root: str | Path) -> list[UnlabeledPair]:
    """Every pair of views under ``root`` (any depth; hidden files and folders ignored), per
    folder: ``(1, k)`` in an HPatches/Oxford-layout sequence, else consecutive images in natural
    order. Folders are sorted by their path relative to ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"unlabeled-pairs folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"unlabeled-pairs source {root} is not a folder")
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    pairs: list[UnlabeledPair] = []
    for folder in folders:
        rel = folder.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        images = sorted(
            (
                p
                for p in folder.iterdir()
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
            ),
            key=_natural_key,
        )
        name = rel.as_posix() if folder != root else folder.name
        indexed = _layout_sequence(images)
        if indexed is not None:
            ref = indexed[1]
            pairs += [UnlabeledPair(name, ref, indexed[k]) for k in sorted(indexed) if k != 1]
        else:
            pairs += [UnlabeledPair(name, a, b) for a, b in itertools.pairwise(images)]
    if not pairs:
        raise ValueError(
            f"no image pairs under {root}: expected a folder with two or more images (e.g. video "
            "frames), or sequences in the HPatches (1.ppm, 2.ppm, ...) or Oxford (img1.ppm, ...) "
            "layout"
        )
    return pairs


def load_views(
    pairs: list[UnlabeledPair], size: int
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode every file of ``pairs`` once, resized as a whole image to ``size × size``.

    Returns ``views (M, size, size) uint8``, ``index (K, 2) int64`` (the two views of each pair),
    the files (as strings) and each file's sequence.
    """
    files: dict[Path, int] = {}
    sequences: list[str] = []
    for pair in pairs:
        for p in (pair.path_a, pair.path_b):
            if p not in files:
                files[p] = len(files)
                sequences.append(pair.sequence)
    views = np.empty((len(files), size, size), np.uint8)
    for p, i in files.items():
        gray = load_gray(p)
        shrink = gray.shape[0] > size or gray.shape[1] > size
        views[i] = cv2.resize(
            gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    index = np.array([[files[p.path_a], files[p.path_b]] for p in pairs], np.int64)
    return views, index.reshape(-1, 2), [str(p) for p in files], sequences


class UnlabeledPairs(Dataset):
    """Items of pairs of whole views, drawn from a seeded stream (as ``SyntheticPairs``).

    Item ``i`` is pair ``index[k]`` for ``k`` drawn by the item's own generator, or pair ``i``
    itself with ``draw=False`` (a fixed validation set). With ``augment``, each item swaps its two
    views with probability 1/2 and flips both alike (none, left-right, up-down, both).

    Args:
        views: ``(M, P, P) uint8`` decoded views.
        index: ``(K, 2)`` the two views of each pair.
        seed: seed of the stream; ``stream`` one of ``STREAMS``.
        length: number of items.
        draw: draw a random pair per item (training) or take pair ``i`` (validation).
        augment: random swap and flips (training).
    """

    def __init__(
        self,
        views: np.ndarray,
        index: np.ndarray,
        *,
        seed: int,
        length: int,
        stream: str = "train",
        draw: bool = True,
        augment: bool = True,
    ) -> None:
        if views.ndim != 3 or views.dtype != np.uint8 or views.shape[1] != views.shape[2]:
            raise ValueError(f"views must be (M, P, P) uint8, got {views.dtype} {views.shape}")
        if index.ndim != 2 or index.shape[1] != 2 or len(index) == 0:
            raise ValueError(f"index must be a non-empty (K, 2) array, got {index.shape}")
        if not draw and length > len(index):
            raise ValueError(f"length {length} exceeds the {len(index)} pairs")
        self.views, self.index = views, index
        self.seed, self.stream, self.length = int(seed), STREAMS[stream], int(length)
        self.draw, self.augment = draw, augment
        p = views.shape[1]
        self.corners = torch.from_numpy(rect_corners((p, p), (0, 0), np.float32))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range for {self.length}")
        rng = pair_rng(self.seed, self.stream, i)
        k = int(rng.integers(len(self.index))) if self.draw else i
        a, b = self.views[self.index[k, 0]], self.views[self.index[k, 1]]
        if self.augment:
            if rng.random() < 0.5:
                a, b = b, a
            flip = int(rng.integers(4))
            if flip:
                sl = (
                    slice(None, None, -1 if flip & 2 else 1),
                    slice(None, None, -1 if flip & 1 else 1),
                )
                a, b = a[sl], b[sl]
        patch_a = torch.from_numpy(np.ascontiguousarray(a))[None]
        return {
            "patch_a": patch_a,
            "patch_b": torch.from_numpy(np.ascontiguousarray(b))[None],
            "image_a": patch_a,
            "corners": self.corners.clone(),
            "top_left": torch.zeros(2, dtype=torch.int64),
        }


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

    Arguments as :class:`SyntheticDataModule` (``source`` is the folder; ``flips`` also swaps the
    two views at random), plus ``val_real_pairs``: at most this many real validation pairs, and
    ``split_block``: the split keeps each run of this many consecutive images of a sequence
    together (one video then still splits into train, val and test; a pair that straddles two
    splits is used by neither).
    """

    #: items carry no ``offsets``: only a label-free loss can train on them
    has_labels = False

    def __init__(self, *, val_real_pairs: int = 64, split_block: int = 10, **kwargs) -> None:
        if kwargs.get("generator", "cpu") != "cpu":
            raise ValueError(
                f"data=unlabeled makes its pairs in DataLoader workers: generator must be 'cpu', "
                f"got {kwargs['generator']!r}"
            )
        super().__init__(**kwargs)
        if split_block < 1:
            raise ValueError(f"split_block must be >= 1, got {split_block}")
        self.val_real_pairs, self.split_block = int(val_real_pairs), int(split_block)
        self._views: np.ndarray | None = None
        self._train_index = self._val_index = np.zeros((0, 2), np.int64)

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
