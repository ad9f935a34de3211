"""Keypoint baselines: detect and describe, match, robust homography (SIFT/ORB/AKAZE/BRISK).

Pipeline for one pair ``(A, B)`` of ``(H, W) uint8`` images (sizes free, may differ):

1. detect keypoints and compute descriptors in both images (detector created once per
   estimator, not per pair);
2. match every descriptor of B to its two nearest neighbours in A (brute force; L2 for SIFT,
   Hamming for the binary descriptors of ORB, AKAZE and BRISK) and keep a match when it passes
   Lowe's ratio test; optionally keep only mutual nearest neighbours (cross check);
3. ``cv2.findHomography(points_b, points_a, ...)`` with RANSAC, LMedS or MAGSAC++.

Conventions (docs/conventions.md): pixel ``(x, y)`` with ``(0, 0)`` the centre of the top-left
pixel (OpenCV keypoints use it); the result is ``H_a_from_b``, which maps pixel coordinates of B
into A (``p_a ~ H_a_from_b @ p_b``) — hence B's points are the source of ``findHomography``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from hdreg.estimators._checks import check_float, check_gray_u8, check_int
from hdreg.estimators.base import PairResult, PairwiseEstimator

__all__ = ["DETECTORS", "ROBUST_METHODS", "FeatureEstimator", "fit_homography"]

DETECTORS = ("akaze", "brisk", "orb", "sift")
ROBUST_METHODS = {"lmeds": cv2.LMEDS, "magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}

# ORB keeps 500 keypoints by default, too few on 320x240 images with half of them outliers; 2000
# is what ORB+RANSAC baselines in the deep-homography literature typically use.
ORB_DEFAULT_FEATURES = 2000


class FeatureEstimator(PairwiseEstimator):
    """Keypoints + descriptor matching + robust fit: returns ``H_a_from_b`` (maps B into A).

    Every parameter is explicit: the defaults are ``hdreg/configs/method/<name>.yaml``, built by
    ``hdreg.config.method_estimator("sift")`` (or ``hydra.utils.instantiate``).

    Args:
        detector: ``"sift"``, ``"orb"``, ``"akaze"`` or ``"brisk"`` (OpenCV implementations).
        ratio: Lowe's ratio test: keep a match when its distance is below ``ratio`` times the
            distance of the second nearest neighbour (in (0, 1]).
        cross_check: additionally keep only mutual nearest neighbours.
        robust: ``"ransac"`` (cv2.RANSAC), ``"lmeds"`` (cv2.LMEDS) or ``"magsac"``
            (cv2.USAC_MAGSAC, MAGSAC++).
        reproj_threshold: inlier threshold in pixels of A (ignored by LMedS).
        confidence: required confidence of the robust estimator, in (0, 1).
        max_iters: maximum number of robust iterations.
        min_matches: minimum number of matches after filtering and minimum number of inliers
            (>= 4, the minimal sample of a homography); fewer means the pair failed.
        max_features: keep at most this many keypoints per image, the strongest ones
            (0: the detector's default, unlimited except for ORB, which gets 2000).
        sift_n_octave_layers, sift_sigma, sift_contrast_threshold, sift_edge_threshold: SIFT's
            own parameters (``cv2.SIFT_create``), required by SIFT, ignored by the others.
        name: name in result tables (default: the detector's name).

    ``estimate_pair``'s ``PairResult.details``: the counts ``matches`` (after the filters) and
    ``inliers`` (of the robust fit; 0 when it was not reached or found nothing), and for
    pictures ``keypoints_a (K_a, 2)``, ``keypoints_b (K_b, 2)`` float64 pixel coordinates,
    ``match_pairs (M, 2)`` int64 pairs ``(index_a, index_b)`` that passed the filters and
    ``inlier_mask (M,)`` bool.
    """

    def __init__(
        self,
        *,
        detector: str,
        ratio: float,
        cross_check: bool,
        robust: str,
        reproj_threshold: float,
        confidence: float,
        max_iters: int,
        min_matches: int,
        max_features: int,
        sift_n_octave_layers: int | None = None,
        sift_sigma: float | None = None,
        sift_contrast_threshold: float | None = None,
        sift_edge_threshold: float | None = None,
        name: str | None = None,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        if robust not in ROBUST_METHODS:
            raise ValueError(
                f"robust must be one of {', '.join(sorted(ROBUST_METHODS))}, got {robust!r}"
            )
        if not isinstance(cross_check, bool | np.bool_):
            raise ValueError(f"cross_check must be a bool, got {cross_check!r}")
        self.detector = detector
        self.ratio = check_float("ratio", ratio, above=0.0, at_most=1.0)
        self.cross_check = bool(cross_check)
        self.robust = robust
        self.reproj_threshold = check_float("reproj_threshold", reproj_threshold, above=0.0)
        self.confidence = check_float("confidence", confidence, above=0.0, below=1.0)
        self.max_iters = check_int("max_iters", max_iters, 1)
        self.min_matches = check_int("min_matches", min_matches, 4)
        self.max_features = check_int("max_features", max_features, 0)
        sift = {
            "sift_n_octave_layers": sift_n_octave_layers,
            "sift_sigma": sift_sigma,
            "sift_contrast_threshold": sift_contrast_threshold,
            "sift_edge_threshold": sift_edge_threshold,
        }
        missing = [k for k, v in sift.items() if v is None]
        if detector == "sift" and missing:
            raise ValueError(
                f"the SIFT detector needs {', '.join(missing)} (hdreg/configs/method/sift.yaml)"
            )
        self.sift_n_octave_layers = None
        self.sift_sigma = self.sift_contrast_threshold = self.sift_edge_threshold = None
        if detector == "sift":
            self.sift_n_octave_layers = check_int("sift_n_octave_layers", sift_n_octave_layers, 1)
            self.sift_sigma = check_float("sift_sigma", sift_sigma, above=0.0)
            self.sift_contrast_threshold = check_float(
                "sift_contrast_threshold", sift_contrast_threshold, at_least=0.0
            )
            self.sift_edge_threshold = check_float(
                "sift_edge_threshold", sift_edge_threshold, above=0.0
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        self.name = name if name is not None else detector
        # OpenCV objects cannot be pickled: created on first use, dropped by __getstate__.
        self._detector: Any = None
        self._matcher: Any = None

    def __repr__(self) -> str:
        return (
            f"FeatureEstimator(detector={self.detector!r}, ratio={self.ratio}, "
            f"cross_check={self.cross_check}, robust={self.robust!r}, "
            f"reproj_threshold={self.reproj_threshold}, min_matches={self.min_matches}, "
            f"max_features={self.max_features}, name={self.name!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_detector"] = None
        state["_matcher"] = None
        return state

    @property
    def binary(self) -> bool:
        """Whether the descriptors are binary strings (compared with the Hamming distance)."""
        return self.detector != "sift"

    def _get_detector(self) -> Any:
        if self._detector is None:
            if self.detector == "sift":
                self._detector = cv2.SIFT_create(
                    nfeatures=self.max_features,
                    nOctaveLayers=self.sift_n_octave_layers,
                    contrastThreshold=self.sift_contrast_threshold,
                    edgeThreshold=self.sift_edge_threshold,
                    sigma=self.sift_sigma,
                )
            elif self.detector == "orb":
                self._detector = cv2.ORB_create(nfeatures=self.max_features or ORB_DEFAULT_FEATURES)
            elif self.detector == "akaze":
                self._detector = cv2.AKAZE_create()
            else:
                self._detector = cv2.BRISK_create()
        return self._detector

    def _get_matcher(self) -> Any:
        if self._matcher is None:
            # crossCheck=False: OpenCV's cross check cannot be combined with knnMatch(k=2).
            norm = cv2.NORM_HAMMING if self.binary else cv2.NORM_L2
            self._matcher = cv2.BFMatcher(norm, crossCheck=False)
        return self._matcher

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoints ``(K, 2) float64`` (pixel coordinates) and descriptors ``(K, D)`` (None when
        no keypoint was found) of one ``(H, W) uint8`` image."""
        image = check_gray_u8(image, "image")
        det = self._get_detector()
        if self.max_features > 0 and self.detector in ("akaze", "brisk"):
            # BRISK has no keypoint budget, and AKAZE's (max_points) is missing from older
            # OpenCV releases: keep the strongest responses, then describe only those.
            keypoints = det.detect(image, None)
            keypoints = sorted(keypoints, key=lambda k: -k.response)[: self.max_features]
            keypoints, descriptors = det.compute(image, keypoints)
        else:
            keypoints, descriptors = det.detectAndCompute(image, None)
        points = np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2)
        if descriptors is None or len(descriptors) != len(points):
            return points[:0], None
        return points, descriptors

    def match(self, descriptors_a: np.ndarray, descriptors_b: np.ndarray) -> np.ndarray:
        """Matches ``(M, 2) int64`` of ``(index_a, index_b)``: each descriptor of B against A,
        filtered by the ratio test and, with ``cross_check``, by mutual nearest neighbours."""
        matcher = self._get_matcher()
        knn = matcher.knnMatch(descriptors_b, descriptors_a, k=2)
        # A match whose query has a single neighbour (A has one descriptor) cannot pass the ratio
        # test: nothing shows that it is distinctive.
        pairs = [
            (m[0].trainIdx, m[0].queryIdx)
            for m in knn
            if len(m) == 2 and m[0].distance < self.ratio * m[1].distance
        ]
        matches = np.array(pairs, np.int64).reshape(-1, 2)
        if self.cross_check and len(matches):
            nearest_b_of_a = np.full(len(descriptors_a), -1, np.int64)
            for m in matcher.match(descriptors_a, descriptors_b):
                nearest_b_of_a[m.queryIdx] = m.trainIdx
            matches = matches[nearest_b_of_a[matches[:, 0]] == matches[:, 1]]
        return matches

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        image_a = check_gray_u8(image_a, "image_a")
        image_b = check_gray_u8(image_b, "image_b")
        points_a, descriptors_a = self.detect(image_a)
        points_b, descriptors_b = self.detect(image_b)
        details: dict[str, Any] = {
            "matches": 0,
            "inliers": 0,
            "keypoints_a": points_a,
            "keypoints_b": points_b,
            "match_pairs": np.zeros((0, 2), np.int64),
            "inlier_mask": np.zeros(0, bool),
        }
        need = self.min_matches
        for label, points in (("A", points_a), ("B", points_b)):
            if len(points) < need:
                reason = f"only {len(points)} keypoints in {label}, need {need}"
                return PairResult(None, reason, details)

        matches = self.match(descriptors_a, descriptors_b)
        details["matches"] = len(matches)
        details["match_pairs"] = matches
        details["inlier_mask"] = np.zeros(len(matches), bool)
        if len(matches) < need:
            step = "the ratio test and cross check" if self.cross_check else "the ratio test"
            return PairResult(None, f"{len(matches)} matches after {step}, need {need}", details)

        return fit_homography(points_a, points_b, matches, details, self)


def fit_homography(
    points_a: np.ndarray,
    points_b: np.ndarray,
    matches: np.ndarray,
    details: dict[str, Any],
    settings: Any,
) -> PairResult:
    """``H_a_from_b`` fitted robustly to matched keypoints: ``matches (M, 2)`` of ``(index_a,
    index_b)`` into ``points_a``/``points_b (N, 2)`` pixels; ``settings`` carries ``robust``,
    ``reproj_threshold``, ``max_iters``, ``confidence`` and ``min_matches`` (the keypoint and
    learned-matcher estimators). Fills ``details``' ``inlier_mask`` and ``inliers``; fewer than
    ``min_matches`` inliers, or no model, is a failure with its reason."""
    need = settings.min_matches
    H_a_from_b, mask = cv2.findHomography(
        points_b[matches[:, 1]].astype(np.float32),
        points_a[matches[:, 0]].astype(np.float32),
        ROBUST_METHODS[settings.robust],
        settings.reproj_threshold,
        maxIters=settings.max_iters,
        confidence=settings.confidence,
    )
    if H_a_from_b is None or H_a_from_b.shape != (3, 3) or mask is None:
        return PairResult(None, "findHomography found no model", details)
    inliers = mask.ravel().astype(bool)
    details["inlier_mask"] = inliers
    details["inliers"] = int(inliers.sum())
    if inliers.sum() < need:
        return PairResult(None, f"{int(inliers.sum())} inliers, need {need}", details)
    return PairResult(H_a_from_b.astype(np.float64), None, details)
