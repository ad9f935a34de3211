"""Geometry against independent references: OpenCV, analytic values, round trips, gradcheck."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from hdreg.geometry import (
    four_point_to_homography,
    four_point_to_homography_closed,
    four_point_to_homography_ex,
    homography_to_four_point,
    inside_mask,
    invert_homography,
    patch_corners,
    rescale_homography,
    resize_matrix,
    transform_points,
    warp_grid,
    warp_perspective,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-3, torch.float64: 1e-9}  # pixels, for ±32 px four-point round trips


def random_four_point(batch: int, dtype: torch.dtype, seed: int = 0, rho: float = 32.0):
    """Integer patch positions and offsets on a 1/8 px grid: exact in float32, so OpenCV (which
    takes float32 points) and torch see the very same correspondences."""
    g = torch.Generator().manual_seed(seed)
    top_left = torch.randint(32, 160, (batch, 2), generator=g).to(dtype)
    corners = patch_corners(top_left, 128)
    offsets = (
        torch.round((torch.rand(batch, 4, 2, generator=g, dtype=torch.float64) * 2 - 1) * rho * 8)
        / 8
    )
    return corners, offsets.to(dtype)


class TestPatchCorners:
    def test_known_values(self):
        c = patch_corners(torch.tensor([[10, 20]]), 128)
        assert c.dtype == torch.float32
        assert c[0].tolist() == [[10, 20], [137, 20], [137, 147], [10, 147]]

    def test_rectangular_and_dtype(self):
        c = patch_corners(torch.zeros(3, 2, dtype=torch.float64), (4, 3))
        assert c.shape == (3, 4, 2) and c.dtype == torch.float64
        assert c[0].tolist() == [[0, 0], [3, 0], [3, 2], [0, 2]]

    def test_wrong_shape(self):
        with pytest.raises(ValueError, match=r"top_left must have shape \(\*, 2\)"):
            patch_corners(torch.zeros(3), 128)


class TestFourPointToHomography:
    @pytest.mark.parametrize("batch", [1, 256])
    def test_matches_opencv_float64(self, batch):
        corners, offsets = random_four_point(batch, torch.float64)
        H = four_point_to_homography(corners, corners + offsets)
        for i in range(batch):
            ref = cv2.getPerspectiveTransform(
                corners[i].numpy().astype(np.float32),
                (corners + offsets)[i].numpy().astype(np.float32),
            )
            np.testing.assert_allclose(H[i].numpy(), ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("batch", [1, 256])
    def test_round_trip(self, dtype, batch):
        corners, offsets = random_four_point(batch, dtype, seed=1)
        H = four_point_to_homography(corners, corners + offsets)
        assert H.shape == (batch, 3, 3) and H.dtype == dtype
        back = homography_to_four_point(H, corners)
        assert (back - offsets).abs().max() < TOL[dtype]
        assert torch.allclose(H[:, 2, 2], torch.ones(batch, dtype=dtype))

    def test_float32_close_to_float64(self):
        corners, offsets = random_four_point(256, torch.float64, seed=2)
        H64 = four_point_to_homography(corners, corners + offsets)
        H32 = four_point_to_homography(corners.float(), (corners + offsets).float())
        # compare where it matters: the mapped corners, in pixels
        p64 = transform_points(H64, corners)
        p32 = transform_points(H32.double(), corners)
        assert (p64 - p32).abs().max() < 1e-3

    def test_pure_translation(self):
        src = patch_corners(torch.zeros(1, 2), 128)
        H = four_point_to_homography(src, src + torch.tensor([3.0, -4.0]))
        expected = torch.tensor([[1.0, 0, 3], [0, 1, -4], [0, 0, 1]])
        assert torch.allclose(H[0], expected, atol=1e-5)

    def test_large_pixel_coordinates_float32(self):
        # A 4000 px photo: normalization keeps float32 accurate far from the origin.
        corners = patch_corners(torch.tensor([[3500.0, 2800.0]]), 400)
        offsets = torch.tensor([[[20.0, -13.0], [-31.0, 7.0], [11.0, 29.0], [-5.0, -17.0]]])
        H = four_point_to_homography(corners, corners + offsets)
        assert (homography_to_four_point(H, corners) - offsets).abs().max() < 5e-3

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_degenerate_flagged_never_nan(self, dtype):
        corners = patch_corners(torch.zeros(4, 2, dtype=dtype), 128)
        dst = corners.clone()
        dst[0, 1] = dst[0, 0]  # two equal corners
        dst[1, 2] = (dst[1, 0] + dst[1, 1]) / 2  # three collinear corners (0, 1, 2)
        dst[2] = 5.0  # all four equal
        dst[3, 0, 0] = float("nan")  # not finite
        good = patch_corners(torch.zeros(1, 2, dtype=dtype), 128) + 3.0
        src = torch.cat([corners, corners[:1]])
        dst = torch.cat([dst, good])
        H, valid = four_point_to_homography_ex(src, dst)
        assert valid.tolist() == [False, False, False, False, True]
        assert torch.isfinite(H).all()
        assert torch.equal(H[:4], torch.eye(3, dtype=dtype).expand(4, 3, 3))
        with pytest.raises(
            ValueError, match=r"degenerate point sets at batch index 0, 1, 2, 3 \(4 of 5\)"
        ):
            four_point_to_homography(src, dst)

    def test_degenerate_gradients_finite(self):
        corners = patch_corners(torch.zeros(3, 2, dtype=torch.float64), 128)
        offsets = torch.zeros(3, 4, 2, dtype=torch.float64)
        offsets[0, 1] = corners[0, 0] - corners[0, 1]  # corner 1 onto corner 0
        offsets[1] = -corners[1] + 7.0  # all four on one point
        offsets.requires_grad_(True)
        H, valid = four_point_to_homography_ex(corners, corners + offsets)
        assert valid.tolist() == [False, False, True]
        H.sum().backward()
        assert torch.isfinite(offsets.grad).all()

    def test_gradcheck(self):
        corners, offsets = random_four_point(3, torch.float64, seed=3)
        corners.requires_grad_(True)
        offsets.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda c, o: four_point_to_homography(c, c + o), (corners, offsets), fast_mode=True
        )

    def test_wrong_shape_and_dtype(self):
        with pytest.raises(
            ValueError, match=r"points_src must have shape \(\*, 4, 2\), got \(2, 3, 2\)"
        ):
            four_point_to_homography(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))
        with pytest.raises(ValueError, match=r"points_dst must have shape \(2, 4, 2\)"):
            four_point_to_homography(torch.zeros(2, 4, 2), torch.zeros(3, 4, 2))
        with pytest.raises(TypeError, match="share one floating dtype"):
            four_point_to_homography(
                torch.zeros(1, 4, 2), torch.zeros(1, 4, 2, dtype=torch.float64)
            )


def random_quads(batch: int, seed: int, spread: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-conditioned general quads (float64): both sets are squares of side 100..300 at
    random places with every corner moved by up to ``spread`` px (still convex), on a 1/8 px
    grid so that OpenCV's float32 points are the same."""
    g = torch.Generator().manual_seed(seed)

    def one() -> torch.Tensor:
        side = 100 + 200 * torch.rand(batch, 1, 1, generator=g, dtype=torch.float64)
        unit = torch.tensor([[0.0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
        where = torch.rand(batch, 1, 2, generator=g, dtype=torch.float64) * 1000 - 500
        jitter = (torch.rand(batch, 4, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread
        return torch.round((where + side * unit + jitter) * 8) / 8

    return one(), one()


class TestFourPointClosedForm:
    """The solve-free DLT against OpenCV and against the LU solve of the ``_ex`` variant."""

    @pytest.mark.parametrize("batch", [1, 256])
    def test_matches_opencv_float64(self, batch):
        corners, offsets = random_four_point(batch, torch.float64, seed=10)
        H, valid = four_point_to_homography_closed(corners, corners + offsets)
        assert H.shape == (batch, 3, 3) and H.dtype == torch.float64 and valid.all()
        for i in range(batch):
            ref = cv2.getPerspectiveTransform(
                corners[i].float().numpy(), (corners + offsets)[i].float().numpy()
            )
            np.testing.assert_allclose(H[i].numpy(), ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())

    def test_general_quads_exact_float64(self):
        src, dst = random_quads(256, seed=14)  # strong perspective: far apart, any orientation
        H, valid = four_point_to_homography_closed(src, dst)
        assert valid.all()
        assert (transform_points(H, src) - dst).norm(dim=-1).max() < 1e-8

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_agrees_with_solve(self, dtype):
        src, dst = random_quads(512, seed=11)
        H64, _ = four_point_to_homography_ex(src, dst)
        H, valid = four_point_to_homography_closed(src.to(dtype), dst.to(dtype))
        H_ex, valid_ex = four_point_to_homography_ex(src.to(dtype), dst.to(dtype))
        assert valid.all() and valid_ex.all() and H.dtype == dtype
        truth = transform_points(H64, src)
        err = (transform_points(H.double(), src) - truth).norm(dim=-1).max()
        err_ex = (transform_points(H_ex.double(), src) - truth).norm(dim=-1).max()
        # as accurate as the solve: float64 to 1e-9 px, float32 to the solve's own error
        assert err < (1e-9 if dtype == torch.float64 else max(2 * err_ex, 1e-3))
        assert torch.allclose(H[:, 2, 2], torch.ones(512, dtype=dtype))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_four_point_round_trip(self, dtype):
        corners, offsets = random_four_point(64, dtype, seed=12)
        H, valid = four_point_to_homography_closed(corners, corners + offsets)
        assert valid.all()
        assert (homography_to_four_point(H, corners) - offsets).abs().max() < TOL[dtype]

    def test_large_pixel_coordinates_float32(self):
        corners = patch_corners(torch.tensor([[3500.0, 2800.0]]), 400)
        offsets = torch.tensor([[[20.0, -13.0], [-31.0, 7.0], [11.0, 29.0], [-5.0, -17.0]]])
        H, valid = four_point_to_homography_closed(corners, corners + offsets)
        assert bool(valid[0])
        assert (homography_to_four_point(H, corners) - offsets).abs().max() < 5e-3

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_degenerate_flagged_like_ex(self, dtype):
        corners = patch_corners(torch.zeros(5, 2, dtype=dtype), 128)
        dst = corners.clone()
        dst[0, 1] = dst[0, 0]  # two equal corners
        dst[1, 2] = (dst[1, 0] + dst[1, 1]) / 2  # three collinear corners (0, 1, 2)
        dst[2] = 5.0  # all four equal
        dst[3, 0, 0] = float("nan")  # not finite
        dst[4] += 3.0  # fine
        src = corners.clone()
        src[4, 3, 1] = float("inf")  # ... but its source is not finite
        good = patch_corners(torch.zeros(1, 2, dtype=dtype), 128)
        src, dst = torch.cat([src, good]), torch.cat([dst, good + 2.0])
        H, valid = four_point_to_homography_closed(src, dst)
        _, valid_ex = four_point_to_homography_ex(src, dst)
        assert valid.tolist() == valid_ex.tolist() == [False] * 5 + [True]
        assert torch.isfinite(H).all()
        assert torch.equal(H[:5], torch.eye(3, dtype=dtype).expand(5, 3, 3))

    def test_batch_shapes_and_errors(self):
        src, dst = random_quads(7, seed=13)
        H, valid = four_point_to_homography_closed(src, dst)
        assert H.shape == (7, 3, 3) and valid.shape == (7,)
        # each element on its own gives the same matrix: no mixing across the batch
        for i in (0, 6):
            H_i, _ = four_point_to_homography_closed(src[i : i + 1], dst[i : i + 1])
            assert torch.allclose(H_i[0], H[i], rtol=1e-12)
        with pytest.raises(ValueError, match=r"points_src must have shape \(\*, 4, 2\)"):
            four_point_to_homography_closed(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))
        with pytest.raises(TypeError, match="share one floating dtype"):
            four_point_to_homography_closed(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2).double())


class TestTransformPoints:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_opencv(self, dtype):
        corners, offsets = random_four_point(8, torch.float64, seed=4)
        H = four_point_to_homography(corners, corners + offsets)
        g = torch.Generator().manual_seed(5)
        pts = torch.rand(8, 50, 2, generator=g, dtype=torch.float64) * 300
        out = transform_points(H.to(dtype), pts.to(dtype))
        # Near the line that H sends to infinity (w -> 0) the projective division amplifies
        # rounding without bound, and float32 cannot agree with float64 there: in float32,
        # compare where |w| > 0.1 (points mapped within ~10x of their distance); in float64,
        # everywhere. (Points at infinity: test_point_at_infinity_is_finite.)
        Hn = H / H[:, 2:, 2:]
        w = (pts @ Hn[:, 2, :2].unsqueeze(-1)).squeeze(-1) + Hn[:, 2, 2:]
        keep = w.abs() > 0.1 if dtype == torch.float32 else torch.ones_like(w, dtype=torch.bool)
        assert keep.float().mean() > 0.9
        for i in range(8):
            ref = cv2.perspectiveTransform(pts[i].numpy()[None], H[i].numpy())[0]
            np.testing.assert_allclose(
                out[i].double().numpy()[keep[i]], ref[keep[i]], atol=TOL[dtype] * 10
            )

    def test_point_at_infinity_is_finite(self):
        H = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]])  # w = x: x = 0 maps to infinity
        out = transform_points(H, torch.tensor([[[0.0, 5.0]]]))
        assert torch.isfinite(out).all()

    def test_wrong_shape(self):
        with pytest.raises(ValueError, match="points_src"):
            transform_points(torch.eye(3)[None], torch.zeros(1, 5, 3))


