"""Image sources: the embedded sample photos, any folder of images, the COCO layout.

A source is a list of image files under a root. :func:`load_images` decodes them once into 8-bit
grayscale arrays of one size (DeTone's 320×240 by default), skipping unusable files with a
single warning, and :func:`split_by_image` assigns whole images (or groups of near-duplicate
frames) to train/val/test so that no image feeds two splits.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "EXTRA_SAMPLE_IMAGES",
    "IMAGE_EXTENSIONS",
    "SAMPLE_IMAGES",
    "ImageSet",
    "ImageSource",
    "all_sample_source",
    "check_image_size",
    "coco_source",
    "decode_resized",
    "folder_source",
    "images_of_split",
    "load_gray",
    "load_images",
    "min_source_side",
    "no_usable_image",
    "resolve_source",
    "sample_source",
    "split_by_image",
    "warn_skipped",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

# Natural photographs bundled with scikit-image (no download). Synthetic drawings (chessboard,
# logo, phantom, horse silhouette) and tiny images are left out: they teach nothing about real
# texture. Names map to a group so that the stereo pair of motorcycles stays in one split.
SAMPLE_IMAGES: dict[str, str] = {
    "astronaut.png": "astronaut",
    "brick.png": "brick",
    "camera.png": "camera",
    "cell.png": "cell",
    "chelsea.png": "chelsea",
    "clock_motion.png": "clock_motion",
    "coffee.png": "coffee",
    "coins.png": "coins",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "ihc.png": "ihc",
    "moon.png": "moon",
    "motorcycle_left.png": "motorcycle",
    "motorcycle_right.png": "motorcycle",
    "page.png": "page",
    "retina.jpg": "retina",
    "rocket.jpg": "rocket",
    "text.png": "text",
}

# Public-domain photos shipped in other required packages, by package and path inside it, with
# their split group: ``"samples-all"`` adds them to scikit-image's photos (``"samples"`` stays
# as it is). Grace Hopper's portrait is a U.S. Navy photograph (public domain).
EXTRA_SAMPLE_IMAGES: dict[str, dict[str, str]] = {
    "matplotlib": {"mpl-data/sample_data/grace_hopper.jpg": "grace_hopper"},
}

COCO_SPLITS = {"train": ("train2017", "train2014"), "val": ("val2017", "val2014")}

# Default grouping of folder images: only names that say they are video frames ("frame" and a
# number at the end) are grouped, by what comes before, so that scene0711_00_frame-001680.jpg and
# scene0711_00_frame-001995.jpg land in the same split (and seq/frame_0001.png with all frames of
# its folder). Camera names with a running number (IMG_0001.jpg, DSC01234.JPG) are independent
# photos: each is its own group.
_FRAME_SUFFIX = re.compile(r"[-_. ]*frame[-_. ]*\d+$", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"[-_]*\d+$")


@dataclass(frozen=True)
class ImageSource:
    """Image files under ``root``: ``files`` are paths relative to it (sorted, POSIX style)."""

    root: Path
    files: tuple[str, ...]
    kind: str  # "samples", "folder" or "coco"
    groups: tuple[str, ...] | None = None  # split group of each file (default: frame heuristic)

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}"
            )

    def group_of(self, index: int) -> str:
        if self.groups is not None:
            return self.groups[index]
        return self._default_groups[index]

    @cached_property
    def _default_groups(self) -> tuple[str, ...]:
        """Frames (``<scene>_frame-<n>``) grouped by scene; every other file its own group.

        A group's name only seeds the order of the split. A photo whose name is unique once a
        trailing number is removed keeps that shortened name, the one earlier versions used, so
        that existing splits do not move; names that would collide (IMG_0001, IMG_0002) use the
        whole stem."""
        paths = [Path(f) for f in self.files]
        short = [str(p.parent / (_TRAILING_NUMBER.sub("", p.stem) or p.stem)) for p in paths]
        counts = Counter(short)
        out = []
        for p, name in zip(paths, short, strict=True):
            if _FRAME_SUFFIX.search(p.stem):
                out.append(str(p.parent / _FRAME_SUFFIX.sub("", p.stem)))
            else:
                out.append(name if counts[name] == 1 else str(p.parent / p.stem))
        return tuple(out)


def sample_source() -> ImageSource:
    """The embedded default: natural photos shipped inside the installed scikit-image package."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    present = [n for n in SAMPLE_IMAGES if (root / n).is_file()]
    if not present:
        raise FileNotFoundError(
            f"scikit-image's bundled sample photos are missing from {root}; reinstall scikit-image"
        )
    return ImageSource(root, tuple(present), "samples", tuple(SAMPLE_IMAGES[n] for n in present))


