"""Corner errors and their summary: the one scoring code for every method and benchmark.

The corner error of a pair maps four reference points through the estimated and the true
homography and averages the Euclidean distances between the results (in pixels of the frame the
points land in):

* synthetic patches: the corners of patch B, mapped into A (``H_a_from_b``); the true positions
  are ``corners + offsets`` (the four-point label, docs/conventions.md). Its mean is the MACE.
* real pairs (HPatches style): the corners of image A mapped into image B by the estimated
  ``H_b_from_a = H_a_from_b⁻¹`` and by the ground truth, in pixels of B. When the ground truth
  sends a corner of A behind the camera, the vertices of the part of A that lands inside B take
  the corners' place (:meth:`hdreg.evaluation.benchmarks.EvalPairs.from_real`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hdreg.geometry_np import corner_distance, project

__all__ = [
    "AUC_THRESHOLDS",
    "SUMMARY_KEYS",
    "THRESHOLDS",
    "corner_error",
    "error_auc",
    "summarize",
]

THRESHOLDS = (1, 3, 5, 10)
AUC_THRESHOLDS = (1, 3, 5)
SUMMARY_KEYS = (
    "mace", "median", "lt1", "lt3", "lt5", "lt10", "auc1", "auc3", "auc5",
    "fail_rate", "ms_per_pair", "n",
)  # fmt: skip


def corner_error(
    H_dst_from_src: np.ndarray,
    points_src: np.ndarray,
    points_dst_true: np.ndarray,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Per pair, the mean distance between ``points_src`` mapped by the estimate and their true
    positions ``points_dst_true`` (:func:`hdreg.geometry.corner_distance` of
    :func:`hdreg.geometry_np.project`). Shapes ``(N, 3, 3)``, ``(N, K, 2)``, ``(N, K, 2)`` →
    ``(N,)``; ``counts (N,)``, when given: the mean is over the first ``counts[i]`` points of
    pair ``i`` (the others pad). A non-finite estimate scores ``inf``.

    Example (a hand-computed case): the identity against a 3-4-5 shift of every corner is 5 px;
    of a triangle's three vertices (a fourth point pads) only one moving 6 px gives 2 px.

    >>> c = np.array([[[0, 0], [9, 0], [9, 9], [0, 9]]], float)
    >>> corner_error(np.eye(3)[None], c, c + [3, 4]).tolist()
    [5.0]
    >>> corner_error(np.eye(3)[None], c, c + [[0, 0], [0, 6], [0, 0], [50, 0]], [3]).tolist()
    [2.0]
    """
    pred = project(H_dst_from_src, points_src)
    true = np.asarray(points_dst_true, np.float64)
    if true.shape != pred.shape:
        raise ValueError(f"points_dst_true has shape {true.shape}, expected {pred.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        if counts is None:
            dist = corner_distance(pred, true)
        else:
            counts = np.asarray(counts)
            if (
                counts.shape != pred.shape[:1]
                or not ((counts >= 1) & (counts <= pred.shape[1])).all()
            ):
                raise ValueError(
                    f"counts must be {pred.shape[0]} integers in [1, {pred.shape[1]}], got {counts}"
                )
            diff = pred - true
            each = (diff * diff).sum(-1) ** 0.5
            used = np.arange(pred.shape[1]) < counts[:, None]
            dist = np.where(used, each, 0.0).sum(-1) / counts
    return np.where(np.isnan(dist), np.inf, dist)


def summarize(errors: np.ndarray, failed: np.ndarray, seconds: np.ndarray) -> dict[str, float]:
    """The summary of one method on one benchmark, keys ``SUMMARY_KEYS``.

    ``mace`` is the mean corner error, ``median`` its median, ``ltK`` the share of pairs under K px,
    ``aucK`` the area under the cumulative error curve up to K px (:func:`error_auc`),
    ``fail_rate`` the share of failed pairs (scored as the identity in ``errors``), ``ms_per_pair``
    the mean wall time, ``n`` the number of pairs. Errors in pixels, rates in [0, 1].
    """
    errors = np.asarray(errors, np.float64)
    n = len(errors)
    if n == 0:
        raise ValueError("cannot summarize an empty set of pairs")
    out: dict[str, float] = {
        "mace": float(np.mean(errors)),
        "median": float(np.median(errors)),
    }
    for t in THRESHOLDS:
        out[f"lt{t}"] = float(np.mean(errors < t))
    for t, auc in zip(AUC_THRESHOLDS, error_auc(errors, AUC_THRESHOLDS), strict=True):
        out[f"auc{t}"] = auc
    out["fail_rate"] = float(np.mean(np.asarray(failed, bool)))
    out["ms_per_pair"] = float(np.mean(seconds) * 1e3)
    out["n"] = n
    return out


def error_auc(errors: np.ndarray, thresholds: Sequence[float] = AUC_THRESHOLDS) -> list[float]:
    """Area under the cumulative error curve from 0 to each threshold ``t``, divided by ``t``.

    The curve joins the points (0, 0) and (e_i, i/N) for the sorted errors e_1 ≤ … ≤ e_N (the
    share of pairs with an error at most e_i) by straight lines, and stays flat after the last
    error below ``t``: the AUC of SuperGlue's pose evaluation, which LightGlue and glue-factory
    report for HPatches homographies. 1.0 means every error is 0; infinite errors count as misses.

    >>> error_auc(np.array([0.5, 2.0, 4.0, 10.0]), (1, 3, 5))
    [0.1875, 0.375, 0.525]
    """
    errors = np.sort(np.asarray(errors, np.float64).ravel())
    if len(errors) == 0:
        raise ValueError("cannot compute the AUC of an empty set of errors")
    if np.isnan(errors).any():
        raise ValueError("errors must not be NaN (score a failed pair as the identity or inf)")
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    out = []
    for t in thresholds:
        if not t > 0:
            raise ValueError(f"AUC thresholds must be > 0, got {t}")
        last = int(np.searchsorted(errors, t))
        e = np.r_[errors[:last], t]
        r = np.r_[recall[:last], recall[last - 1]]
        out.append(float(np.sum((e[1:] - e[:-1]) * (r[1:] + r[:-1]) / 2) / t))
    return out
