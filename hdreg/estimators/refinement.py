"""Refinement of any estimator's answers, kept only when it provably helps.

:class:`RefinedEstimator` runs a base estimator (keypoints, a learned model, …) on a batch, then
starts a *refiner* (anything with ``name`` and ``refine(image_a, image_b, H_init_a_from_b) ->
PairResult``, e.g. :class:`~hdreg.estimators.ecc.ECCEstimator`) from each estimate that did not
fail. The refined estimate replaces the start only when

1. the refiner succeeded (its own checks),
2. its estimate does not fold B where the start did not (:func:`hdreg.geometry_np.folds`), and
3. the photometric agreement of the pair is no worse than with the start
   (:func:`compare_estimates`: ZNCC of B and A resampled bicubically onto B, over the pixels of
   B inside A under *both* estimates).

Why these choices, with the measurements behind them: docs/methods.md ("Refinement").
Conventions (as in :mod:`hdreg.geometry`): pixel coordinates ``(x, y)``, ``(0, 0)`` the centre
of the top-left pixel; every homography is ``H_a_from_b`` (maps pixel coordinates of B into A).

Example (refining the identity on a pair related by a 1.5 px shift):

    >>> import cv2, numpy as np
    >>> from hdreg.config import method_estimator
    >>> from hdreg.estimators.base import IdentityEstimator
    >>> noise = np.random.default_rng(0).integers(0, 256, (96, 96), np.uint8)
    >>> a = cv2.GaussianBlur(noise, (0, 0), 2)
    >>> b = cv2.warpAffine(a, np.float32([[1, 0, -1.5], [0, 1, 0]]), (96, 96))
    >>> est = RefinedEstimator(IdentityEstimator(), method_estimator("ecc")).estimate([a], [b])
    >>> est.details[0]["refine_kept"], round(float(est.H_a_from_b[0, 0, 2]), 1)
    (True, 1.5)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from hdreg.estimators._checks import check_float, check_gray_u8
from hdreg.estimators.base import Estimate, Estimator, PairResult
from hdreg.geometry_np import coverage_mask, folds, rect_corners, zncc

__all__ = [
    "PhotometricComparison",
    "RefinedEstimator",
    "Refinement",
    "Refiner",
    "alignment_correlation",
    "compare_estimates",
    "warp_a_onto_b",
]
# Pixels beyond the bilinear 2×2 footprint that an interpolation reads, per side.
_MARGINS = {cv2.INTER_LINEAR: 0, cv2.INTER_CUBIC: 1}


def warp_a_onto_b(
    image_a: np.ndarray,
    H_a_from_b: np.ndarray,
    size_b: tuple[int, int],
    *,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, np.ndarray]:
    """A resampled on B's pixel grid, ``A(H_a_from_b @ p_b)``, and the mask of B's pixels
    whose sample uses only pixels of A (no border fill).

    Args:
        image_a: ``(H_a, W_a)`` uint8 or float32.
        H_a_from_b: ``(3, 3)``, maps pixel coordinates of B into A.
        size_b: ``(width, height)`` of B.
        interpolation: ``cv2.INTER_LINEAR`` (2×2 neighbours; the mask is then the one
            ECCEstimator scores with) or ``cv2.INTER_CUBIC`` (4×4 neighbours).

    Returns:
        ``warped (H_b, W_b)`` (A's dtype) and ``inside (H_b, W_b) bool``.
    """
    if interpolation not in _MARGINS:
        raise ValueError("interpolation must be cv2.INTER_LINEAR or cv2.INTER_CUBIC")
    warped = cv2.warpPerspective(
        image_a, H_a_from_b, size_b, flags=interpolation | cv2.WARP_INVERSE_MAP
    )
    size_a = (image_a.shape[1], image_a.shape[0])
    return warped, coverage_mask(H_a_from_b, size_a, size_b, margin=_MARGINS[interpolation])


def alignment_correlation(
    image_a: np.ndarray, image_b: np.ndarray, H_a_from_b: np.ndarray
) -> tuple[float, float]:
    """``(correlation, overlap)`` of one estimate: ZNCC between B and A warped onto B over the
    pixels of B that map inside A (NaN when that region is empty or flat), and the fraction of
    B's pixels it covers. The same number ECC reports as ``details["correlation"]``."""
    image_a = check_gray_u8(image_a, "image_a")
    image_b = check_gray_u8(image_b, "image_b")
    warped, inside = warp_a_onto_b(image_a, H_a_from_b, (image_b.shape[1], image_b.shape[0]))
    if not inside.any():
        return float("nan"), 0.0
    return zncc(image_b, warped, inside), float(inside.mean())


@dataclass(frozen=True)
class PhotometricComparison:
    """ZNCC of B with A warped by each of two estimates, over the same pixels of B.

    ``correlation_first``, ``correlation_second`` in [-1, 1] (NaN when the common region is
    flat or empty); ``common`` the fraction of B's pixels that map inside A under both.
    """

    correlation_first: float
    correlation_second: float
    common: float


def compare_estimates(
    image_a: np.ndarray,
    image_b: np.ndarray,
    H_first_a_from_b: np.ndarray,
    H_second_a_from_b: np.ndarray,
) -> PhotometricComparison:
    """How well two estimates ``H_a_from_b`` align B with A, measured the same way for both:
    ZNCC between B and A resampled bicubically onto B (full resolution, no smoothing) over the
    pixels of B whose samples lie inside A under both estimates."""
    image_a = check_gray_u8(image_a, "image_a")
    image_b = check_gray_u8(image_b, "image_b")
    # float32: bicubic overshoot must not be clipped to [0, 255].
    a = image_a.astype(np.float32)
    size_b = (image_b.shape[1], image_b.shape[0])
    cubic = cv2.INTER_CUBIC
    warped_1, inside_1 = warp_a_onto_b(a, H_first_a_from_b, size_b, interpolation=cubic)
    warped_2, inside_2 = warp_a_onto_b(a, H_second_a_from_b, size_b, interpolation=cubic)
    common = inside_1 & inside_2
    if not common.any():
        return PhotometricComparison(float("nan"), float("nan"), 0.0)
    return PhotometricComparison(
        zncc(image_b, warped_1, common), zncc(image_b, warped_2, common), float(common.mean())
    )


@dataclass
class Refinement:
    """The outcome of refining one estimate.

    Attributes:
        H_a_from_b: ``(3, 3)`` the estimate to use: the refined one when ``kept``, else the start.
        kept: whether the refined estimate replaced the start.
        note: why it was not kept (``""`` when kept).
        correlation_start, correlation_refined: ZNCC of the start and of ECC's result over their
            common region (:func:`compare_estimates`; NaN when not measured).
        common: fraction of B inside A under both estimates (0 when not measured).
        seconds: wall time of the refinement, including the comparison.
    """

    H_a_from_b: np.ndarray
    kept: bool
    note: str = ""
    correlation_start: float = float("nan")
    correlation_refined: float = float("nan")
    common: float = 0.0
    seconds: float = 0.0


class Refiner(Protocol):
    """What :class:`RefinedEstimator` needs of a refiner (e.g. ``ECCEstimator``)."""

    name: str

    def refine(
        self, image_a: np.ndarray, image_b: np.ndarray, H_init_a_from_b: np.ndarray
    ) -> PairResult: ...


class RefinedEstimator(Estimator):
    """``base`` followed by ``refiner`` on each successful estimate; returns ``H_a_from_b``.

    Args:
        base: any estimator (classical or learned).
        refiner: polishes an estimate: ``refiner.refine(image_a, image_b, H_init_a_from_b)``
            returns a :class:`~hdreg.estimators.PairResult` (e.g. an ``ECCEstimator`` built
            from hdreg/configs/method/ecc.yaml: its ``refine_levels``, ``iterations``, … apply).
        min_common: the refined estimate is considered only when at least this fraction of B's
            pixels maps inside A under both estimates (in (0, 1]); below it the two estimates
            are not compared on enough of B and the start is kept.
        name: name in result tables (default ``"<base name>+<refiner name>"``).

    A pair the base failed stays failed (with the base's reason); a pair on which the refinement
    fails or does not help keeps the base's estimate and is *not* failed. Per-pair seconds are
    the base's time plus the refinement's. Each pair the base did not fail gets the details
    ``refined_by``, ``refine_kept``, ``refine_note`` and the ``refine_correlation_start``,
    ``refine_correlation_refined``, ``refine_common`` of the comparison (:class:`Refinement`),
    and ``<refiner name>_kept`` (which survives a chain of refinements), beside the base's own
    details.
    """

    def __init__(
        self,
        base: Estimator,
        refiner: Refiner,
        *,
        min_common: float = 0.1,
        name: str | None = None,
    ) -> None:
        if not isinstance(base, Estimator):
            raise TypeError(f"base must be an Estimator, got {type(base).__name__}")
        if not callable(getattr(refiner, "refine", None)) or not getattr(refiner, "name", None):
            raise TypeError(
                "refiner must have a name and a refine(image_a, image_b, H_init_a_from_b) "
                f"method (e.g. ECCEstimator), got {type(refiner).__name__}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        self.base = base
        self.refiner = refiner
        self.min_common = check_float("min_common", min_common, above=0.0, at_most=1.0)
        self.name = name if name is not None else f"{base.name}+{refiner.name}"

    @property
    def per_pair(self) -> bool:  # type: ignore[override]
        return self.base.per_pair

    def __repr__(self) -> str:
        return (
            f"RefinedEstimator(base={self.base!r}, refiner={self.refiner!r}, "
            f"min_common={self.min_common}, name={self.name!r})"
        )

    def refine_pair(
        self, image_a: np.ndarray, image_b: np.ndarray, H_start_a_from_b: np.ndarray
    ) -> Refinement:
        """Refine one starting estimate ``H_start_a_from_b (3, 3)`` (maps B into A) and keep
        the result only if the refiner succeeded, did not fold B and did not lower the
        correlation."""
        t0 = time.perf_counter()
        H_start = np.asarray(H_start_a_from_b, np.float64)
        outcome = self._refine(image_a, image_b, H_start)
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def _refine(self, image_a: np.ndarray, image_b: np.ndarray, H_start: np.ndarray) -> Refinement:
        who = self.refiner.name
        result = self.refiner.refine(image_a, image_b, H_start)
        if result.H_a_from_b is None:
            return Refinement(H_start, False, f"{who} failed: {result.reason}")
        H_refined = np.asarray(result.H_a_from_b, np.float64)
        corners_b = rect_corners((image_b.shape[1], image_b.shape[0]))
        if folds(H_refined, corners_b) and not folds(H_start, corners_b):
            note = f"{who}'s estimate folds B (a corner through the horizon, or a non-convex quad)"
            return Refinement(H_start, False, note)
        cmp = compare_estimates(image_a, image_b, H_start, H_refined)
        scores = {
            "correlation_start": cmp.correlation_first,
            "correlation_refined": cmp.correlation_second,
            "common": cmp.common,
        }
        if cmp.common < self.min_common:
            note = (
                f"only {cmp.common:.1%} of B lies inside A under both estimates, need "
                f"{self.min_common:.0%} to compare them"
            )
            return Refinement(H_start, False, note, **scores)
        if not (np.isfinite(cmp.correlation_first) and np.isfinite(cmp.correlation_second)):
            note = "cannot compare the estimates: the common region of B is flat"
            return Refinement(H_start, False, note, **scores)
        if cmp.correlation_second < cmp.correlation_first:
            note = (
                f"{who} made the correlation worse ({cmp.correlation_second:.4f} < "
                f"{cmp.correlation_first:.4f} at the start)"
            )
            return Refinement(H_start, False, note, **scores)
        return Refinement(H_refined, True, "", **scores)

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        return self.refine_estimate(images_a, images_b, self.base.estimate(images_a, images_b))

    def refine_estimate(
        self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray], start: Estimate
    ) -> Estimate:
        """Refine ``start``, the base's estimate of these pairs (what :meth:`estimate` does
        after running the base; the evaluation hands it the base's results when it has scored
        the base alone on the same pairs, so that ``x`` and ``x+ecc`` estimate ``x`` once)."""
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        n = len(images_a)
        if len(start) != n:
            raise RuntimeError(f"{self.base.name} returned {len(start)} results for {n} pairs")
        H = np.array(start.H_a_from_b, np.float64, copy=True)
        seconds = np.array(start.seconds, np.float64, copy=True)
        details: list[dict[str, Any]] = [dict(d) for d in start.details]
        for i in np.flatnonzero(~np.asarray(start.failed, bool)):
            outcome = self.refine_pair(images_a[i], images_b[i], H[i])
            H[i] = outcome.H_a_from_b
            seconds[i] += outcome.seconds
            details[i].update(
                refined_by=self.refiner.name,
                refine_kept=outcome.kept,
                refine_note=outcome.note,
                refine_correlation_start=outcome.correlation_start,
                refine_correlation_refined=outcome.correlation_refined,
                refine_common=outcome.common,
            )
            # in a chain (wide+adapt+ecc) the refine_* keys are the last refiner's: each one
            # also leaves its own verdict under its name
            details[i][f"{self.refiner.name}_kept"] = outcome.kept
        return Estimate(
            H_a_from_b=H,
            failed=np.array(start.failed, bool, copy=True),
            seconds=seconds,
            reasons=list(start.reasons),
            details=details,
        )
