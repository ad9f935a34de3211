"""Refinement designs for ``wide`` that were measured and not shipped, kept runnable: each is a
:class:`~hdreg.estimators.coarse_to_fine.CoarseToFineEstimator` with one step replaced, for
``bench/wide_settings.py --variant NAME`` (results in docs/methods.md). They were measured on
the levels as ``wide`` ran them before its dense matcher, the iterative network on windows
(``dense_net=None``, ``final_passes=2``), and replace a step of that design.

- ``dense``: the levels listed in ``dense_sides`` (B's longer side) are one dense pass instead
  of windows through the iterative network: the refinement network's fine encoder on the
  whole warped A and B (one pass each), the correlation of every cell of B with the
  ``(2·radius+1)²`` cells around it in the warped A, the best cell refined by a parabola per
  axis, and RANSAC over all cells whose best correlation passes ``min_score`` — about 0.01 s
  at 256 px, where the windows take about 0.25 s.
- ``cap-zoom-in``: when the global estimate shows B zoomed in by more than ``cap_zoom`` (a
  pixel of B spans less than ``1 / cap_zoom`` pixels of A), the finest level is capped at B's
  side × zoom, where the warped A is about as sharp as B.
- ``swap-zoom-in``: B zoomed in by more than ``swap_in``: the levels run on the swapped pair,
  as for zoomed-out B, with the windows on a grid over the part of A's frame that B covers.
- ``cap-zoom-out``: when the levels run on the swapped pair (B zoomed out by more than
  ``swap_zoom``), the finest level is capped at A's side / zoom, where the warped B is as sharp
  as A (B's own resolution).
- ``blur-zoom-in``: B zoomed in by more than ``blur_in``: B is low-passed to A's resolution for
  the refinement levels (a Gaussian of ``blur_k / zoom`` pixels), so that the windows compare
  two equally sharp views.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hdreg.estimators.coarse_to_fine import CoarseToFineEstimator, _centre
from hdreg.geometry_np import check_homography, local_similarity
from hdreg.images import size_of
from hdreg.models.homographynet import standardize


class DenseLevels(CoarseToFineEstimator):
    """``dense``: see the module docstring."""

    dense_sides: Sequence[int] = (256, 512)
    radius = 4
    min_score = 0.3

    @torch.inference_mode()
    def _features(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, int]:
        encoder = self.refine_net.fine.encoder
        x = torch.from_numpy(np.stack(images))[:, None].float().div_(255.0)
        return F.normalize(encoder(standardize(x)), dim=1), int(encoder.stride)

    def _residual(self, level) -> tuple[np.ndarray | None, int]:
        if max(level.b.shape) not in self.dense_sides:  # (the level's B side is its `side`)
            return super()._residual(level)
        feats, stride = self._features([level.warped, level.b])
        f_w, f_b = feats
        _, h, w = f_b.shape
        r, k = self.radius, 2 * self.radius + 1
        padded = F.pad(f_w, (r, r, r, r))
        shifts = [padded[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]
        corr = torch.stack([(f_b * s).sum(0) for s in shifts]).reshape(k, k, h, w).numpy()
        flat = corr.reshape(k * k, h, w)
        best, score = flat.argmax(0), flat.max(0)
        by, bx = best // k, best % k
        inside = level.inside.astype(np.float32)
        covered = cv2.resize(inside, (w, h), interpolation=cv2.INTER_AREA)
        keep = (by > 0) & (by < k - 1) & (bx > 0) & (bx < k - 1)
        keep &= (score > self.min_score) & (covered > 0.99)
        ys, xs = np.nonzero(keep)
        by, bx = by[keep], bx[keep]
        peak = corr[by, bx, ys, xs]

        def vertex(before: np.ndarray, after: np.ndarray) -> np.ndarray:
            curvature = before - 2 * peak + after
            safe = np.where(curvature < -1e-6, curvature, -1.0)
            return np.where(curvature < -1e-6, 0.5 * (before - after) / safe, 0.0).clip(-0.5, 0.5)

        dx = bx - r + vertex(corr[by, bx - 1, ys, xs], corr[by, bx + 1, ys, xs])
        dy = by - r + vertex(corr[by - 1, bx, ys, xs], corr[by + 1, bx, ys, xs])
        pts_b = np.c_[xs, ys].astype(np.float64) * stride + (stride - 1) / 2
        pts_w = pts_b + np.c_[dx, dy] * stride
        if len(pts_b) < 8:
            return None, 0
        R, mask = cv2.findHomography(pts_b, pts_w, cv2.RANSAC, 0.5 * stride, maxIters=2000,
                                     confidence=0.999)  # fmt: skip
        if R is None or check_homography(R) or int(mask.sum()) < 8:
            return None, 0
        return R, int(mask.sum())  # the inlier cells, as the windows' count


class _Capped(CoarseToFineEstimator):
    """The refinement's finest level capped at ``_cap`` pixels (``None``: not capped), as the
    subclass sets it for the pair at hand."""

    _cap: int | None = None

    def _level_sides(self, size: tuple[int, int]) -> list[int]:
        if self._cap is None:
            return super()._level_sides(size)
        top = min(max(size), self.max_side or max(size), self._cap)
        return [*[s for s in self.levels if s < top], *[top] * self.final_passes]


class CapZoomIn(_Capped):
    """``cap-zoom-in``: see the module docstring."""

    cap_zoom = 1.5

    def _global(self, pair) -> None:
        super()._global(pair)
        zoom = local_similarity(pair.H, _centre(size_of(pair.b)))[0]
        capped = zoom < 1 / self.cap_zoom
        self._cap = max(self.levels[0], round(max(size_of(pair.b)) * zoom)) if capped else None


class SwapZoomIn(CoarseToFineEstimator):
    """``swap-zoom-in``: see the module docstring."""

    swap_in = 1.5

    def _refines_swapped(self, pair) -> bool:
        zoom = local_similarity(pair.H, _centre(size_of(pair.b)))[0]
        return super()._refines_swapped(pair) or zoom < 1 / self.swap_in

    def _lattice(self, shape: tuple[int, int], inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, (h, w) = self.patch, shape
        ys, xs = np.nonzero(inside)
        if len(xs) == 0:
            return np.array([], int), np.array([], int)
        # the grid spans the covered box (at least one window), inside the image
        x_lo, y_lo = int(xs.min()), int(ys.min())
        x_hi, y_hi = max(int(xs.max()) + 1, x_lo + p), max(int(ys.max()) + 1, y_lo + p)
        x_lo, y_lo = max(0, min(x_lo, w - p)), max(0, min(y_lo, h - p))
        x_hi, y_hi = min(x_hi, w), min(y_hi, h)
        return (
            np.unique(np.linspace(x_lo, x_hi - p, self.grid).round().astype(int)),
            np.unique(np.linspace(y_lo, y_hi - p, self.grid).round().astype(int)),
        )


class BlurZoomIn(CoarseToFineEstimator):
    """``blur-zoom-in``: see the module docstring."""

    blur_in = 1.5
    blur_k = 0.5

    def _refines_swapped(self, pair) -> bool:
        # (called once, after the global stage and before the levels: the levels' B is set here)
        zoom = local_similarity(pair.H, _centre(size_of(pair.b)))[0]
        if zoom < 1 / self.blur_in:
            pair.b = cv2.GaussianBlur(pair.b, (0, 0), self.blur_k / zoom)
        return super()._refines_swapped(pair)


class CapZoomOut(_Capped):
    """``cap-zoom-out``: see the module docstring."""

    def _refines_swapped(self, pair) -> bool:
        # (called once, after the global stage and before the levels)
        swapped = super()._refines_swapped(pair)
        zoom = local_similarity(pair.H, _centre(size_of(pair.b)))[0]
        self._cap = max(self.levels[0], round(max(size_of(pair.a)) / zoom)) if swapped else None
        return swapped


VARIANTS = {
    "cap-zoom-out": CapZoomOut,
    "dense": DenseLevels,
    "cap-zoom-in": CapZoomIn,
    "swap-zoom-in": SwapZoomIn,
    "blur-zoom-in": BlurZoomIn,
}
