"""One interface for every homography estimator, learned or classical.

An :class:`Estimator` takes a batch of image pairs ``(A, B)`` — 8-bit grayscale arrays, sizes
free — and returns, per pair, ``H_a_from_b`` (maps B's pixels into A) and a ``failed`` flag. A
failed pair carries the identity, which is how the evaluation scores it. Classical methods loop
over pairs (:class:`PairwiseEstimator`); learned models batch (``hdreg.models``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

__all__ = [
    "Estimate",
    "Estimator",
    "IdentityEstimator",
    "PairResult",
    "PairwiseEstimator",
    "check_homography",
    "normalized_homography",
]


@dataclass
class PairResult:
    """What a classical method returns for one pair.

    ``H_a_from_b`` is ``None`` when the method failed; ``reason`` then says why (e.g. "12 matches,
    need 8 inliers"). ``details`` carries method-specific extras (keypoints, inlier matches) for
    visualisation; the evaluation ignores it.
    """

    H_a_from_b: np.ndarray | None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Estimate:
    """Per-pair results of one estimator on a batch.

    ``H_a_from_b (N, 3, 3) float64`` (the identity where failed), ``failed (N,) bool``,
    ``seconds (N,)`` wall time per pair, ``reasons`` a failure reason per pair (``""`` if none).
    """

    H_a_from_b: np.ndarray
    failed: np.ndarray
    seconds: np.ndarray
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.failed)

    def notes(self) -> list[str]:
        """A remark per pair for ``pairs.csv`` beside the failure reason (``""`` if none);
        estimates that carry more per pair (e.g. :class:`~hdreg.baselines.refine.RefinedEstimate`)
        say it here."""
        return [""] * len(self)


def check_homography(H: np.ndarray | None, *, cond_max: float = 1e12) -> str | None:
    """Why ``H`` is not a usable homography (``None`` if it is): missing, wrong shape, not
    finite, or (numerically) singular."""
    if H is None:
        return "no homography"
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        return f"homography has shape {H.shape}, expected (3, 3)"
    if not np.isfinite(H).all():
        return "homography is not finite"
    with np.errstate(all="ignore"):
        if not np.isfinite(cond := np.linalg.cond(H)) or cond > cond_max:
            return f"homography is singular (condition number {cond:.3g})"
    return None


def normalized_homography(H: np.ndarray) -> np.ndarray:
    """``H`` scaled so that ``H[2, 2] = 1``, unless that entry is (near) zero (a plane through
    the optical centre: no scaling can make it 1)."""
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 * np.abs(H).max() else H


def _first_line(message: str) -> str:
    """The informative line of an OpenCV error (its text starts with a file:line banner)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error:" in ln] or lines or ["(no message)"]
    return useful[-1][:200]


class Estimator(ABC):
    """Estimates ``H_a_from_b`` for batches of image pairs. Subclasses set ``name``."""

    name: str = "estimator"

    @abstractmethod
    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        """``images_a``, ``images_b``: equal-length sequences of ``(H, W) uint8`` arrays (a pair's
        two images may differ in size)."""


class PairwiseEstimator(Estimator):
    """An estimator that handles one pair at a time (the classical methods).

    Subclasses implement :meth:`estimate_pair`. Whatever happens inside it — too few matches, an
    OpenCV error, a non-finite or singular result — the pair is reported as failed with the
    reason, never raised: one bad pair must not end an evaluation run.
    """

    @abstractmethod
    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        """``H_a_from_b`` for one pair of ``(H, W) uint8`` images."""

    def run_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        """:meth:`estimate_pair` with its failures turned into a result."""
        try:
            result = self.estimate_pair(image_a, image_b)
        except (cv2.error, np.linalg.LinAlgError) as exc:
            # OpenCV raises cv2.error on degenerate input (e.g. ECC on a flat or non-overlapping
            # pair): a failure of the method on this pair, counted and reported. Other exceptions
            # are bugs and propagate.
            return PairResult(None, f"{type(exc).__name__}: {_first_line(str(exc))}")
        if result.H_a_from_b is not None:
            problem = check_homography(result.H_a_from_b)
            if problem is not None:
                return PairResult(None, problem, result.details)
            H = np.asarray(result.H_a_from_b, dtype=np.float64)
            if abs(H[2, 2]) > 1e-12:
                H = H / H[2, 2]
            result.H_a_from_b = H
        elif result.reason is None:
            result.reason = "no homography"
        return result

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        n = len(images_a)
        H = np.tile(np.eye(3), (n, 1, 1))
        failed = np.zeros(n, bool)
        seconds = np.zeros(n)
        reasons = [""] * n
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            t0 = time.perf_counter()
            result = self.run_pair(a, b)
            seconds[i] = time.perf_counter() - t0
            if result.H_a_from_b is None:
                failed[i] = True
                reasons[i] = result.reason or "failed"
            else:
                H[i] = result.H_a_from_b
        return Estimate(H, failed, seconds, reasons)


class IdentityEstimator(PairwiseEstimator):
    """The identity: the error of doing nothing (for ρ = 32, MACE ≈ 24.5 px)."""

    name = "identity"

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        return PairResult(np.eye(3))
