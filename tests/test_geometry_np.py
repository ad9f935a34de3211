"""The numpy geometry against OpenCV and against its torch counterpart (hdreg.geometry)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from hdreg import geometry
from hdreg.geometry_np import (
    check_homography,
    corner_distance,
    coverage_mask,
    folds,
    four_point_homography,
    image_corners,
    is_convex,
    normalize_homography,
    project,
    rect_corners,
    scale_size,
    scaled_size,
    zncc,
)


def random_homographies(n: int, seed: int = 0) -> np.ndarray:
    """Mild random homographies (maps of a 128×128 square to a perturbed quad), float64."""
    rng = np.random.default_rng(seed)
    src = rect_corners((128, 128), (40, 30), np.float32)
    out = []
    for _ in range(n):
        dst = (src + rng.uniform(-30, 30, (4, 2))).astype(np.float32)
        out.append(cv2.getPerspectiveTransform(src, dst))
    return np.stack(out)


class TestCorners:
    def test_matches_torch_patch_corners(self):
        top_left = torch.tensor([[10, 20], [0, 0], [7, 3]])
        expected = geometry.patch_corners(top_left, (64, 48), dtype=torch.float64).numpy()
        ours = np.stack([rect_corners((64, 48), tuple(t)) for t in top_left.tolist()])
        np.testing.assert_array_equal(ours, expected)

    def test_image_corners_and_dtype(self):
        c = image_corners([(4, 3), (2, 2)])
        assert c.shape == (2, 4, 2) and c.dtype == np.float64
        assert c[0].tolist() == [[0, 0], [3, 0], [3, 2], [0, 2]]
        assert rect_corners((5, 5), dtype=np.float32).dtype == np.float32


class TestProject:
    def test_matches_opencv(self):
        H = random_homographies(20)
        points = np.random.default_rng(1).uniform(-50, 300, (20, 30, 2))
        ours = project(H, points)
        for i in range(20):
            ref = cv2.perspectiveTransform(points[i][None], H[i])[0]
            np.testing.assert_allclose(ours[i], ref, rtol=1e-12, atol=1e-9)

    def test_single_homography_and_shape_errors(self):
        H = random_homographies(1)[0]
        p = rect_corners((10, 10))
        np.testing.assert_array_equal(project(H, p), project(H[None], p[None])[0])
        with pytest.raises(ValueError, match="expected H"):
            project(H, p[None])
        with pytest.raises(ValueError, match="2 homographies for 1 point sets"):
            project(np.stack([H, H]), p[None])

    def test_horizon_policy_is_finite_with_the_sign_of_w(self):
        # w = x - 5: x = 5 is on the horizon; points just either side go far, with opposite sign
        H = np.array([[1.0, 0, 0], [0, 1, 0], [1, 0, -5]])
        q = project(H, np.array([[5.0, 1.0], [5.0 + 1e-17, 1.0], [6.0, 2.0]]))
        assert np.isfinite(q).all()
        assert q[0, 0] == 5.0 / np.finfo(np.float64).eps  # w = 0 divides by +eps
        np.testing.assert_allclose(q[2], [6.0, 2.0])


class TestParityWithTorch:
    """numpy and torch implement one geometry: the same numbers for the same inputs."""

    def test_project_and_transform_points(self):
        H = random_homographies(16, seed=2)
        points = np.random.default_rng(3).uniform(-40, 260, (16, 9, 2))
        points[0, 0] = [5.0, 1.0]
        H[0] = [[1.0, 0, 0], [0, 1, 0], [1, 0, -5]]  # a point exactly on the horizon
        torch_out = geometry.transform_points(torch.from_numpy(H), torch.from_numpy(points))
        np.testing.assert_allclose(project(H, points), torch_out.numpy(), rtol=1e-12, atol=1e-9)

    def test_normalize_homography(self):
        H = random_homographies(8, seed=4) * np.linspace(0.1, 50, 8)[:, None, None]
        H[1, 2, 2] = 0.0  # the origin on the horizon: left as it is
        H[2, 2, 2] = 1e-17  # below eps relative to the other entries: left as it is too
        ours = normalize_homography(H)
        np.testing.assert_array_equal(
            ours, geometry.normalize_homography(torch.from_numpy(H)).numpy()
        )
        np.testing.assert_array_equal(ours[1:3], H[1:3])
        np.testing.assert_allclose(ours[[0, 3, 4]][:, 2, 2], 1.0)

    def test_is_convex(self):
        rng = np.random.default_rng(5)
        quads = rect_corners((128, 128)) + rng.uniform(-70, 70, (500, 4, 2))
        ours = is_convex(quads)
        np.testing.assert_array_equal(ours, geometry.is_convex(torch.from_numpy(quads)).numpy())
        assert 50 < ours.sum() < 450  # both cases exercised
        # OpenCV as the independent reference (its test is not strict, hence non-degenerate quads)
        ref = [cv2.isContourConvex(q.astype(np.float32)[:, None]) for q in quads]
        np.testing.assert_array_equal(ours, ref)

    def test_corner_distance_is_one_function_for_both(self):
        rng = np.random.default_rng(6)
        pred, true = rng.normal(size=(10, 4, 2)), rng.normal(size=(10, 4, 2))
        expected = np.linalg.norm(pred - true, axis=-1).mean(axis=1)
        np.testing.assert_allclose(corner_distance(pred, true), expected, rtol=1e-15)
        out = corner_distance(torch.from_numpy(pred), torch.from_numpy(true))
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-15)
        from hdreg.evaluation.metrics import corner_error
        from hdreg.models.base import corner_distance as validation_metric

        assert validation_metric is geometry.corner_distance is corner_distance
        corners = rect_corners((128, 128))[None].repeat(10, 0)
        np.testing.assert_allclose(
            corner_error(np.tile(np.eye(3), (10, 1, 1)), corners, corners + (true - pred)),
            expected,
            rtol=1e-12,
        )


class TestFolds:
    def test_views_of_a_plane_do_not_fold(self):
        H = random_homographies(50, seed=7)
        corners = rect_corners((128, 128), (40, 30))
        assert not folds(H, corners[None].repeat(50, 0)).any()
        assert folds(H, corners).shape == (50,)  # one quad shared by every H
        with pytest.raises(ValueError, match="expected H"):
            folds(H, corners[None].repeat(3, 0))

    def test_horizon_between_corners_and_bow_tie(self):
        c = rect_corners((100, 100))
        through_horizon = np.array([[1.0, 0, 0], [0, 1, 0], [-0.015, 0, 1]])  # w = 0 at x ≈ 67
        assert folds(through_horizon, c)
        # two corners swapped: a bow tie, which a homography reaches only through the horizon
        bow_tie = cv2.getPerspectiveTransform(
            c.astype(np.float32), c[[0, 1, 3, 2]].astype(np.float32)
        )
        assert folds(bow_tie, c)
        # every corner behind the camera (all w < 0) is a valid, if odd, view: no fold
        assert not folds(-np.eye(3), c)


class TestNormalizeAndCheck:
    def test_scale_is_irrelevant(self):
        H = random_homographies(1, seed=8)[0]
        np.testing.assert_allclose(normalize_homography(-3.5 * H), H, rtol=1e-14)

    def test_check_homography(self):
        assert check_homography(np.eye(3)) is None
        assert check_homography(None) == "no homography"
        assert "shape" in check_homography(np.eye(2))
        assert "not finite" in check_homography(np.full((3, 3), np.inf))
        assert "singular" in check_homography(np.diag([1.0, 1.0, 1e-14]))


class TestCoverageMask:
    def test_identity_and_margin(self):
        mask = coverage_mask(np.eye(3), (10, 8), (12, 9))
        assert mask.shape == (9, 12) and mask[:8, :10].all() and mask.sum() == 80
        inner = coverage_mask(np.eye(3), (10, 8), (10, 8), margin=1)
        assert inner.sum() == 8 * 6 and inner[1:-1, 1:-1].all()

    def test_against_the_sample_positions(self):
        """A pixel of B is covered exactly when H_a_from_b sends it within A's outermost pixel
        centres (up to OpenCV's 1/32 px fixed-point sample positions)."""
        H = random_homographies(1, seed=9)[0]
        H_a_from_b = np.linalg.inv(H) @ np.array([[1, 0, 40], [0, 1, 30], [0, 0, 1.0]])
        mask = coverage_mask(H_a_from_b, (150, 130), (128, 128))  # B reaches beyond A
        ys, xs = np.mgrid[0:128, 0:128]
        p = project(H_a_from_b, np.stack([xs, ys], -1).reshape(-1, 2).astype(float))
        p = p.reshape(128, 128, 2)

        def within(tol):
            x, y = p[..., 0], p[..., 1]
            return (x >= -tol) & (x <= 149 + tol) & (y >= -tol) & (y <= 129 + tol)

        assert mask[within(-0.05)].all() and not mask[~within(0.05)].any()
        assert 0.2 < mask.mean() < 0.95


class TestFourPointHomography:
    def test_matches_opencv_and_torch(self):
        rng = np.random.default_rng(3)
        src = rect_corners((128, 128))
        for _ in range(5):
            dst = src + rng.uniform(-32, 32, (4, 2))
            ours = four_point_homography(src, dst)
            cv = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
            np.testing.assert_allclose(ours, cv, rtol=1e-5, atol=1e-7)
            torch_H = geometry.four_point_to_homography(
                torch.from_numpy(src)[None], torch.from_numpy(dst)[None]
            )[0].numpy()
            np.testing.assert_allclose(ours, torch_H, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(project(ours, src), dst, atol=1e-9)

    def test_collinear_points_raise(self):
        src = rect_corners((8, 8))
        with pytest.raises(np.linalg.LinAlgError):
            four_point_homography(src, np.array([[0, 0], [1, 1], [2, 2], [3, 3.0]]))


class TestScaledSize:
    @pytest.mark.parametrize(
        "size", [(4000, 3000), (3000, 4000), (1001, 333), (17, 2000), (640, 480), (9, 9)]
    )
    @pytest.mark.parametrize("side", [8, 100, 255, 256, 1023, 2000])
    def test_the_inline_rule_it_replaces(self, size, side):
        w, h = size
        scale = side / max(w, h)
        assert scaled_size(size, side) == (max(1, round(w * scale)), max(1, round(h * scale)))
        assert scale_size(size, scale, min_side=8) == (
            max(8, round(w * scale)),
            max(8, round(h * scale)),
        )
        assert max(scaled_size(size, side)) == side

    def test_halving_is_exact(self):
        assert scale_size((1001, 333), 0.5**3) == (round(1001 / 8), round(333 / 8)) == (125, 42)


class TestZncc:
    def test_gain_offset_mask_and_undefined(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(20, 30))
        y = 0.3 * x + rng.normal(scale=0.1, size=x.shape)
        expected = np.corrcoef(x.ravel(), y.ravel())[0, 1]
        assert zncc(x, y) == pytest.approx(expected, abs=1e-12)
        assert zncc(x.astype(np.float32), 5 - 2 * y) == pytest.approx(-expected, abs=1e-6)
        mask = np.zeros(x.shape, bool)
        mask[3:9, 4:20] = True
        assert zncc(x, y, mask) == pytest.approx(np.corrcoef(x[mask], y[mask])[0, 1], abs=1e-12)
        assert np.isnan(zncc(x, np.full(x.shape, 7.0)))
        assert np.isnan(zncc(x, y, np.zeros(x.shape, bool)))
