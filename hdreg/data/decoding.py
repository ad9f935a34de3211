"""Decoding image files: one file into 8-bit grayscale (:func:`load_gray`, by the one rule of
:mod:`hdreg.images`), a whole source into images of one size (:func:`load_images`), skipping
unusable files with a single warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from hdreg.data.sources import ImageSource
from hdreg.images import to_gray_u8

__all__ = [
    "ImageSet",
    "check_image_size",
    "decode_resized",
    "load_gray",
    "load_images",
    "min_source_side",
    "no_usable_image",
    "resize_gray",
    "warn_skipped",
]


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
            gray = to_gray_u8(img, "the image", min_side=1)  # the one rule of hdreg.images
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
