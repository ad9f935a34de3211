"""Classical baselines: each recovers known synthetic homographies, in the right direction.

Every pair is built the way the DeTone generator builds them: image B is image A warped with
``B(p) = A(H_a_from_b · p)`` (``cv2.warpPerspective`` with ``WARP_INVERSE_MAP``), so the true
``H_a_from_b`` is known exactly and is *not* its own inverse.
"""

from __future__ import annotations

import pickle
import re

import cv2
import numpy as np
import pytest
import skimage.data

from hdreg.apps.protocols import detone_protocol
from hdreg.config import method_estimator
from hdreg.data.synthetic.detone import generate_pair
from hdreg.estimators import ECCEstimator, IdentityEstimator
from hdreg.geometry import resize_matrix

from .conftest import textured_image

DETECTORS = ["sift", "orb", "akaze", "brisk"]


def photo() -> np.ndarray:
    """scikit-image's astronaut as a (240, 320) uint8 grayscale photo."""
    gray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(cv2.resize(gray, (320, 320), interpolation=cv2.INTER_AREA)[40:280])


def corners(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(
        np.float64
    )


def warp_b(image_a: np.ndarray, H_a_from_b: np.ndarray, size_b: tuple[int, int]) -> np.ndarray:
    """Image B of ``size_b = (width, height)`` with ``B(p) = A(H_a_from_b · p)``."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(image_a, H_a_from_b, size_b, flags=flags)


def corner_error(H_est: np.ndarray, H_true: np.ndarray, corners_b: np.ndarray) -> float:
    """Mean distance (pixels of A) between B's corners mapped by the two homographies."""
    p_est = cv2.perspectiveTransform(corners_b[None], H_est)[0]
    p_true = cv2.perspectiveTransform(corners_b[None], H_true)[0]
    return float(np.linalg.norm(p_est - p_true, axis=1).mean())


@pytest.fixture(scope="module")
def photo_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, H_a_from_b)``: a photo and a projective warp of it (translation ~10 px, shear,
    perspective), far from its own inverse."""
    image_a = photo()
    c = corners(320, 240)
    H_a_from_b = homography(c, c + np.array([[14, -6], [3, 9], [12, 15], [-4, 2]]))
    return image_a, warp_b(image_a, H_a_from_b, (320, 240)), H_a_from_b


def detone_pair(rho: float, seed: int, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A DeTone pair of 128×128 patches and its true ``H_a_from_b`` (key ``"H"``)."""
    pair = generate_pair(
        photo() if image is None else image,
        detone_protocol(rho=rho),
        np.random.default_rng(seed),
    )
    c = corners(128, 128)
    pair["H"] = homography(c, c + pair["offsets"])
    return pair