def all_sample_source() -> ImageSource:
    """scikit-image's photos and the public-domain photos of ``EXTRA_SAMPLE_IMAGES``, under the
    folder that holds both packages (names like ``skimage/data/astronaut.png``)."""
    import importlib

    base = sample_source()
    entries: list[tuple[Path, str]] = [
        (base.root / f, g) for f, g in zip(base.files, base.groups or (), strict=True)
    ]
    for package, images in EXTRA_SAMPLE_IMAGES.items():
        root = Path(importlib.import_module(package).__file__).parent
        entries += [(root / f, g) for f, g in images.items() if (root / f).is_file()]
    common = Path(os.path.commonpath([str(p.parent) for p, _ in entries]))
    files = tuple(p.relative_to(common).as_posix() for p, _ in entries)
    return ImageSource(common, files, "samples", tuple(g for _, g in entries))


def folder_source(root: str | Path) -> ImageSource:
    """Every image file found under ``root`` at any depth (extensions in ``IMAGE_EXTENSIONS``,
    any case). Hidden files and folders are ignored."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image source {root} is not a folder")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    return ImageSource(root, tuple(files), "folder")


def coco_source(root: str | Path, split: str = "train") -> ImageSource:
    """The COCO layout: ``root/train2017`` or ``root/train2014`` (``split="train"``), and the
    ``val`` counterparts. Each COCO image is its own split group."""
    root = Path(root).expanduser()
    if split not in COCO_SPLITS:
        raise ValueError(f"COCO split must be one of {sorted(COCO_SPLITS)}, got {split!r}")
    for name in COCO_SPLITS[split]:
        if (root / name).is_dir():
            src = folder_source(root / name)
            return ImageSource(src.root, src.files, "coco", src.files)
    raise FileNotFoundError(
        f"{root} has no COCO {split} folder (looked for {' or '.join(COCO_SPLITS[split])})"
    )


def is_coco_root(root: str | Path) -> bool:
    root = Path(root).expanduser()
    return any((root / n).is_dir() for names in COCO_SPLITS.values() for n in names)


def resolve_source(spec: str | Path, *, coco_split: str = "train") -> ImageSource:
    """``"samples"`` → the embedded photos; ``"samples-all"`` → those and the public-domain photos
    of other required packages (:func:`all_sample_source`); a COCO root → :func:`coco_source`;
    else a folder."""
    if str(spec) == "samples":
        return sample_source()
    if str(spec) == "samples-all":
        return all_sample_source()
    if is_coco_root(spec):
        return coco_source(spec, coco_split)
    return folder_source(spec)


def _to_gray_u8(img: Image.Image) -> np.ndarray:
    """8-bit grayscale array from any PIL mode (palette, RGB(A), 16-bit, 32-bit int, float)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite over white: transparent areas of a logo or icon become background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def load_gray(path: str | Path) -> np.ndarray:
    """Decode one image file into an 8-bit grayscale ``(H, W)`` array.

    RGB, RGBA, palette, 16-bit and grayscale files are all accepted; the EXIF orientation of a
    camera photo is applied. Raises ``ValueError`` naming the file if it is not a decodable image
    (truncated files included).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image file {path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: raises on truncated data
            img = ImageOps.exif_transpose(img)
            gray = _to_gray_u8(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"image {path} has unusable size {gray.shape}")
    return gray


@dataclass
class ImageSet:
    """Decoded grayscale images of one size.

    ``images (N, H, W) uint8``; ``names`` the files relative to ``root``; ``groups`` their split
    groups (images of one group always share a split).
    """

    images: np.ndarray
    names: list[str]
    groups: list[str]
    root: Path

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = list(indices)
        return ImageSet(
            self.images[idx], [self.names[i] for i in idx], [self.groups[i] for i in idx], self.root
        )


def resize_gray(gray: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Resize to ``image_size = (width, height)`` (area averaging when shrinking)."""
    w, h = image_size
    if gray.shape == (h, w):
        return gray
    shrink = gray.shape[0] > h or gray.shape[1] > w
    return cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` as ints, or ``ValueError`` unless both are at least 2 pixels."""
    w, h = image_size
    if w < 2 or h < 2:
        raise ValueError(
            f"image_size must be (width, height) of at least 2 pixels, got {image_size}"
        )
    return int(w), int(h)


def decode_resized(path: str | Path, image_size: tuple[int, int], min_side: int = 0) -> np.ndarray:
    """:func:`load_gray` then :func:`resize_gray`; ``ValueError`` naming the file when its shorter
    side is under ``min_side`` pixels (it would only be upscaled into blur)."""
    gray = load_gray(path)
    if min(gray.shape) < min_side:
        raise ValueError(
            f"image {path} is {gray.shape[1]}x{gray.shape[0]}: too small, pairs need a shorter "
            f"side of at least {min_side} px (the patch plus its margin)"
        )
    return resize_gray(gray, image_size)


def warn_skipped(source: ImageSource, skipped: Sequence[str], *, stacklevel: int = 2) -> None:
    """The one ``UserWarning`` that names (the first 20 of) a source's unreadable or too small
    files and counts them; ``stacklevel`` as in :func:`warnings.warn`, counted from the caller."""
    shown = "; ".join(skipped[:20]) + ("; ..." if len(skipped) > 20 else "")
    warnings.warn(
        f"skipped {len(skipped)} of {len(source.files)} files under {source.root} that are not "
        f"readable images or are too small: {shown}",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def no_usable_image(source: ImageSource) -> ValueError:
    """The error for a source none of whose files decodes."""
    return ValueError(
        f"no usable image under {source.root}: all {len(source.files)} candidate files failed "
        "to decode or are too small"
    )


def load_images(
    source: ImageSource,
    image_size: tuple[int, int] = (320, 240),
    *,
    warn: bool = True,
    min_side: int = 0,
) -> ImageSet:
    """Decode every file of ``source`` to grayscale and resize it to ``(width, height)``.

    Files that cannot be decoded, and images whose shorter side is under ``min_side`` pixels
    (pair sources pass :func:`min_source_side`), are skipped; one ``UserWarning`` names them and
    says how many. Raises ``ValueError`` naming the root when no usable image remains.
    """
    image_size = check_image_size(image_size)
    images: list[np.ndarray] = []
    names: list[str] = []
    groups: list[str] = []
    bad: list[str] = []
    for i, rel in enumerate(source.files):
        try:
            resized = decode_resized(source.root / rel, image_size, min_side)
        except ValueError as exc:
            bad.append(f"{rel} ({exc.__cause__ or exc})")
            continue
        images.append(resized)
        names.append(rel)
        groups.append(source.group_of(i))
    if bad and warn:
        warn_skipped(source, bad, stacklevel=2)
    if not images:
        raise no_usable_image(source)
    return ImageSet(np.stack(images), names, groups, source.root)


def min_source_side(patch_size: int, rho: float) -> int:
    """The smallest shorter side (pixels) a source image needs for pairs of ``patch_size`` with
    corner perturbation ``rho``: the patch plus one margin of ``rho``. Smaller images (icons,
    thumbnails) would be upscaled into blur, and are skipped."""
    return int(patch_size + math.ceil(rho))


def split_by_image(
    groups: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Assign image indices to (train, val, test) so that a group never spans two splits.

    Groups are ordered by a seeded hash (stable across Python runs and platforms) and cut by
    cumulative share of images. Every split with a positive fraction gets at least one group when
    there are enough groups.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    unique = sorted(set(groups))
    unique.sort(key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    wanted = [k for k in range(3) if fr[k] > 0]
    if len(unique) < len(wanted):
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        raise ValueError(
            f"cannot split {len(unique)} image group(s) ({shown}; {len(groups)} images) into "
            f"{len(wanted)} non-empty splits (frames named '<scene>_frame-<n>' share a group); "
            "use more images or set a split fraction to 0"
        )
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    n = len(groups)
    # Small splits (val, test) are filled first from the end of the order, then train gets the rest.
    assign: dict[str, int] = {}
    order = list(unique)
    for k in (2, 1):
        if fr[k] <= 0:
            continue
        target = fr[k] * n
        taken = 0
        while order and (taken == 0 or taken + counts[order[-1]] <= target + 0.5):
            if len(order) <= sum(1 for j in range(k) if fr[j] > 0):
                break  # leave at least one group for each remaining split
            g = order.pop()
            assign[g] = k
            taken += counts[g]
    for g in order:
        assign[g] = 0 if fr[0] > 0 else (1 if fr[1] > 0 else 2)
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, g in enumerate(groups):
        out[assign[g]].append(i)
    return out


#: the splits of :func:`split_by_image`, in the order of its fractions
SPLITS = ("train", "val", "test")


def images_of_split(
    images: ImageSet,
    split: str,
    fractions: Sequence[float],
    seed: int,
    *,
    options: tuple[str, str] = ("--split", "--split-fractions"),
) -> ImageSet:
    """The images of ``split`` (train, val or test) of :func:`split_by_image`. ``ValueError``
    naming the split and the ``options`` that set the split and the fractions (``--split``,
    ``--split-fractions``, or ``benchmark.split``, ``benchmark.split_fractions``) when
    ``fractions`` give the split no share, so that it would hold no image."""
    split_option, fractions_option = options
    if split not in SPLITS:
        raise ValueError(f"{split_option} must be all, train, val or test, got {split!r}")
    fractions = tuple(float(f) for f in fractions)
    idx = split_by_image(images.groups, fractions, seed)  # refuses fractions that are no split
    k = SPLITS.index(split)
    if fractions[k] <= 0:
        if fractions_option.startswith("--"):
            given = f"{fractions_option} {' '.join(f'{f:g}' for f in fractions)}"
        else:
            given = f"{fractions_option}=[{', '.join(f'{f:g}' for f in fractions)}]"
        raise ValueError(
            f"split {split!r} has fraction 0 in {given} (train, val, test), so it holds no "
            f"images: give {split} a positive share there, or choose another {split_option}"
        )
    return images.subset(idx[k])
