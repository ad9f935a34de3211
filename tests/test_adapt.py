"""Per-pair adaptation (+adapt, hdreg align --adapt): the unsupervised loss optimised on one pair."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hdreg.apps.align import _spec
from hdreg.config import method_estimator
from hdreg.estimators.adapt import PhotometricAdapter, photometric_agreement
from hdreg.estimators.refinement import RefinedEstimator
from hdreg.estimators.registry import parse_checkpoint_spec, parse_method_spec, resolve
from hdreg.geometry_np import rect_corners

from .conftest import textured_image

W, H = 320, 240
CORNERS_B = rect_corners((W, H))
CORNERS_IN_A = np.array([[14, 8], [303, 15], [310, 228], [6, 225]], np.float64)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(
        np.float64
    )


def corner_error(H_a_from_b: np.ndarray, H_true: np.ndarray) -> float:
    def project(M: np.ndarray) -> np.ndarray:
        q = np.c_[CORNERS_B, np.ones(4)] @ M.T
        return q[:, :2] / q[:, 2:]

    return float(np.linalg.norm(project(H_a_from_b) - project(H_true), axis=1).mean())


H_TRUE = homography(CORNERS_B, CORNERS_IN_A)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    a = textured_image(H, W, seed=5)
    b = cv2.warpPerspective(a, H_TRUE, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return a, b


@pytest.fixture(scope="module")
def adapter() -> PhotometricAdapter:
    return method_estimator("adapt")  # hdreg/configs/method/adapt.yaml


def start(offsets: np.ndarray) -> np.ndarray:
    return homography(CORNERS_B, CORNERS_IN_A + offsets)


class TestPhotometricAdapter:
    def test_recovers_a_few_pixels(self, pair, adapter):
        a, b = pair
        H0 = start(np.array([[3.0, -2.0], [-2.5, 2.0], [2.0, 3.0], [-3.0, -1.5]]))
        result = adapter.refine(a, b, H0)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(H0, H_TRUE) > 2.0
        assert corner_error(result.H_a_from_b, H_TRUE) < 0.3
        assert result.details["adapt_loss"] < result.details["adapt_loss_start"]

    @pytest.mark.parametrize("seed", range(4))
    def test_never_returns_a_worse_photometric_score(self, pair, adapter, seed):
        a, b = pair
        rng = np.random.default_rng(seed)
        # from the truth itself (nothing to gain) to a start far outside the basin
        scale = [0.0, 1.0, 6.0, 20.0][seed]
        H0 = start(rng.uniform(-1, 1, (4, 2)) * scale)
        side = adapter.levels[-1]
        loss_start = photometric_agreement(a, b, H0, max_side=side)
        result = adapter.refine(a, b, H0)
        if result.H_a_from_b is None:  # nothing better found: the start is kept
            assert "no step lowered" in result.reason
            return
        assert photometric_agreement(a, b, result.H_a_from_b, max_side=side) < loss_start
        assert result.details["adapt_loss_start"] == pytest.approx(loss_start, rel=1e-9)

    def test_loss_ignores_a_global_brightness_and_contrast_change(self, pair):
        a, b = pair
        H0 = start(np.full((4, 2), 1.5))
        darker = np.clip(0.6 * b.astype(np.float64) + 30, 0, 255).astype(np.uint8)
        assert photometric_agreement(a, darker, H0) == pytest.approx(
            photometric_agreement(a, b, H0), abs=0.02
        )

    def test_fails_without_overlap_and_on_a_bad_start(self, pair, adapter):
        a, b = pair
        far = np.array([[1, 0, 5000.0], [0, 1, 0], [0, 0, 1]])
        assert "lands inside A" in adapter.refine(a, b, far).reason
        assert "cannot adapt" in adapter.refine(a, b, np.zeros((3, 3))).reason

    def test_rejects_bad_parameters(self):
        kw = dict(steps=5, levels=[64], lr=0.1, blur=0.0, stride=2, eps=0.02, patience=3,
                  min_overlap=0.1)  # fmt: skip
        PhotometricAdapter(**kw)
        for key, value in [("steps", 0), ("levels", []), ("levels", 64), ("lr", 0.0)]:
            with pytest.raises(ValueError, match=key):
                PhotometricAdapter(**{**kw, key: value})


class TestAdaptSpecs:
    def test_chained_refinements_parse_in_order(self):
        spec = parse_checkpoint_spec("iterative+adapt+ecc")
        assert spec.checkpoint.name == "iterative.pt" and spec.refine == "adapt+ecc"
        assert parse_method_spec("sift+adapt", ["sift"]).refine == "adapt"
        with pytest.raises(ValueError, match="unknown refinement 'foo'"):
            parse_method_spec("sift+adapt+foo", ["sift"])

    def test_build_chains_the_refiners(self):
        est = resolve(parse_method_spec("sift+adapt+ecc", ["sift"]))
        assert isinstance(est, RefinedEstimator) and est.refiner.name == "ecc"
        assert isinstance(est.base, RefinedEstimator) and est.base.refiner.name == "adapt"
        assert est.base.base.name == "sift" and est.name == "sift+adapt+ecc"

    def test_each_refiner_of_a_chain_leaves_its_verdict(self, pair):
        a, b = pair
        est = resolve(parse_method_spec("sift+adapt+ecc", ["sift"]))
        details = est.estimate([a], [b]).details[0]
        assert {"adapt_kept", "ecc_kept"} <= set(details)
        assert details["refined_by"] == "ecc"  # the refine_* keys are the last refiner's

    def test_align_adapt_goes_before_ecc(self):
        default = _spec(None, None, None, 20)  # the default: wide+ecc
        assert default.refine == "adapt+ecc" and default.text == "wide"
        assert _spec("sift", None, None, 5).refine == "adapt"
        assert _spec(None, "iterative", "ecc", 5).refine == "adapt+ecc"
        with pytest.raises(ValueError, match="--adapt must be"):
            _spec("sift", None, None, 0)