class TestFeatureEstimator:
    @pytest.mark.parametrize("detector", DETECTORS)
    def test_recovers_known_homography_ransac(self, detector, photo_pair):
        image_a, image_b, H_true = photo_pair
        result = method_estimator(detector).run_pair(image_a, image_b)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(result.H_a_from_b, H_true, corners(320, 240)) < 1.0

    @pytest.mark.parametrize(("detector", "robust"), [("sift", "lmeds"), ("sift", "magsac"), ("orb", "lmeds"), ("orb", "magsac")])  # fmt: skip
    def test_lmeds_and_magsac(self, detector, robust, photo_pair):
        image_a, image_b, H_true = photo_pair
        result = method_estimator(detector, robust=robust).run_pair(image_a, image_b)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(result.H_a_from_b, H_true, corners(320, 240)) < 1.0

    def test_direction_is_a_from_b(self, photo_pair):
        image_a, image_b, H_true = photo_pair
        H_est = method_estimator("sift").run_pair(image_a, image_b).H_a_from_b
        c = corners(320, 240)
        assert corner_error(H_est, H_true, c) < 1.0
        assert corner_error(H_est, np.linalg.inv(H_true), c) > 10.0
        # Swapping the images gives the inverse.
        H_swapped = method_estimator("sift").run_pair(image_b, image_a).H_a_from_b
        assert corner_error(H_swapped, np.linalg.inv(H_true), c) < 1.0

    def test_details_describe_inlier_matches(self, photo_pair):
        image_a, image_b, H_true = photo_pair
        est = method_estimator("orb")
        result = est.run_pair(image_a, image_b)
        d = result.details
        kp_a, kp_b, matches, inliers = (
            d["keypoints_a"],
            d["keypoints_b"],
            d["match_pairs"],
            d["inlier_mask"],
        )
        assert d["matches"] == len(matches) and d["inliers"] == int(inliers.sum())
        assert kp_a.ndim == 2 and kp_a.shape[1] == 2 and kp_a.dtype == np.float64
        assert kp_b.ndim == 2 and kp_b.shape[1] == 2
        assert matches.shape == (len(inliers), 2) and matches.dtype == np.int64
        assert inliers.dtype == bool and inliers.sum() >= est.min_matches
        assert matches[:, 0].max() < len(kp_a) and matches[:, 1].max() < len(kp_b)
        # Inlier matches are true correspondences: H_a_from_b maps keypoint b onto keypoint a.
        p_b = kp_b[matches[inliers, 1]]
        p_a = kp_a[matches[inliers, 0]]
        mapped = cv2.perspectiveTransform(p_b[None], H_true)[0]
        assert np.median(np.linalg.norm(mapped - p_a, axis=1)) < 1.0

    def test_cross_check_keeps_mutual_nearest_neighbours(self, photo_pair):
        image_a, image_b, H_true = photo_pair
        # ratio=1 keeps (almost) every nearest neighbour, so non-mutual ones exist to remove.
        plain = method_estimator("sift", ratio=1.0)
        checked = method_estimator("sift", ratio=1.0, cross_check=True)
        _, desc_a = plain.detect(image_a)
        _, desc_b = plain.detect(image_b)
        m_plain = plain.match(desc_a, desc_b)
        m_checked = checked.match(desc_a, desc_b)
        assert 0 < len(m_checked) < len(m_plain)
        assert {tuple(m) for m in m_checked} <= {tuple(m) for m in m_plain}
        # Independent check of mutuality on the full distance matrix.
        dist = np.linalg.norm(desc_a[:, None].astype(np.float64) - desc_b[None], axis=2)
        a, b = m_checked[:, 0], m_checked[:, 1]
        assert (dist[a].argmin(axis=1) == b).all()
        assert (dist[:, b].argmin(axis=0) == a).all()
        result = checked.run_pair(image_a, image_b)
        assert corner_error(result.H_a_from_b, H_true, corners(320, 240)) < 1.0

    def test_images_of_different_sizes(self):
        image_a = photo()
        # B is 200×150 and covers a rotated, scaled window of A.
        c = corners(200, 150)
        H_true = homography(c, c * 1.1 + [[60, 40], [62, 52], [55, 58], [58, 38]])
        image_b = warp_b(image_a, H_true, (200, 150))
        result = method_estimator("sift").run_pair(image_a, image_b)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(result.H_a_from_b, H_true, c) < 1.0

    def test_flat_image_fails_with_reason(self):
        flat = np.full((240, 320), 128, np.uint8)
        for detector in DETECTORS:
            est = method_estimator(detector)
            out = est.estimate([flat, photo()], [photo(), flat])
            assert out.failed.tolist() == [True, True]
            assert out.reasons == ["only 0 keypoints in A, need 8", "only 0 keypoints in B, need 8"]
            assert np.array_equal(out.H_a_from_b, np.tile(np.eye(3), (2, 1, 1)))

    def test_too_few_matches_fails_with_reason(self):
        # Two unrelated textures: plenty of keypoints, but a strict ratio test leaves few matches.
        out = method_estimator("sift", ratio=0.3).estimate(
            [textured_image(seed=1)], [textured_image(seed=2)]
        )
        assert out.failed[0]
        assert out.reasons[0].endswith("matches after the ratio test, need 8")

    def test_rejects_non_gray_input(self):
        with pytest.raises(ValueError, match=r"image_a must be a \(H, W\) uint8 array"):
            method_estimator("sift").estimate_pair(photo().astype(np.float32), photo())

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"detector": "surf"}, "detector must be one of akaze, brisk, orb, sift, got 'surf'"),
            ({"robust": "prosac"}, "robust must be one of lmeds, magsac, ransac, got 'prosac'"),
            ({"ratio": 0.0}, r"ratio must be a finite number > 0 and <= 1"),
            ({"ratio": 1.5}, r"ratio must be a finite number > 0 and <= 1"),
            ({"reproj_threshold": -1.0}, "reproj_threshold must be a finite number > 0"),
            ({"confidence": 1.0}, r"confidence must be a finite number > 0 and < 1"),
            ({"max_iters": 0}, "max_iters must be an integer >= 1"),
            ({"min_matches": 3}, "min_matches must be an integer >= 4, got 3"),
            ({"min_matches": 8.0}, "min_matches must be an integer >= 4"),
            ({"max_features": -1}, "max_features must be an integer >= 0"),
            ({"cross_check": "yes"}, "cross_check must be a bool"),
            ({"sift_sigma": float("nan")}, "sift_sigma must be a finite number > 0"),
            ({"sift_n_octave_layers": 0}, "sift_n_octave_layers must be an integer >= 1"),
            (
                {"sift_contrast_threshold": -0.1},
                "sift_contrast_threshold must be a finite number >= 0",
            ),
            ({"sift_edge_threshold": 0}, "sift_edge_threshold must be a finite number > 0"),
            ({"name": ""}, "name must be a non-empty string"),
        ],
    )
    def test_argument_validation(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            method_estimator("sift", **kwargs)

    def test_name_and_max_features(self, photo_pair):
        assert method_estimator("akaze").name == "akaze"
        assert method_estimator("sift", name="sift-magsac", robust="magsac").name == "sift-magsac"
        for detector in DETECTORS:
            points, desc = method_estimator(detector, max_features=50).detect(photo_pair[0])
            assert 8 <= len(points) <= 50 and len(desc) == len(points)

    def test_pickle_round_trip_after_use(self, photo_pair):
        image_a, image_b, _ = photo_pair
        est = method_estimator("orb")
        first = est.run_pair(image_a, image_b).H_a_from_b  # creates the OpenCV objects
        clone = pickle.loads(pickle.dumps(est))
        assert clone.detector == "orb" and clone.name == "orb"
        np.testing.assert_allclose(clone.run_pair(image_a, image_b).H_a_from_b, first)


class TestECCEstimator:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_recovers_moderate_motion_from_identity(self, seed):
        pair = detone_pair(rho=8, seed=seed)
        result = method_estimator("ecc").run_pair(pair["patch_a"], pair["patch_b"])
        assert result.H_a_from_b is not None, result.reason
        c = corners(128, 128)
        assert corner_error(result.H_a_from_b, pair["H"], c) < 0.3
        # The direction: findTransformECC(template=B, input=A) gives H_a_from_b, not its inverse.
        assert corner_error(result.H_a_from_b, np.linalg.inv(pair["H"]), c) > 5.0
        assert result.details["correlation"] > 0.95

    def test_pyramid_copes_with_rho_32(self):
        """ρ = 32 DeTone pairs: the coarse-to-fine schedule recovers all ten; ECC at full
        resolution alone falls into wrong optima on some."""
        pairs = [detone_pair(rho=32, seed=seed) for seed in range(10)]
        c = corners(128, 128)

        def successes(est: ECCEstimator) -> int:
            results = [est.run_pair(p["patch_a"], p["patch_b"]) for p in pairs]
            return sum(
                r.H_a_from_b is not None and corner_error(r.H_a_from_b, p["H"], c) < 1.0
                for r, p in zip(results, pairs, strict=True)
            )

        assert successes(method_estimator("ecc")) == 10
        assert successes(method_estimator("ecc", levels=1)) < 10

    def test_refine_from_perturbed_estimate(self):
        pair = detone_pair(rho=32, seed=3)
        c = corners(128, 128)
        rng = np.random.default_rng(0)
        angles = rng.uniform(0, 2 * np.pi, 4)
        shifted = c + pair["offsets"] + 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        H_init = homography(c, shifted)
        assert corner_error(H_init, pair["H"], c) == pytest.approx(3.0)
        result = method_estimator("ecc").refine(pair["patch_a"], pair["patch_b"], H_init)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(result.H_a_from_b, pair["H"], c) < 0.3

    def test_estimate_pair_is_refine_from_identity_over_the_full_pyramid(self):
        pair = detone_pair(rho=16, seed=4)
        est = method_estimator("ecc")
        assert est.pyramid_levels((128, 128), (128, 128)) == 4  # 128 -> 16 px
        direct = est.estimate_pair(pair["patch_a"], pair["patch_b"])
        via_refine = est.refine(pair["patch_a"], pair["patch_b"], np.eye(3), levels=4)
        np.testing.assert_array_equal(direct.H_a_from_b, via_refine.H_a_from_b)
        motions = [level["motion"] for level in direct.details["levels"]]
        assert motions == ["translation", "affine", "homography", "homography"]
        sizes = [level["size_b"] for level in direct.details["levels"]]
        assert sizes == [(16, 16), (32, 32), (64, 64), (128, 128)]

    def test_projective_initial_estimate_uses_homography_at_every_level(self):
        pair = detone_pair(rho=16, seed=5)
        result = method_estimator("ecc").refine(
            pair["patch_a"], pair["patch_b"], pair["H"], levels=3
        )
        assert [lv["motion"] for lv in result.details["levels"]] == ["homography"] * 3
        assert corner_error(result.H_a_from_b, pair["H"], corners(128, 128)) < 0.3

    def test_pyramid_levels(self):
        est = method_estimator("ecc")
        assert est.pyramid_levels((320, 240), (320, 240)) == 4  # 240 -> 30 px
        assert est.pyramid_levels((320, 240), (128, 96)) == 3  # the smaller image decides
        assert est.pyramid_levels((20, 20), (20, 20)) == 1
        # Explicit depths are capped so that no level is smaller than 8 px.
        assert method_estimator("ecc", levels=10).pyramid_levels((128, 128), (128, 128)) == 5
        assert method_estimator("ecc", levels=2).pyramid_levels((128, 128), (128, 128)) == 2

    def test_images_of_different_sizes_from_identity(self):
        image_a = photo()[40:168, 60:188]  # 128×128
        c = corners(96, 80)
        H_true = homography(c, c + np.array([[10, 6], [4, 14], [-3, 9], [8, -2]]))
        image_b = warp_b(image_a, H_true, (96, 80))
        result = method_estimator("ecc").run_pair(image_a, image_b)
        assert result.H_a_from_b is not None, result.reason
        assert corner_error(result.H_a_from_b, H_true, c) < 0.3
        assert result.details["levels"][0]["size_a"] != result.details["levels"][0]["size_b"]

    def test_images_of_different_scales_refine(self):
        image_a = photo()
        image_b = cv2.resize(image_a, (160, 120), interpolation=cv2.INTER_AREA)
        # The exact pixel-centre map of the resize (x_a = 2 x_b + 0.5), not diag(2, 2, 1).
        H_true = resize_matrix((160, 120), (320, 240)).numpy()
        H_init = np.array([[1, 0, 3.0], [0, 1, -2.0], [0, 0, 1]]) @ np.diag([2.0, 2.0, 1.0])
        c = corners(160, 120)
        for levels in (1, 3):
            result = method_estimator("ecc").refine(image_a, image_b, H_init, levels=levels)
            assert result.H_a_from_b is not None, result.reason
            assert corner_error(result.H_a_from_b, H_true, c) < 0.2

    def test_estimate_is_carried_exactly_between_levels(self, monkeypatch):
        """The warp handed to OpenCV at each level is the exact map between that level's
        images. B is A resized to 107×83, so the map from level k of B to level k of A is the
        pixel-centre resize map between their sizes (an affine map, not a diagonal scaling; and
        with level sizes rounded, A and B are not rescaled by the same factor)."""
        image_a = photo()
        image_b = cv2.resize(image_a, (107, 83), interpolation=cv2.INTER_AREA)
        H_true = resize_matrix((107, 83), (320, 240)).numpy()
        calls = []

        def spy(template, input_image, warp, motion, *args):
            # Records the warp and leaves it as it is, so that every level's input is the
            # previous level's carried back and forth without any ECC update.
            calls.append((template.shape, input_image.shape, warp.copy(), motion))
            return 1.0, warp

        monkeypatch.setattr(cv2, "findTransformECC", spy)
        result = method_estimator("ecc").refine(image_a, image_b, H_true, levels=3)
        assert result.H_a_from_b is not None, result.reason
        np.testing.assert_allclose(result.H_a_from_b, H_true, atol=1e-5)
        assert [c[3] for c in calls] == [cv2.MOTION_TRANSLATION, cv2.MOTION_AFFINE, cv2.MOTION_HOMOGRAPHY]  # fmt: skip
        for (shape_b, shape_a, warp, _), k in zip(calls, (2, 1, 0), strict=True):
            assert shape_b == (round(83 / 2**k), round(107 / 2**k))
            assert shape_a == (round(240 / 2**k), round(320 / 2**k))
            expected = resize_matrix(shape_b[::-1], shape_a[::-1]).numpy()
            np.testing.assert_allclose(warp, expected[: len(warp)], atol=1e-5)

    def test_flat_image_fails_with_reason(self):
        flat = np.full((128, 128), 128, np.uint8)
        pair = detone_pair(rho=8, seed=0)
        out = method_estimator("ecc").estimate([flat, pair["patch_a"]], [flat, flat])
        assert out.failed.tolist() == [True, True]
        assert all(reason.startswith("ECC failed at every level") for reason in out.reasons)

    def test_bad_initial_estimate_fails_with_reason(self):
        pair = detone_pair(rho=8, seed=0)
        est = method_estimator("ecc")
        nan = np.full((3, 3), np.nan)
        result = est.refine(pair["patch_a"], pair["patch_b"], nan)
        assert result.H_a_from_b is None
        assert result.reason == "initial estimate: homography is not finite"
        # Far off (a 100 px shift): ECC cannot recover, and says so instead of returning junk.
        far = np.array([[1, 0, 100.0], [0, 1, 0], [0, 0, 1]])
        result = est.refine(pair["patch_a"], pair["patch_b"], far)
        assert result.H_a_from_b is None and result.reason
        with pytest.raises(ValueError, match=r"H_init_a_from_b must have shape \(3, 3\)"):
            est.refine(pair["patch_a"], pair["patch_b"], np.eye(2))

    def test_min_correlation_rejects(self):
        pair = detone_pair(rho=8, seed=0)
        result = method_estimator("ecc", min_correlation=1.0).run_pair(
            pair["patch_a"], pair["patch_b"]
        )
        assert result.H_a_from_b is None
        assert re.fullmatch(
            r"diverged: ECC correlation 0\.99\d+ < min_correlation 1", result.reason
        )
        assert 0.95 < result.details["correlation"] < 1.0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"levels": 0}, "levels must be an integer >= 1"),
            ({"min_level_side": 4}, "min_level_side must be an integer >= 8"),
            (
                {"coarse_motions": ("similarity",)},
                "coarse_motions must be a sequence of translation, euclidean, affine",
            ),
            ({"coarse_motions": "affine"}, "coarse_motions must be a sequence"),
            ({"iterations": 0}, "iterations must be an integer >= 1"),
            ({"eps": -1.0}, "eps must be a finite number >= 0"),
            ({"gauss_filt_size": 4}, "gauss_filt_size must be odd, got 4"),
            ({"gauss_filt_size": 0}, "gauss_filt_size must be an integer >= 1"),
            ({"min_correlation": 1.5}, r"min_correlation must be a finite number >= -1 and <= 1"),
            ({"min_overlap": 0.0}, r"min_overlap must be a finite number > 0 and <= 1"),
            ({"refine_levels": 0}, "refine_levels must be an integer >= 1"),
            ({"name": None}, "name must be a non-empty string"),
        ],
    )
    def test_argument_validation(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            method_estimator("ecc", **kwargs)

    def test_pickle_round_trip_answers_the_same(self):
        """Evaluation sends estimators to worker processes by pickle: a clone must keep every
        parameter and give the same answer, bit for bit."""
        a = textured_image(96, 128, seed=5)
        b = cv2.warpAffine(a, np.float32([[1, 0, -2.5], [0, 1, 1.5]]), (128, 96))
        est = method_estimator(
            "ecc", levels=3, iterations=40, coarse_motions=("affine",), name="ecc3"
        )
        clone = pickle.loads(pickle.dumps(est))
        assert repr(clone) == repr(est)
        ours, theirs = est.run_pair(a, b), clone.run_pair(a, b)
        assert ours.H_a_from_b is not None
        np.testing.assert_array_equal(ours.H_a_from_b, theirs.H_a_from_b)


def test_identity_scores_the_mean_offset_length():
    """The identity's corner error on a synthetic pair is the mean length of the true offsets
    (what "the error of doing nothing" means), on pairs of any size."""
    from hydra.utils import instantiate

    from hdreg.config import compose_config
    from hdreg.evaluation.runner import evaluate

    cfg = compose_config("benchmark/synthetic")  # evaluate.py's synthetic benchmark
    cfg.n, cfg.seed = 4, 2
    pairs = instantiate(cfg)
    result = evaluate(pairs, [IdentityEstimator()], progress=False).methods[0]
    offsets = pairs.points_dst_true - pairs.points_src
    np.testing.assert_allclose(result.errors, np.linalg.norm(offsets, axis=-1).mean(axis=1))
    out = IdentityEstimator().estimate([photo(), photo()[:50, :70]], [photo()[:40], photo()])
    assert not out.failed.any() and np.array_equal(out.H_a_from_b, np.tile(np.eye(3), (2, 1, 1)))
