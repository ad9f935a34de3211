"""ECC image alignment (Evangelidis & Psarakis, 2008) as a coarse-to-fine homography estimator.

``cv2.findTransformECC(template, input, warp, ...)`` finds the warp ``W`` that maximises the
correlation between ``template(p)`` and ``input(W p)``. With ``template = B`` and ``input = A``,
``A(W p_b) ≈ B(p_b)``: ``W`` maps pixel coordinates of B into A, so it *is* ``H_a_from_b``
(docs/conventions.md: pixel coordinates ``(x, y)``, ``(0, 0)`` the centre of the top-left pixel, and
``p_a ~ H_a_from_b @ p_b``).

ECC is a local method, so it runs on an image pyramid, coarsest level first, escalating the
motion model on the way (translation, affine, then homographies). The estimate is carried between
levels exactly: a level-``k`` image is ``cv2.resize`` of the full image, whose pixel-centre map
``S`` (:func:`hdreg.geometry_np.scale_matrix`) gives ``H_k = S_a · H · S_b⁻¹``; A and B each have
their own pyramid, so their sizes may differ. Why this schedule, with the measurements:
docs/methods.md ("ECC").

Example:
    >>> import cv2, numpy as np
    >>> noise = np.random.default_rng(0).integers(0, 256, (120, 160), np.uint8)
    >>> a = cv2.GaussianBlur(noise, (0, 0), 2)
    >>> b = cv2.warpAffine(a, np.float32([[1, 0, -3], [0, 1, -2]]), (160, 120))
    >>> from hdreg.config import method_estimator  # hdreg/configs/method/ecc.yaml
    >>> result = method_estimator("ecc").run_pair(a, b)
    >>> np.round(result.H_a_from_b[:2, 2]).tolist()
    [3.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hdreg.estimators._checks import check_float, check_gray_u8, check_int
from hdreg.estimators.base import PairResult, PairwiseEstimator
from hdreg.geometry_np import (
    check_homography,
    coverage_mask,
    normalize_homography,
    project,
    rect_corners,
    scale_matrix,
    scale_size,
)

__all__ = ["COARSE_MOTIONS", "ECCEstimator"]

# Motion models allowed at the coarse levels; the finest level always estimates a homography.
COARSE_MOTIONS = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
}
# No level is made smaller than this (shorter side, pixels), whatever `levels` asks for: ECC's
# Gaussian filter and gradients are meaningless on a handful of pixels.
SMALLEST_LEVEL_SIDE = 8


def _size(image: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of an ``(H, W)`` array."""
    return image.shape[1], image.shape[0]


def _level_size(size: tuple[int, int], level: int) -> tuple[int, int]:
    """``(width, height)`` of pyramid level ``level`` (0 = full resolution, halving per level)."""
    return scale_size(size, 0.5**level)


def _corner_jump(H_new: np.ndarray, H_old: np.ndarray, corners_b: np.ndarray) -> float:
    """Largest distance (pixels of A) between B's corners mapped by the two estimates."""
    with np.errstate(over="ignore", invalid="ignore"):
        jump = np.linalg.norm(project(H_new, corners_b) - project(H_old, corners_b), axis=1)
    return float(jump.max()) if np.isfinite(jump).all() else math.inf


def _is_affine(H: np.ndarray) -> bool:
    return abs(H[2, 0]) <= 1e-12 * abs(H[2, 2]) and abs(H[2, 1]) <= 1e-12 * abs(H[2, 2])


def _cv2_message(exc: cv2.error) -> str:
    """The message of an OpenCV error without its file:line banner, e.g. "NaN encountered."."""
    message = getattr(exc, "err", None)  # set by OpenCV's Python bindings
    if not message:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else "cv2.error"
    return str(message)[:200]


