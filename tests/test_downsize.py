"""The size guard (hdreg.estimators.downsize): large images are estimated on copies, the
homography is that of the full-resolution images, and hdreg align and hdreg.estimate share it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import hdreg
from hdreg.apps.align import align
from hdreg.config import method_estimator
from hdreg.data.decoding import load_gray
from hdreg.estimators.base import Estimate, Estimator
from hdreg.estimators.downsize import Downsized, check_max_side, downsize_image
from hdreg.estimators.features import FeatureEstimator
from hdreg.geometry_np import project

from .conftest import textured_image


class Recording(Estimator):
    """``inner``, remembering the sizes of the images it was given."""

    def __init__(self, inner: Estimator) -> None:
        self.inner, self.name, self.seen = inner, inner.name, []

    def estimate(self, images_a, images_b) -> Estimate:
        self.seen += [(a.shape, b.shape) for a, b in zip(images_a, images_b, strict=True)]
        return self.inner.estimate(images_a, images_b)


def _zoomed_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 480×640 image A, B = A shifted by (12, 8) px and 1.25× larger (800 wide), and the true
    ``H_a_from_b``."""
    a = textured_image(480, 640, seed=11)
    H_a_from_b = np.array([[0.8, 0, 12.0], [0, 0.8, 8.0], [0, 0, 1]])
    b = cv2.warpPerspective(a, H_a_from_b, (800, 600), flags=cv2.WARP_INVERSE_MAP)
    return a, b, H_a_from_b


def _corner_error(H: np.ndarray, H_true: np.ndarray, size: tuple[int, int]) -> float:
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    return float(np.linalg.norm(project(H, corners) - project(H_true, corners), axis=1).mean())


class TestDownsized:
    def test_the_inner_estimator_sees_copies_and_the_answer_is_full_resolution(self):
        a, b, H_true = _zoomed_pair()
        inner = Recording(method_estimator("sift"))
        est = Downsized(inner, max_side=320).estimate([a], [b])
        assert inner.seen == [((240, 320), (240, 320))]
        assert not est.failed[0], est.reasons[0]
        assert _corner_error(est.H_a_from_b[0], H_true, (800, 600)) < 1.0
        details = est.details[0]
        assert (details["matched_size_a"], details["matched_size_b"]) == ((320, 240), (320, 240))
        # keypoints in full-resolution pixels: B's inliers land on A's through H_a_from_b
        pairs = details["match_pairs"][details["inlier_mask"]]
        pa, pb = details["keypoints_a"][pairs[:, 0]], details["keypoints_b"][pairs[:, 1]]
        assert np.median(np.linalg.norm(project(est.H_a_from_b[0], pb) - pa, axis=1)) < 1.0

    def test_small_images_pass_unchanged(self):
        a, b, _ = _zoomed_pair()
        inner = Recording(method_estimator("sift"))
        guarded = Downsized(inner, max_side=800).estimate([a], [b])
        plain = method_estimator("sift").estimate([a], [b])
        assert inner.seen == [((480, 640), (600, 800))]
        np.testing.assert_array_equal(guarded.H_a_from_b, plain.H_a_from_b)
        assert "matched_size_a" not in guarded.details[0]

    @pytest.mark.parametrize("bad", [10, 63, -1, 2.5, True, "2000"])
    def test_bad_max_side_is_named(self, bad):
        with pytest.raises(
            ValueError, match=r"max_side must be 0 \(full resolution\) or at least 64"
        ):
            check_max_side(bad)
        image = np.zeros((64, 64), np.uint8)
        with pytest.raises(ValueError, match="max_side must be 0"):
            hdreg.estimate(image, image, "identity", max_side=bad)

    def test_downsize_image_keeps_the_aspect(self):
        assert downsize_image(np.zeros((6000, 8000), np.uint8), 2000).shape == (1500, 2000)
        assert downsize_image(np.zeros((100, 50), np.uint8), None).shape == (100, 50)


class TestEstimateGuard:
    def test_estimate_takes_the_guard(self, monkeypatch):
        """hdreg.estimate had no size guard: an 8000x6000 pair ran at full resolution."""
        a, b, H_true = _zoomed_pair()
        seen = []
        real = FeatureEstimator.estimate_pair

        def recording(self, image_a, image_b):
            seen.append((image_a.shape, image_b.shape))
            return real(self, image_a, image_b)

        monkeypatch.setattr(FeatureEstimator, "estimate_pair", recording)
        r = hdreg.estimate(a, b, "sift", max_side=400)
        assert seen == [((300, 400), (300, 400))]
        assert not r.failed, r.reason
        assert _corner_error(r.a_from_b, H_true, (800, 600)) < 1.0
        assert r.details["matched_size_b"] == (400, 300)
        hdreg.estimate(a, b, "sift", max_side=None)
        hdreg.estimate(a, b, "sift", max_side=0)
        assert seen[1:] == [((480, 640), (600, 800))] * 2
        hdreg.estimate(a, b, "sift")  # the default is align's: 2000 px, larger than both
        assert seen[3:] == [((480, 640), (600, 800))]

    def test_align_and_estimate_agree(self, tmp_path):
        a, b, _ = _zoomed_pair()
        cv2.imwrite(str(tmp_path / "a.png"), a)
        cv2.imwrite(str(tmp_path / "b.png"), b)
        for method in ("sift", "ecc"):
            aligned = align(tmp_path / "a.png", tmp_path / "b.png", method=method, max_side=300)
            r = hdreg.estimate(load_gray(tmp_path / "a.png"), load_gray(tmp_path / "b.png"),
                               method, max_side=300)  # fmt: skip
            assert not r.failed and not aligned.failed, (r.reason, aligned.reason)
            assert aligned.matched_sizes == ((300, 225), (300, 225))
            np.testing.assert_allclose(aligned.H_b_from_a, r.b_from_a, rtol=1e-12, atol=1e-12)
