"""Image sources: the embedded sample photos, any folder of images, the COCO layout.

A source is a list of image files under a root, with the split group of each file.
:func:`hdreg.data.decoding.load_images` decodes them once into 8-bit grayscale arrays of one
size, and :func:`hdreg.data.splits.split_by_image` assigns whole images (or groups of
near-duplicate frames) to train/val/test so that no image feeds two splits.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = [
    "EXTRA_SAMPLE_IMAGES",
    "IMAGE_EXTENSIONS",
    "SAMPLE_IMAGES",
    "ImageSource",
    "all_sample_source",
    "coco_source",
    "folder_source",
    "resolve_source",
    "sample_source",
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
