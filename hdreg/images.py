"""The one rule that turns an image a user holds into what hdreg's estimators take.

Estimators take ``(H, W) uint8`` grayscale arrays (docs/conventions.md, "Image input").
:func:`to_gray_u8` converts one image, :func:`gray_pair` the two images of a pair:

- ``uint8``: as it is;
- ``uint16``: divided by ``2^k − 1`` and multiplied by 255, for the smallest bit depth
  ``k ∈ 8..16`` whose ``2^k − 1`` covers the largest colour value (:func:`bit_depth`): 12-bit
  data (0..4095) and full-range 16-bit data both fill 0..255. The two images of a pair share
  the depth of the larger maximum of the two, so that their brightness keeps its relation (ECC
  and the learned models compare intensities);
- float: values in [0, 1] (a rounding tolerance of ``FLOAT_TOLERANCE`` is clipped away); anything
  else is refused, naming the range found;
- gray ``(H, W)`` or ``(H, W, 1)``, BGR ``(H, W, 3)``, BGRA ``(H, W, 4)``, as OpenCV reads
  them; a PIL image of any mode (16-bit and float modes by the rules above);
- transparency (BGRA, PIL ``RGBA``/``LA``/``PA``, a palette with a transparent colour) is
  composited over white, what image viewers show: an 8-bit image exactly as PIL's
  ``alpha_composite`` and ``convert("L")`` do, so that an RGBA file read by
  :func:`hdreg.data.decoding.load_gray` and the same pixels passed as a BGRA array give one gray
  image; ``uint16`` and float images in floating point, alpha a share of its dtype's range.

Example:
    >>> import numpy as np
    >>> twelve_bit = np.array([[0, 2048, 4095]] * 8, np.uint16).repeat(3, axis=1)
    >>> to_gray_u8(twelve_bit)[0, ::3].tolist()
    [0, 128, 255]
    >>> to_gray_u8(np.full((8, 8), 255.0), "image_a")
    Traceback (most recent call last):
    ...
    ValueError: image_a is float with values up to 255: expected [0, 1]; divide by 255 or pass uint8
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "FLOAT_TOLERANCE",
    "MIN_SIDE",
    "bit_depth",
    "gray_pair",
    "resize_area",
    "size_of",
    "to_gray_u8",
]

#: how far outside [0, 1] a float image may stray (rounding) before it is refused
FLOAT_TOLERANCE = 1e-3
#: the smallest width and height an estimator is given
MIN_SIDE = 8

_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_ALPHA = ("RGBA", "LA", "PA")


def bit_depth(top: int) -> int:
    """The smallest ``k ∈ 8..16`` with ``2^k − 1 >= top``: the bit depth of ``uint16`` data
    whose largest value is ``top``, the depth it is scaled from.

    >>> bit_depth(4095), bit_depth(4096), bit_depth(300), bit_depth(0), bit_depth(65535)
    (12, 13, 9, 8, 16)
    """
    return min(max(8, int(top).bit_length()), 16)


def _array(image: Any, name: str) -> np.ndarray:
    """``image`` as a numpy array (a PIL image by its mode: 16-bit modes as uint16, ``F`` as
    float32, 32-bit ``I`` as uint16 when its values fit, anything else through ``L``)."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        if image.mode in _PIL_16BIT:
            return np.asarray(image).astype(np.uint16)
        if image.mode == "F":
            return np.asarray(image, dtype=np.float32)
        if image.mode == "I":
            x = np.asarray(image)
            if x.size and (x.min() < 0 or x.max() > 65535):
                raise ValueError(
                    f"{name} is a PIL image of mode I with values from {x.min()} to {x.max()}: "
                    "expected 0..65535"
                )
            return x.astype(np.uint16)
        return _pil_gray(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or a PIL image, got {type(image).__name__}")
    return image


def _pil_gray(image: Image.Image) -> np.ndarray:
    """An 8-bit PIL image (any mode but the 16-bit, ``I`` and ``F`` ones) as ``(H, W) uint8``,
    transparency composited over white."""
    if image.mode in _PIL_ALPHA or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _check_float_range(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf): expected floats in [0, 1]")
    low, high = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if high > 1.0 + FLOAT_TOLERANCE:
        raise ValueError(
            f"{name} is float with values up to {high:g}: expected [0, 1]; divide by 255 or "
            "pass uint8"
        )
    if low < -FLOAT_TOLERANCE:
        raise ValueError(f"{name} is float with values down to {low:g}: expected [0, 1]")


def _gray(image: Any, name: str, min_side: int = MIN_SIDE) -> tuple[np.ndarray, int, Any]:
    """``(H, W)`` grayscale of the input's own dtype (uint8, uint16 or float32), checked; its
    largest colour value (alpha left out) for :func:`bit_depth`; and the alpha of a ``uint16``
    or float BGRA image as a float32 share in [0, 1] (None otherwise: an 8-bit BGRA image is
    composited here, as a PIL ``RGBA`` image)."""
    import cv2

    x = _array(image, name)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (3, 4)):
        raise ValueError(f"{name} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {x.shape}")
    colour = x[:, :, :3] if x.ndim == 3 else x  # alpha left out
    if np.issubdtype(x.dtype, np.floating):
        _check_float_range(colour, name)
        x = x.astype(np.float32, copy=False)  # what cv2.cvtColor takes
    elif x.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name} has dtype {x.dtype}: expected uint8, uint16 or float in [0, 1]")
    if min(x.shape[:2]) < min_side:
        raise ValueError(
            f"{name} is {x.shape[1]}×{x.shape[0]} pixels: at least {min_side}×{min_side} is needed"
        )
    top = int(colour.max(initial=0)) if x.dtype == np.uint16 else 0
    alpha = None
    if x.ndim == 3 and x.shape[2] == 4:
        if x.dtype == np.uint8:  # the rule of an RGBA file, bit for bit
            rgba = np.ascontiguousarray(x[:, :, [2, 1, 0, 3]])
            return _pil_gray(Image.fromarray(rgba, "RGBA")), top, None
        alpha = x[:, :, 3].astype(np.float32)
        if x.dtype == np.uint16:
            alpha /= 65535.0
        alpha = np.clip(np.nan_to_num(alpha, nan=1.0), 0.0, 1.0)  # no range check: a share
        x = np.ascontiguousarray(x[:, :, :3])
    if x.ndim == 3:
        x = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_BGR2GRAY)
    return x, top, alpha


