"""One interface for every homography estimator, learned or classical.

An :class:`Estimator` takes a batch of image pairs ``(A, B)`` — 8-bit grayscale arrays, sizes
free — and returns an :class:`Estimate`: per pair ``H_a_from_b`` (maps B's pixels into A), a
``failed`` flag with its reason, the wall time and a dict of details. A failed pair carries the
identity, which is how the evaluation scores it. Classical methods work pair by pair
(:class:`PairwiseEstimator`); learned models batch (``hdreg.models``); any estimator can be
refined (:class:`hdreg.estimators.refinement.RefinedEstimator`). :class:`Result` is one pair's
answer as the Python API gives it (:func:`hdreg.estimate`).

Details (``Estimate.details[i]``, a dict per pair): entries whose value is a string, a number or
a bool are *reportable* (:func:`reportable`): reports and ``homography.json`` show them as they
are, whatever the method; other entries (arrays, lists) are extras for pictures. Keys in use:

* keypoint methods: ``matches``, ``inliers`` (counts); ``keypoints_a``, ``keypoints_b``,
  ``match_pairs``, ``inlier_mask`` (arrays);
* ECC: ``correlation``, ``overlap``; ``levels`` (per pyramid level);
* a refinement: ``refined_by`` (the refiner's name), ``refine_kept`` (bool), ``refine_note``
  (why it was not kept), ``refine_correlation_start``, ``refine_correlation_refined``,
  ``refine_common``.

Example:
    >>> import numpy as np
    >>> image = np.zeros((8, 8), np.uint8)
    >>> est = IdentityEstimator().estimate([image], [image])
    >>> est.H_a_from_b.shape, bool(est.failed[0]), est.details
    ((1, 3, 3), False, [{}])
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from hdreg.geometry_np import check_homography, normalize_homography

__all__ = [
    "ALIGN_MIN_CONFIDENCE",
    "Estimate",
    "Estimator",
    "IdentityEstimator",
    "PairResult",
    "PairwiseEstimator",
    "Result",
    "reportable",
]

#: the confidence under which ``hdreg align`` and :func:`hdreg.estimate` report a learned
#: estimate as failed (the evaluation reports every estimate, and the confidence beside it)
ALIGN_MIN_CONFIDENCE = 0.2


@dataclass
class PairResult:
    """What a classical method returns for one pair.

    ``H_a_from_b`` is ``None`` when the method failed; ``reason`` then says why (e.g. "12 matches,
    need 8 inliers"). ``details``: the pair's details (see the module docstring).
    """

    H_a_from_b: np.ndarray | None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Estimate:
    """Per-pair results of one estimator on a batch of ``N`` pairs.

    ``H_a_from_b (N, 3, 3) float64`` (the identity where failed), ``failed (N,) bool``,
    ``seconds (N,)`` wall time per pair, ``reasons`` a failure reason per pair (``""`` if none),
    ``details`` a dict per pair (default: empty ones; see the module docstring).
    """

    H_a_from_b: np.ndarray
    failed: np.ndarray
    seconds: np.ndarray
    reasons: list[str]
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.failed)
        if not self.details:
            self.details = [{} for _ in range(n)]
        lengths = (len(self.H_a_from_b), len(self.seconds), len(self.reasons), len(self.details))
        if any(k != n for k in lengths):
            raise ValueError(
                f"Estimate: {n} failed flags but (H, seconds, reasons, details) lengths {lengths}"
            )

    def __len__(self) -> int:
        return len(self.failed)


def reportable(details: dict[str, Any]) -> dict[str, str | int | float | bool | None]:
    """The entries of a pair's ``details`` that reports show: strings, numbers and bools (numpy
    scalars become Python ones; a non-finite float becomes ``None``, as JSON has no NaN).

    >>> reportable({"matches": np.int64(12), "correlation": float("nan"), "mask": np.zeros(3)})
    {'matches': 12, 'correlation': None}
    """
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in details.items():
        if isinstance(value, np.generic) and value.ndim == 0:
            value = value.item()
        if isinstance(value, str | bool | int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
    return out


@dataclass(frozen=True)
class Result:
    """The homography between two images: one pair of an :class:`Estimate`.

    Attributes:
        b_from_a: ``(3, 3)`` float64, maps pixels of A into B (the identity when failed).
        a_from_b: ``(3, 3)`` float64, its inverse. Both are divided by their ``[2, 2]`` entry.
        failed: the method found no homography it trusts; ``reason`` says why.
        reason: ``""`` unless failed.
        details: what the method reports (matches and inliers, confidence, correlation, …).
        method: the method spec that ran.
        seconds: wall time of the estimate.

    >>> image = np.zeros((8, 8), np.uint8)
    >>> result = Result.from_estimate(IdentityEstimator().estimate([image], [image]), 0, "identity")
    >>> result.failed, result.to_json()["b_from_a"][2]
    (False, [0.0, 0.0, 1.0])
    """

    b_from_a: np.ndarray
    a_from_b: np.ndarray
    failed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    seconds: float = 0.0

    @classmethod
    def from_estimate(cls, estimate: Estimate, index: int = 0, method: str = "") -> Result:
        """Pair ``index`` of ``estimate`` (whose ``H_a_from_b`` it inverts and normalises)."""
        a_from_b = normalize_homography(np.asarray(estimate.H_a_from_b[index], np.float64))
        b_from_a = normalize_homography(np.linalg.inv(a_from_b))
        failed = bool(estimate.failed[index])
        return cls(
            b_from_a, a_from_b, failed, estimate.reasons[index] if failed else "",
            dict(estimate.details[index]), str(method), float(estimate.seconds[index]),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready values: matrices as nested lists, the reportable details."""
        return {
            "method": self.method,
            "failed": self.failed,
            "reason": self.reason,
            "b_from_a": self.b_from_a.tolist(),
            "a_from_b": self.a_from_b.tolist(),
            "seconds": self.seconds,
            "details": reportable(self.details),
        }


def _first_line(message: str) -> str:
    """The informative line of an OpenCV error (its text starts with a file:line banner)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error:" in ln] or lines or ["(no message)"]
    return useful[-1][:200]


class Estimator(ABC):
    """Estimates ``H_a_from_b`` for batches of image pairs. Subclasses set ``name``.

    ``per_pair``: True when the estimator handles each pair on its own on the CPU (the
    classical methods), so that the pairs of a batch may be split across processes with the
    same results; learned models batch on their device and say False.
    """

    name: str = "estimator"
    per_pair: bool = False

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

    per_pair = True

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
            result.H_a_from_b = normalize_homography(result.H_a_from_b)
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
        details: list[dict[str, Any]] = [{} for _ in range(n)]
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            t0 = time.perf_counter()
            result = self.run_pair(a, b)
            seconds[i] = time.perf_counter() - t0
            details[i] = result.details
            if result.H_a_from_b is None:
                failed[i] = True
                reasons[i] = result.reason or "failed"
            else:
                H[i] = result.H_a_from_b
        return Estimate(H, failed, seconds, reasons, details)


class IdentityEstimator(PairwiseEstimator):
    """The identity: the error of doing nothing (for ρ = 32, MACE ≈ 24.5 px)."""

    name = "identity"

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        return PairResult(np.eye(3))
