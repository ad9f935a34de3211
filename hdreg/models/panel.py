"""The picture of a synthetic pair that training shows in TensorBoard (numpy and OpenCV only).

:func:`pair_panel` draws one row ``[A with quads | B | |A warped − B|]``: on patch A, where patch
B's corners truly lie (green) and where the network puts them (red). Images are ``(H, W) uint8``
gray or ``(H, W, 3) uint8`` RGB; points are pixel coordinates ``(x, y)`` (docs/conventions.md).

>>> import numpy as np
>>> c = np.array([[0.0, 0], [15, 0], [15, 15], [0, 15]])
>>> patch = np.zeros((16, 16), np.uint8)
>>> pair_panel(patch, patch, c, c * 0, c * 0, patch, margin=2, scale=1).shape
(20, 68, 3)
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["GREEN", "RED", "draw_quad", "pair_panel", "to_rgb"]

GREEN = (40, 200, 40)  # RGB
RED = (230, 40, 40)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` → ``(H, W, 3) uint8``."""
    return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1)


def draw_quad(
    rgb: np.ndarray, quad: np.ndarray, color: tuple[int, int, int], thickness: int = 1
) -> np.ndarray:
    """Draw the closed quadrilateral ``quad (4, 2)`` (pixel coordinates, sub-pixel accurate)."""
    shift = 4  # OpenCV draws at 1/16 px with shift=4
    pts = np.round(np.asarray(quad, np.float64) * (1 << shift)).astype(np.int32)
    cv2.polylines(rgb, [pts.reshape(-1, 1, 2)], True, color, thickness, cv2.LINE_AA, shift)
    return rgb


def pair_panel(
    patch_a: np.ndarray,
    patch_b: np.ndarray,
    corners: np.ndarray,
    offsets_true: np.ndarray,
    offsets_pred: np.ndarray,
    warped_a: np.ndarray,
    inside: np.ndarray | None = None,
    *,
    margin: int = 40,
    scale: int = 2,
) -> np.ndarray:
    """One row ``[A with quads | B | |A warped − B|]`` as an ``(h, w, 3) uint8`` image.

    Args:
        patch_a, patch_b: ``(P, P) uint8``.
        corners: ``(4, 2)`` patch B's corners in patch A's frame (``(0, 0), (P−1, 0), …``).
        offsets_true, offsets_pred: ``(4, 2)``; where patch B's corners lie in A: the true
            (green) and predicted (red) quadrilaterals ``corners + offsets`` are drawn on A.
        warped_a: ``(P, P) uint8``: patch A warped onto B's grid by the predicted ``H_a_from_b``.
        inside: optional ``(P, P) bool``: where that warp sampled inside patch A; elsewhere the
            difference is undefined and drawn blue.
        margin: gray border around every tile (pixels of the P-frame), so that quadrilaterals
            reaching outside patch A (offsets up to ±ρ) stay visible.
        scale: upscaling of the tiles (thin lines stay visible).
    """
    p = patch_a.shape[0]
    side = (p + 2 * margin) * scale

    def tile(gray: np.ndarray) -> np.ndarray:
        padded = cv2.copyMakeBorder(
            gray, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=128
        )
        return to_rgb(cv2.resize(padded, (side, side), interpolation=cv2.INTER_NEAREST))

    # Pixel (x, y) of the P-frame lies at (x + margin + 0.5) * scale - 0.5 in the tile.
    def to_tile(q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float64) + margin + 0.5) * scale - 0.5

    a = tile(patch_a)
    draw_quad(a, to_tile(corners + offsets_true), GREEN, 2)
    draw_quad(a, to_tile(corners + offsets_pred), RED, 2)
    b = tile(patch_b)
    d = tile(cv2.absdiff(warped_a, patch_b))
    if inside is not None:
        outside = np.pad(~inside, margin, constant_values=False)
        outside = cv2.resize(
            outside.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST
        )
        d[outside.astype(bool)] = (40, 60, 140)
    gap = np.full((side, 4, 3), 255, np.uint8)
    return np.concatenate([a, gap, b, gap, d], axis=1)
