"""How far an estimate between two photos can be trusted, measured on the photos themselves.

:func:`alignment_confidence` is the zero-mean normalised cross-correlation between band-passed B
and A warped onto B over their overlap (invariant to gain and offset of either photo, blind to
the smooth shading unrelated photos share), times the square root of the overlap's share of the
photo it covers more of (B; or A, where B is zoomed out and shows all of A in a part of it).
:func:`judge_confidence` records it in a pair's details and says why a pair under a threshold is
not trusted; :func:`blank_reason` refuses a photo without texture before any estimate. The
learned estimators (:mod:`hdreg.estimators.learned`, :mod:`hdreg.estimators.coarse_to_fine`)
and :class:`~hdreg.estimators.learned.ConfidenceGate` judge their answers with these.
All homographies follow docs/conventions.md: ``H_a_from_b`` maps B's pixels into A.

>>> import numpy as np
>>> photo = (np.indices((96, 128)).sum(0) % 16 * 16).astype(np.uint8)
>>> round(alignment_confidence(photo, photo, np.eye(3))[0], 3)
1.0
>>> blank_reason(np.zeros((64, 64), np.uint8), "A", 0.25)
'image A is blank or has no texture (mean gradient 0.00 < 0.25)'
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import cv2
import numpy as np

from hdreg.geometry_np import coverage_mask, scale_matrix, scale_size, zncc
from hdreg.images import resize_area, size_of

__all__ = [
    "alignment_confidence",
    "band_passed",
    "blank_reason",
    "judge_confidence",
    "texture",
    "zncc_masked",
]


def zncc_masked(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """:func:`~hdreg.geometry_np.zncc` of two images over ``mask``, but 0 (no evidence of a
    match), not NaN, when the mask holds under 16 pixels or either image is flat there."""
    return float(np.nan_to_num(zncc(x, y, mask))) if mask.sum() >= 16 else 0.0


def texture(image: np.ndarray) -> float:
    """Mean gradient magnitude (gray levels per pixel) of an 8-bit image."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return float(np.mean(np.sqrt(gx * gx + gy * gy)))


def blank_reason(image: np.ndarray, label: str, min_texture: float) -> str | None:
    """Why photo ``label`` carries no information (mean gradient under ``min_texture``), or
    ``None``."""
    grad = texture(image)
    if grad < min_texture:
        return (
            f"image {label} is blank or has no texture (mean gradient {grad:.2f} < {min_texture})"
        )
    return None


def band_passed(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image − Gaussian(image, sigma)`` in float32: the structure, without the smooth shading
    that unrelated photos can share."""
    x = image.astype(np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), sigma)


def alignment_confidence(
    image_a: np.ndarray,
    image_b: np.ndarray,
    H_a_from_b: np.ndarray,
    side: int = 256,
    band_pass: float | None = 4.0,
) -> tuple[float, float, float]:
    """``(confidence, correlation, overlap)`` of an estimate between two 8-bit photos.

    Both are resized by the factor that brings B's longer side to ``side``; ``correlation`` is
    the ZNCC between B and A warped onto B over the pixels of B that map inside A, after a band
    pass (each image minus its Gaussian blur of ``band_pass`` pixels, so that the smooth shading
    two unrelated photos may share does not count; ``None``: raw intensities), ``overlap`` the
    larger of the shares of B that maps inside A and of A that maps inside B (a zoomed-out B
    shows all of A in a part of itself: the pair overlaps wholly, from A's side), and
    ``confidence = correlation · √overlap`` (0 when the overlap is empty or flat).
    """
    f = min(1.0, side / max(size_of(image_b)))
    size_a = scale_size(size_of(image_a), f, min_side=8)
    size_b = scale_size(size_of(image_b), f, min_side=8)
    a, b = resize_area(image_a, size_a), resize_area(image_b, size_b)
    H = scale_matrix(size_of(image_a), size_a) @ H_a_from_b @ scale_matrix(size_b, size_of(image_b))
    warped = cv2.warpPerspective(a, H, size_b, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inside = coverage_mask(H, size_a, size_b)
    overlap = float(inside.mean())
    if overlap < 1.0:
        with contextlib.suppress(np.linalg.LinAlgError):  # (a singular H: B's share stands)
            overlap = max(overlap, float(coverage_mask(np.linalg.inv(H), size_b, size_a).mean()))
    if band_pass:
        b, warped = band_passed(b, band_pass), band_passed(warped, band_pass)
        inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    corr = zncc_masked(b, warped, inside)
    return corr * math.sqrt(overlap), corr, overlap


def judge_confidence(
    image_a: np.ndarray,
    image_b: np.ndarray,
    H_a_from_b: np.ndarray,
    min_confidence: float,
    details: dict[str, Any],
    side: int = 256,
) -> str | None:
    """Record an estimate's ``confidence``, ``correlation`` and ``overlap`` in ``details``
    (:func:`alignment_confidence`) and say why it is not trusted (``None``: it is)."""
    conf, corr, overlap = alignment_confidence(image_a, image_b, H_a_from_b, side)
    details.update(confidence=conf, correlation=corr, overlap=overlap)
    if conf >= min_confidence:
        return None
    return (
        f"confidence {conf:.2f} < {min_confidence} (correlation {corr:.2f}, overlap {overlap:.0%}):"
        " the photos do not match, or the motion is beyond reach"
    )
