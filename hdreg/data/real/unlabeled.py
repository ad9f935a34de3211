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
from torch.utils.data import Dataset

from hdreg.data.decoding import load_gray
from hdreg.data.real.pairs import _LAYOUTS
from hdreg.data.seeding import STREAMS, pair_rng
from hdreg.data.sources import IMAGE_EXTENSIONS
from hdreg.geometry_np import rect_corners

__all__ = [
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
