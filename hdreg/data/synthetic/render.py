"""Rendering a view of a photo through a homography without aliasing (step 4 of
:mod:`hdreg.data.synthetic.wide`)."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["minification_map", "render_view"]


def minification_map(
    H_source_from_view: np.ndarray, view_size: tuple[int, int], grid: int = 9
) -> np.ndarray:
    """``(H, W) float32``: source pixels per view pixel at each view pixel (the larger singular
    value of the warp's Jacobian), computed on a ``grid × grid`` lattice and interpolated."""
    w, h = view_size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
    H = np.asarray(H_source_from_view, np.float64)
    u = H[0, 0] * xs + H[0, 1] * ys + H[0, 2]
    v = H[1, 0] * xs + H[1, 1] * ys + H[1, 2]
    q = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    q2 = q * q
    a = (H[0, 0] * q - u * H[2, 0]) / q2
    b = (H[0, 1] * q - u * H[2, 1]) / q2
    c = (H[1, 0] * q - v * H[2, 0]) / q2
    d = (H[1, 1] * q - v * H[2, 1]) / q2
    half = (a * a + b * b + c * c + d * d) / 2
    sigma = np.sqrt(half + np.sqrt(np.maximum(half * half - (a * d - b * c) ** 2, 0.0)))
    return cv2.resize(sigma.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def render_view(
    photo: np.ndarray, H_source_from_view: np.ndarray, view_size: tuple[int, int]
) -> np.ndarray:
    """Render ``view_size = (W, H)`` pixels of ``photo`` (``view(p) = photo(H · p)``) with
    ``cv2.warpPerspective`` (bilinear) without aliasing where the view is minified: a view with
    more than one photo pixel per view pixel anywhere is rendered at twice the resolution and
    area-averaged, each of its pixels blended from the two pyramid levels (``cv2.pyrDown``) that
    bracket its own minification (trilinear mipmapping), so that magnified parts of a slanted
    view stay sharp."""
    w, h = view_size
    H = np.asarray(H_source_from_view, np.float64)
    k = 2 if float(minification_map(H, view_size, grid=5).max()) > 1.0 else 1
    # big pixel x' = (x + 0.5) k - 0.5; the k×k area average of big pixels lands on x
    view_from_big = np.array(
        [[1 / k, 0, (1 - k) / (2 * k)], [0, 1 / k, (1 - k) / (2 * k)], [0, 0, 1]]
    )
    H_big = H @ view_from_big
    size_big = (w * k, h * k)
    # as many levels as the photo has down to 16 px, built only as far as this view needs them
    top = max(0, math.floor(math.log2(min(photo.shape) / 16)))
    level = np.minimum(np.log2(np.maximum(minification_map(H_big, size_big), 1.0)), top)
    lo, hi = int(np.floor(level.min())), int(np.ceil(level.max()))
    levels = [photo]
    for _ in range(hi):
        levels.append(cv2.pyrDown(levels[-1]))  # output pixel i sits on input pixel 2i

    def warp(lv: int) -> np.ndarray:
        return cv2.warpPerspective(
            levels[lv], np.diag([0.5**lv, 0.5**lv, 1.0]) @ H_big, size_big,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101,
        )  # fmt: skip

    if lo == hi:
        out = warp(lo)
    else:
        acc = np.zeros(level.shape, np.float32)
        for lv in range(lo, hi + 1):
            acc += np.maximum(1.0 - np.abs(level - lv), 0.0) * warp(lv)
        out = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    if k > 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
    return out