def _to_u8(x: np.ndarray, bits: int, alpha: Any = None) -> np.ndarray:
    if alpha is not None:  # over white, as a share of the full range
        share = x.astype(np.float32) / (2**bits - 1) if x.dtype == np.uint16 else x
        share = np.clip(share, 0.0, 1.0) * alpha + (1.0 - alpha)
        return np.rint(share * 255.0).astype(np.uint8)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.uint16:
        scale = 255.0 / (2**bits - 1)
        return np.clip(np.rint(x.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_gray_u8(image: Any, name: str = "image", *, min_side: int = MIN_SIDE) -> np.ndarray:
    """One image as hdreg's estimators take it: ``(H, W)`` uint8 grayscale (the rules of the
    module docstring; a ``uint16`` image is scaled from its own :func:`bit_depth`).

    ``ValueError`` naming ``name`` for anything else: another dtype or shape, a float image
    outside [0, 1] or with NaN, a side under ``min_side`` pixels (``MIN_SIDE``; the image
    loaders, which check sizes themselves, pass 1). Use :func:`gray_pair` for the two images of
    a pair.
    """
    x, top, alpha = _gray(image, name, min_side)
    return _to_u8(x, bit_depth(top), alpha)


def gray_pair(
    image_a: Any, image_b: Any, names: tuple[str, str] = ("image_a", "image_b")
) -> tuple[np.ndarray, np.ndarray]:
    """The two images of a pair as :func:`to_gray_u8` converts them, except that ``uint16``
    images share one bit depth: that of the larger maximum of the two (scaling each by its own
    would change their relative brightness).

    >>> a = np.full((8, 8), 4095, np.uint16)
    >>> b = np.full((8, 8), 1000, np.uint16)
    >>> [int(x[0, 0]) for x in gray_pair(a, b)]
    [255, 62]
    """
    (a, top_a, alpha_a), (b, top_b, alpha_b) = _gray(image_a, names[0]), _gray(image_b, names[1])
    bits = bit_depth(max(top_a, top_b))
    return _to_u8(a, bits, alpha_a), _to_u8(b, bits, alpha_b)


def size_of(image: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of an ``(H, W, ...)`` array: the order OpenCV's sizes use."""
    return image.shape[1], image.shape[0]


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size = (W, H)`` by pixel-area averaging (itself when it has that
    size already)."""
    import cv2

    if size_of(image) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