class TestInvertAndRescale:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_inverse(self, dtype):
        corners, offsets = random_four_point(16, dtype, seed=5)
        H = four_point_to_homography(corners, corners + offsets)
        H_inv = invert_homography(H)
        eye = torch.eye(3, dtype=dtype).expand(16, 3, 3)
        prod = H @ H_inv
        assert torch.allclose(
            prod / prod[:, 2:, 2:], eye, atol=1e-4 if dtype == torch.float32 else 1e-10
        )
        back = transform_points(H_inv, transform_points(H, corners))
        assert (back - corners).abs().max() < TOL[dtype] * 10

    def test_resize_matrix_matches_cv2_resize(self):
        # A bright dot at pixel (x, y) of a 40x30 image appears at resize_matrix((x, y)) after
        # cv2.resize to 80x60 (pixel-centre convention): check with the intensity centroid.
        img = np.zeros((30, 40), np.float32)
        img[10, 13] = 1.0
        big = cv2.resize(img, (80, 60), interpolation=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(big)
        centroid = np.array([(xs * big[ys, xs]).sum(), (ys * big[ys, xs]).sum()]) / big.sum()
        S = resize_matrix((40, 30), (80, 60))
        expected = (S @ torch.tensor([13.0, 10.0, 1.0], dtype=torch.float64))[:2]
        np.testing.assert_allclose(centroid, expected.numpy(), atol=1e-6)

    def test_rescale_exact_on_synthetic_case(self):
        # Ground truth between two 800x640 images; the same scene at 128x128 must be related by
        # the rescaled homography, and rescaling back must give the original.
        corners = patch_corners(torch.zeros(1, 2, dtype=torch.float64), (800, 640))
        offsets = torch.tensor(
            [[[40.0, -20.0], [-60.0, 30.0], [25.0, 45.0], [-10.0, -35.0]]], dtype=torch.float64
        )
        H_full = four_point_to_homography(corners, corners + offsets)
        H_small = rescale_homography(H_full, (800, 640), (128, 128), (1000, 700), (128, 128))
        S_a = resize_matrix((800, 640), (128, 128))
        S_b = resize_matrix((1000, 700), (128, 128))
        pts_b = torch.rand(1, 20, 2, dtype=torch.float64) * 600
        lhs = transform_points(H_small, transform_points(S_b[None], pts_b))
        rhs = transform_points(S_a[None], transform_points(H_full, pts_b))
        assert torch.allclose(lhs, rhs, atol=1e-9)
        back = rescale_homography(H_small, (128, 128), (800, 640), (128, 128), (1000, 700))
        assert torch.allclose(back, H_full, atol=1e-9)


def textured_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w)).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.5)