class ECCEstimator(PairwiseEstimator):
    """Coarse-to-fine ECC: returns ``H_a_from_b`` (maps pixel coordinates of B into A).

    Every parameter is explicit: the defaults are ``hdreg/configs/method/ecc.yaml``, built by
    ``hdreg.config.method_estimator("ecc")`` (or ``hydra.utils.instantiate``).

    Args:
        levels: pyramid levels for :meth:`estimate_pair` (1 = full resolution only). ``None``:
            as many halvings as keep the shorter side of both images at least
            ``min_level_side`` (4 levels, down to 16×16, for 128×128 patches). Never more than
            keep every level at least 8 px on its shorter side.
        min_level_side: the shorter side of the coarsest automatic level (pixels, >= 8).
        coarse_motions: motion models of the coarsest levels, coarsest first (each
            ``"translation"``, ``"euclidean"`` or ``"affine"``); the other levels, and always
            the finest, estimate a homography. A coarse model is used only while the current
            estimate is affine: OpenCV ignores the third row of the warp for these models, which
            would silently drop the perspective part of a projective estimate (e.g. the initial
            homography given to :meth:`refine`); such levels estimate a homography instead.
        iterations: maximum ECC iterations per level.
        eps: stop a level when the correlation improves by less than this (>= 0).
        gauss_filt_size: odd size of the Gaussian filter ECC applies to both images
            (1 = none; OpenCV's default is 5).
        min_correlation: the pair fails ("diverged") when the final correlation, between B
            and A warped onto B over the pixels of B that map inside A (full resolution, not
            filtered), is below this; in [-1, 1].
        min_overlap: the pair fails when less than this fraction of B's pixels maps inside A.
        refine_levels: default pyramid levels for :meth:`refine`: an initial estimate within a
            few pixels needs no coarse levels, and the coarsest ones can only make it worse.
        name: name in result tables.

    A level at which OpenCV raises (``NaN encountered``, ``The algorithm stopped before its
    convergence``), or whose result is not finite or moves B's corners by more than the image
    diagonal, is skipped: the previous estimate goes on to the next level, and
    ``details["levels"]`` records why. The pair fails when every level failed, when the final
    estimate moved B's corners by more than the diagonal from the initial one, or on the overlap
    and correlation checks. ``details``: ``correlation``, ``overlap`` (when computed) and
    ``levels`` (one dict per level run, coarsest first: ``level``, ``size_a``, ``size_b``,
    ``motion``, and ``correlation`` or ``error``).
    """

    def __init__(
        self,
        *,
        levels: int | None,
        min_level_side: int,
        coarse_motions: Sequence[str],
        iterations: int,
        eps: float,
        gauss_filt_size: int,
        min_correlation: float,
        min_overlap: float,
        refine_levels: int,
        name: str = "ecc",
    ) -> None:
        self.levels = None if levels is None else check_int("levels", levels, 1)
        self.min_level_side = check_int("min_level_side", min_level_side, SMALLEST_LEVEL_SIDE)
        if isinstance(coarse_motions, str) or not all(m in COARSE_MOTIONS for m in coarse_motions):
            raise ValueError(
                "coarse_motions must be a sequence of "
                f"{', '.join(COARSE_MOTIONS)}, got {coarse_motions!r}"
            )
        self.coarse_motions = tuple(coarse_motions)
        self.iterations = check_int("iterations", iterations, 1)
        self.eps = check_float("eps", eps, at_least=0.0)
        self.gauss_filt_size = check_int("gauss_filt_size", gauss_filt_size, 1)
        if self.gauss_filt_size % 2 == 0:
            raise ValueError(f"gauss_filt_size must be odd, got {gauss_filt_size}")
        self.min_correlation = check_float(
            "min_correlation", min_correlation, at_least=-1.0, at_most=1.0
        )
        self.min_overlap = check_float("min_overlap", min_overlap, above=0.0, at_most=1.0)
        self.refine_levels = check_int("refine_levels", refine_levels, 1)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return (
            f"ECCEstimator(levels={self.levels}, min_level_side={self.min_level_side}, "
            f"coarse_motions={self.coarse_motions}, iterations={self.iterations}, "
            f"eps={self.eps:g}, gauss_filt_size={self.gauss_filt_size}, "
            f"min_correlation={self.min_correlation}, min_overlap={self.min_overlap}, "
            f"refine_levels={self.refine_levels}, name={self.name!r})"
        )

    def pyramid_levels(self, size_a: tuple[int, int], size_b: tuple[int, int]) -> int:
        """Levels :meth:`estimate_pair` uses for images of ``(width, height)`` ``size_a`` and
        ``size_b``."""
        if self.levels is None:
            return self._cap_levels(
                1 + max(0, math.floor(math.log2(min(*size_a, *size_b) / self.min_level_side))),
                size_a,
                size_b,
            )
        return self._cap_levels(self.levels, size_a, size_b)

    @staticmethod
    def _cap_levels(levels: int, size_a: tuple[int, int], size_b: tuple[int, int]) -> int:
        shortest = min(*size_a, *size_b)
        most = 1 + max(0, math.floor(math.log2(shortest / SMALLEST_LEVEL_SIDE)))
        return max(1, min(levels, most))

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        """ECC from the identity over the full pyramid: the same as ``refine(image_a, image_b,
        np.eye(3), levels=self.pyramid_levels(size_a, size_b))``."""
        image_a = check_gray_u8(image_a, "image_a")
        image_b = check_gray_u8(image_b, "image_b")
        levels = self.pyramid_levels(_size(image_a), _size(image_b))
        return self.refine(image_a, image_b, np.eye(3), levels=levels)

    def refine(
        self,
        image_a: np.ndarray,
        image_b: np.ndarray,
        H_init_a_from_b: np.ndarray,
        *,
        levels: int | None = None,
    ) -> PairResult:
        """ECC started from ``H_init_a_from_b (3, 3)`` (maps B into A, full-resolution pixels).

        ``levels``: pyramid levels for this call (default ``refine_levels``; capped like the
        automatic depth). Never raises for a pair on which ECC fails, nor for a non-finite or
        singular initial estimate (e.g. from a network): the result says why it failed.
        """
        image_a = check_gray_u8(image_a, "image_a")
        image_b = check_gray_u8(image_b, "image_b")
        H_init = np.asarray(H_init_a_from_b, dtype=np.float64)
        if H_init.shape != (3, 3):
            raise ValueError(f"H_init_a_from_b must have shape (3, 3), got {H_init.shape}")
        levels = self.refine_levels if levels is None else check_int("levels", levels, 1)
        levels = self._cap_levels(levels, _size(image_a), _size(image_b))
        if (problem := check_homography(H_init)) is not None:
            return PairResult(None, f"initial estimate: {problem}")
        result = self._align(image_a, image_b, normalize_homography(H_init), levels)
        if result.H_a_from_b is not None and (problem := check_homography(result.H_a_from_b)):
            return PairResult(None, problem, result.details)
        return result

    def _motion(self, level: int, levels: int, H_level: np.ndarray) -> str:
        """Motion model at ``level`` (0 = finest) of a ``levels``-deep pyramid."""
        from_coarsest = levels - 1 - level
        if level > 0 and from_coarsest < len(self.coarse_motions) and _is_affine(H_level):
            return self.coarse_motions[from_coarsest]
        return "homography"

    def _align(
        self, image_a: np.ndarray, image_b: np.ndarray, H_init: np.ndarray, levels: int
    ) -> PairResult:
        size_a, size_b = _size(image_a), _size(image_b)
        corners_b = rect_corners(size_b)
        # The "absurd jump" bound: no sensible update moves a corner across the whole image.
        diagonal = max(math.hypot(*size_a), math.hypot(*size_b))
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.iterations, self.eps)
        H_a_from_b = H_init.copy()
        log: list[dict[str, Any]] = []
        details: dict[str, Any] = {"levels": log}

        for level in range(levels - 1, -1, -1):
            level_a, level_b = _level_size(size_a, level), _level_size(size_b, level)
            # INTER_AREA averages pixel blocks (anti-aliasing), and its pixel-centre map is the
            # one scale_matrix gives: x' = (x + 0.5) · W'/W − 0.5.
            a = cv2.resize(image_a, level_a, interpolation=cv2.INTER_AREA) if level else image_a
            b = cv2.resize(image_b, level_b, interpolation=cv2.INTER_AREA) if level else image_b
            S_a = scale_matrix(size_a, level_a)
            S_b = scale_matrix(size_b, level_b)
            H_level = normalize_homography(S_a @ H_a_from_b @ np.linalg.inv(S_b))
            motion = self._motion(level, levels, H_level)
            entry: dict[str, Any] = {
                "level": level,
                "size_a": level_a,
                "size_b": level_b,
                "motion": motion,
            }
            log.append(entry)
            warp = (H_level if motion == "homography" else H_level[:2]).astype(np.float32)
            try:
                correlation, warp = cv2.findTransformECC(
                    b,
                    a,
                    warp,
                    COARSE_MOTIONS.get(motion, cv2.MOTION_HOMOGRAPHY),
                    criteria,
                    None,
                    self.gauss_filt_size,
                )
            except cv2.error as exc:
                # Raised when the correlation turns negative or NaN: this level cannot improve
                # the estimate, a finer one still may.
                entry["error"] = _cv2_message(exc)
                continue
            H_level_new = warp.astype(np.float64)
            if motion != "homography":
                H_level_new = np.vstack([H_level_new, [0.0, 0.0, 1.0]])
            with np.errstate(all="ignore"):
                H_new = normalize_homography(np.linalg.inv(S_a) @ H_level_new @ S_b)
            if (problem := check_homography(H_new)) is not None:
                entry["error"] = problem
                continue
            if (jump := _corner_jump(H_new, H_a_from_b, corners_b)) > diagonal:
                entry["error"] = f"corners jumped by {jump:.3g} px (diagonal {diagonal:.0f} px)"
                continue
            entry["correlation"] = float(correlation)
            H_a_from_b = H_new

        if all("error" in entry for entry in log):
            reason = f"ECC failed at every level; at the finest: {log[-1]['error']}"
            return PairResult(None, reason, details)
        if (jump := _corner_jump(H_a_from_b, H_init, corners_b)) > diagonal:
            return PairResult(
                None,
                f"diverged: corners moved by {jump:.3g} px from the initial estimate, more than "
                f"the image diagonal ({diagonal:.0f} px)",
                details,
            )
        return self._score(image_a, image_b, H_a_from_b, details)

    def _score(
        self, image_a: np.ndarray, image_b: np.ndarray, H_a_from_b: np.ndarray, details: dict
    ) -> PairResult:
        """The final checks: overlap and correlation at full resolution."""
        size_b = _size(image_b)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warped_a = cv2.warpPerspective(image_a, H_a_from_b, size_b, flags=flags)
        mask = coverage_mask(H_a_from_b, _size(image_a), size_b).astype(np.uint8)
        overlap = float(mask.mean())
        details["overlap"] = overlap
        if overlap < self.min_overlap:
            return PairResult(
                None,
                f"only {overlap:.1%} of B maps inside A, need {self.min_overlap:.0%}",
                details,
            )
        try:
            correlation = float(cv2.computeECC(image_b, warped_a, mask))
        except cv2.error as exc:
            return PairResult(None, f"correlation: {_cv2_message(exc)}", details)
        details["correlation"] = correlation
        if not correlation >= self.min_correlation:  # also catches NaN (a flat overlap)
            return PairResult(
                None,
                f"diverged: ECC correlation {correlation:.6g} < min_correlation "
                f"{self.min_correlation:g}",
                details,
            )
        return PairResult(H_a_from_b, None, details)