class TestWarpPerspective:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_opencv_interior(self, dtype):
        img = textured_image()
        corners, offsets = random_four_point(4, torch.float64, seed=6)
        H = four_point_to_homography(corners, corners + offsets)
        image_a = torch.from_numpy(img).to(dtype)[None, None].expand(4, 1, 240, 320)
        out = warp_perspective(image_a, H.to(dtype), (320, 240))
        grid = warp_grid(H, (320, 240))
        for i in range(4):
            ref = cv2.warpPerspective(
                img, H[i].numpy(), (320, 240), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            ).astype(np.float64)
            # interior: sample points at least 1 px inside A
            g = grid[i].numpy()
            interior = (g[..., 0] > 1) & (g[..., 0] < 318) & (g[..., 1] > 1) & (g[..., 1] < 238)
            assert interior.sum() > 10_000
            diff = np.abs(out[i, 0].double().numpy() - ref)[interior]
            assert (
                diff.mean() < 0.5
            )  # OpenCV quantizes bilinear weights to 1/32 and rounds to uint8
            assert diff.max() < 2.0

    def test_identity_and_window(self):
        img = torch.rand(2, 3, 60, 80, dtype=torch.float64)
        eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
        assert torch.allclose(warp_perspective(img, eye, (80, 60)), img)
        tl = torch.tensor([[5, 7], [10, 3]])
        out = warp_perspective(img, eye, (30, 20), top_left_b=tl)
        assert torch.allclose(out[0], img[0, :, 7:27, 5:35]) and torch.allclose(
            out[1], img[1, :, 3:23, 10:40]
        )

    def test_fill_modes(self):
        img = torch.ones(1, 1, 10, 10, dtype=torch.float64)
        shift = torch.tensor([[[1.0, 0, 5.5], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)
        zero = warp_perspective(img, shift, (10, 10))
        assert (
            zero[0, 0, 0, 3].item() == 1.0
            and zero[0, 0, 0, 4].item() == 0.5
            and zero[0, 0, 0, 5] == 0
        )
        const = warp_perspective(img * 0.2, shift, (10, 10), fill=0.7)
        assert torch.allclose(const[0, 0, 0, 4], torch.tensor(0.45, dtype=torch.float64))  # blended
        assert torch.allclose(const[0, 0, 0, 9], torch.tensor(0.7, dtype=torch.float64))
        border = warp_perspective(img, shift, (10, 10), fill="border")
        assert torch.allclose(border, img)
        with pytest.raises(ValueError, match="fill must be"):
            warp_perspective(img, shift, (10, 10), fill="wrap")

    def test_inside_mask(self):
        eye = torch.eye(3)[None]
        grid = warp_grid(eye, (5, 5), top_left_b=torch.tensor([[2, 0]]))
        mask = inside_mask(grid, (5, 5))
        assert mask.shape == (1, 1, 5, 5)
        assert mask[0, 0, 0].tolist() == [1, 1, 1, 0, 0]

    @pytest.mark.parametrize("batch", [1, 256])
    def test_batches(self, batch):
        img = torch.rand(batch, 1, 64, 64)
        corners, offsets = random_four_point(batch, torch.float32, rho=8.0)
        corners = corners / 4
        H = four_point_to_homography(corners, corners + offsets / 4)
        out = warp_perspective(img, H, (32, 32))
        assert out.shape == (batch, 1, 32, 32) and torch.isfinite(out).all()

    def test_gradcheck_image_and_homography(self):
        torch.manual_seed(0)
        img = torch.rand(2, 1, 9, 11, dtype=torch.float64, requires_grad=True)
        corners = patch_corners(torch.tensor([[1.0, 1.0], [2.0, 1.0]], dtype=torch.float64), 6)
        offsets = (torch.rand(2, 4, 2, dtype=torch.float64) - 0.5).requires_grad_(True)

        def f(image, off):
            return warp_perspective(image, four_point_to_homography(corners, corners + off), (6, 6))

        assert torch.autograd.gradcheck(f, (img, offsets), fast_mode=True)

    def test_wrong_input(self):
        with pytest.raises(ValueError, match="image_a must have shape"):
            warp_perspective(torch.rand(1, 8, 8), torch.eye(3)[None], (4, 4))
        with pytest.raises(ValueError, match=r"H_a_from_b must have shape \(2, 3, 3\)"):
            warp_perspective(torch.rand(2, 1, 8, 8), torch.eye(3)[None], (4, 4))
        with pytest.raises(TypeError, match="floating"):
            warp_perspective(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.eye(3)[None], (4, 4))
