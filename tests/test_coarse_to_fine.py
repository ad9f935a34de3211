"""The whole-image, coarse-to-fine estimator (hdreg.estimators.coarse_to_fine) and the shipped
`wide` estimator: large motion recovered at full resolution, a confidence that separates
matched from unrelated photos, failures with reasons on blank input."""

from __future__ import annotations

import inspect
import math

import cv2
import numpy as np
import pytest
import torch

from hdreg.estimators.coarse_to_fine import (
    CoarseToFineEstimator,
    _centre_transform,
    _Pair,
    scale_matrix,
)
from hdreg.estimators.confidence import alignment_confidence, zncc_masked
from hdreg.estimators.learned import load_checkpoint_estimator
from hdreg.geometry import resize_matrix
from hdreg.geometry_np import project, rect_corners
from hdreg.models.checkpoint import read_checkpoint
from hdreg.weights import estimator_config

W, H = 640, 480


def _source(name: str = "astronaut") -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.resize(gray, (1024, 1024), interpolation=cv2.INTER_CUBIC)


def _motion(angle: float, zoom: float) -> np.ndarray:
    """``H_b_from_a``: rotation by ``angle`` degrees and zoom about the view's centre."""
    cx, cy, t = (W - 1) / 2, (H - 1) / 2, math.radians(angle)
    T = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    R = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    return T @ R @ np.diag([zoom, zoom, 1.0]) @ np.linalg.inv(T)


def _render(angle: float, zoom: float, name: str = "astronaut"):
    """Two full-size 640×480 renderings of a bundled photo, both warped from it, and the true
    ``H_b_from_a``."""
    src = _source(name)
    src_from_a = np.array([[1.0, 0.03, 190], [0.01, 1.0, 270], [2e-5, 1e-5, 1]])
    b_from_a = _motion(angle, zoom)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    a = cv2.warpPerspective(src, src_from_a, (W, H), flags=flags)
    b = cv2.warpPerspective(src, src_from_a @ np.linalg.inv(b_from_a), (W, H), flags=flags)
    return a, b, b_from_a


def _corner_error(H_a_from_b: np.ndarray, b_from_a: np.ndarray) -> float:
    c = rect_corners((W, H))
    est = project(np.linalg.inv(H_a_from_b), c)
    return float(np.linalg.norm(est - project(b_from_a, c), axis=1).mean())


@pytest.fixture(scope="module")
def wide():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_checkpoint_estimator("wide", device="cpu")


class TestHelpers:
    def test_scale_matrix_is_resize_matrix(self):
        ref = resize_matrix((800, 640), (256, 205)).numpy()
        np.testing.assert_allclose(scale_matrix((800, 640), (256, 205)), ref, atol=1e-12)

    def test_hypothesis_rotates_about_the_centre(self):
        G = _centre_transform(128, 90.0, 1.0)
        # the centre is fixed; a quarter turn of a corner about it (y down, so +90° is clockwise)
        np.testing.assert_allclose(project(G, np.array([[63.5, 63.5]])), [[63.5, 63.5]])
        np.testing.assert_allclose(project(G, np.array([[0.0, 0.0]])), [[127.0, 0.0]], atol=1e-9)

    def test_a_plausible_pair_keeps_a_in_front_of_the_horizon(self):
        from hdreg.estimators.coarse_to_fine import keeps_a_in_front

        _, _, b_from_a = _render(40.0, 1.8)
        assert keeps_a_in_front(np.linalg.inv(b_from_a), (W, H))
        # a perspective that sends A's right edge towards the horizon (w → 0 there)
        tilted = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.9 / W, 0, 1.0]])
        assert not keeps_a_in_front(np.linalg.inv(tilted), (W, H))
        assert not keeps_a_in_front(np.zeros((3, 3)), (W, H))

    def test_confidence_of_the_truth_and_of_a_wrong_answer(self):
        a, b, b_from_a = _render(30.0, 1.0)
        good = alignment_confidence(a, b, np.linalg.inv(b_from_a))
        bad = alignment_confidence(a, b, np.eye(3))
        assert good[0] > 0.8 and good[2] > 0.6
        assert bad[0] < 0.5 * good[0]

    def test_masked_correlation_is_zero_where_undefined(self):
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(2, 12, 12)).astype(np.float32)
        mask = np.zeros((12, 12), bool)
        mask[2:8, 3:9] = True
        expected = np.corrcoef(x[mask].astype(np.float64), y[mask].astype(np.float64))[0, 1]
        assert zncc_masked(x, y, mask) == pytest.approx(expected, abs=1e-12)
        assert zncc_masked(x, np.ones_like(y), mask) == 0.0  # flat: no evidence, not NaN
        mask[:] = False
        mask[0, :10] = True  # under 16 pixels
        assert zncc_masked(x, y, mask) == 0.0


class TestShippedWide:
    def test_loads_by_name_as_the_whole_estimator(self, wide):
        assert isinstance(wide, CoarseToFineEstimator) and wide.name == "wide"

    def test_settings_are_the_config_over_the_constructor_defaults(self):
        """hdreg/configs/estimator/wide.yaml lists only what differs from the defaults: with
        them it gives exactly the settings the shipped file carries."""
        defaults = {
            k: list(p.default) if isinstance(p.default, tuple) else p.default
            for k, p in inspect.signature(CoarseToFineEstimator).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        config = estimator_config("wide")
        # (``name`` is the file's label in tables, whatever the constructor's default)
        repeated = {k for k, v in config.items() if k != "name" and defaults.get(k, v) == v}
        assert not repeated - {"kind", "refine", "proposal", "dense"}
        shipped = read_checkpoint("wide").meta["hdreg_estimator"]
        assert {**{k: defaults[k] for k in shipped if k in defaults}, **config} == shipped

    def test_patch_homography_is_opencvs_four_point_solve(self, wide):
        offsets = np.random.default_rng(2).uniform(-30, 30, (4, 2))
        c = rect_corners((wide.patch, wide.patch), dtype=np.float32)
        cv = cv2.getPerspectiveTransform(c, (c + offsets).astype(np.float32))
        np.testing.assert_allclose(wide._patch_homography(offsets), cv, rtol=1e-5, atol=1e-6)
        assert wide._patch_homography(-rect_corners((wide.patch, wide.patch))) is None

    @pytest.mark.slow
    def test_recovers_a_large_rotation_and_zoom_to_under_a_pixel(self, wide):
        a, b, b_from_a = _render(40.0, 1.8)
        est = wide.estimate([a], [b])
        assert not est.failed[0], est.reasons[0]
        assert _corner_error(est.H_a_from_b[0], b_from_a) < 1.0

    @pytest.mark.slow
    def test_its_proposed_classes_recover_any_rotation(self, wide):
        """The shipped `wide` tries its few likeliest rotation × zoom classes, found by its
        encoder's scale-space search, not every hypothesis."""
        a, b, b_from_a = _render(100.0, 1.0)
        result = wide.estimate_pair(a, b)
        assert result.H_a_from_b is not None, result.reason
        assert _corner_error(result.H_a_from_b, b_from_a) < 1.0
        assert np.isfinite(result.details["proposal_scores"]).sum() == wide.proposals
        assert "global_fallback" not in result.details

    @pytest.mark.slow
    def test_recovers_a_zoom_out_of_0_3_turned_by_150_degrees(self, wide):
        a, b, b_from_a = _render(150.0, 0.3)
        result = wide.estimate_pair(a, b)
        assert result.H_a_from_b is not None, result.reason
        assert _corner_error(result.H_a_from_b, b_from_a) < 1.0

    @pytest.mark.parametrize("changes", [True, False])
    def test_a_final_pass_that_keeps_nothing_ends_them(self, wide, monkeypatch, changes):
        """A repeated pass at the finest level runs only after one that changed the estimate:
        from the same estimate it would see the same windows and repeat the same result."""
        sides = []

        def level(pair, side):
            sides.append(side)
            return changes

        monkeypatch.setattr(wide, "final_passes", 3)
        monkeypatch.setattr(wide, "_refine_level", level)
        wide._refine(_Pair(*_render(0.0, 1.0)[:2], np.eye(3), {}))
        assert sides == ([256, 512, W, W, W] if changes else [256, 512, W])

    def test_its_levels_match_every_cell_with_the_dense_matcher(self, wide, monkeypatch):
        """Every level is matched cell by cell (inlier cells, far more than a grid's 25
        windows), B's features computed once per level whatever the passes, and the render is
        recovered to under a pixel."""
        a, b, b_from_a = _render(12.0, 1.1)
        result = wide.estimate_pair(a, b)
        assert result.H_a_from_b is not None, result.reason
        used = result.details["level_windows"]
        assert abs(used[0]) > 100 and abs(used[-1]) > 100
        assert _corner_error(result.H_a_from_b, b_from_a) < 1.0
        calls = []
        forward = wide.dense_net.forward
        monkeypatch.setattr(
            wide.dense_net, "forward", lambda x: calls.append(x.shape) or forward(x)
        )
        pair = _Pair(a, b, np.linalg.inv(b_from_a), {})
        wide._refine(pair)
        sides = [max(shape[-2:]) for shape in calls]
        assert sorted(k[0] for k in pair.features_b) == [256, 512, W]
        assert sides.count(W) == len(pair.details["level_windows"]) - 2 + 1  # B once, A per pass

    def test_a_level_of_many_pixels_is_matched_inside_windows(self, wide, monkeypatch):
        """Over ``dense_max_pixels`` a level is matched inside the grid's P×P windows (a photo of
        many megapixels at full resolution), with the same result quality."""
        monkeypatch.setattr(wide, "dense_max_pixels", 300 * 300)
        a, b, b_from_a = _render(-20.0, 0.9)
        pair = _Pair(a, b, np.linalg.inv(b_from_a) @ _motion(1.0, 1.01), {})
        wide._refine(pair)
        windowed = [k for k in pair.features_b if len(k[1]) > 1]
        assert [k[0] for k in windowed] == [512, W]  # 256 × 192 fits; the others do not
        assert all(len(k[1]) <= wide.grid**2 for k in windowed)
        assert _corner_error(pair.H, b_from_a) < 1.0

    def test_beats_the_identity_and_reports_its_confidence(self, wide):
        a, b, b_from_a = _render(-15.0, 1.2)
        est = wide.estimate([a], [b])
        assert not est.failed[0], est.reasons[0]
        assert _corner_error(est.H_a_from_b[0], b_from_a) < 0.1 * _corner_error(np.eye(3), b_from_a)
        assert est.details[0]["confidence"] > 0.6

    def test_unrelated_photos_fail_with_a_reason(self, wide):
        a = _render(0.0, 1.0, "astronaut")[0]
        b = _render(0.0, 1.0, "coffee")[1]
        est = wide.estimate([a], [b])
        assert est.failed[0] and "confidence" in est.reasons[0]
        np.testing.assert_array_equal(est.H_a_from_b[0], np.eye(3))

    @pytest.mark.parametrize("spec", ["wide", "iterative"])
    def test_blank_photos_fail_with_a_reason(self, spec):
        estimator = load_checkpoint_estimator(spec, device="cpu")
        black = np.zeros((480, 640), np.uint8)
        est = estimator.estimate([black], [black.copy()])
        assert est.failed[0] and "blank" in est.reasons[0]


def test_a_plain_network_with_a_confidence_threshold_fails_unrelated_photos():
    estimator = load_checkpoint_estimator("iterative", device="cpu", min_confidence=0.2)
    a = _render(0.0, 1.0, "astronaut")[0]
    b = _render(0.0, 1.0, "coffee")[1]
    est = estimator.estimate([a], [b])
    assert est.failed[0] and "confidence" in est.reasons[0]
    a, b, _ = _render(3.0, 1.0)
    assert not estimator.estimate([a], [b]).failed[0]


def test_argument_checks():
    net = torch.nn.Linear(1, 1)
    net.patch_size = 128
    with pytest.raises(ValueError, match="zooms must be positive"):
        CoarseToFineEstimator(net, zooms=(0.0,))
    with pytest.raises(ValueError, match="grid must be"):
        CoarseToFineEstimator(net, grid=0)


# `wide` alone on unrelated photos: the same estimate as test_unrelated_photos_fail_with_a_reason,
# through the exit path that the other cases take; one of the slowest (the full-size network).
SAME_AS_THE_API = pytest.mark.slow


ALIGN_METHODS = {"wide": ["--checkpoint", "wide"], "iterative": ["--checkpoint", "iterative"],
                 "sift": ["--method", "sift"], "default": []}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        pytest.param(kind, args, id=f"{kind}-{name}",
                     marks=SAME_AS_THE_API if (kind, name) == ("unrelated", "wide") else ())
        for kind in ("black", "unrelated") for name, args in ALIGN_METHODS.items()
    ],
)  # fmt: skip
def test_align_exits_1_with_a_reason(tmp_path, capsys, method, kind):
    from hdreg.apps.cli import main

    if kind == "black":
        a = b = np.zeros((480, 640), np.uint8)
    else:
        a, b = _render(0.0, 1.0, "astronaut")[0], _render(0.0, 1.0, "coffee")[1]
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    code = main(["align", str(tmp_path / "a.png"), str(tmp_path / "b.png"), *method,
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "failed:" in err, err
    assert not (tmp_path / "out" / "homography.json").exists()


def test_dense_global_stage_matches_the_encoders_features_across_a_large_rotation(wide):
    """``global_stage="dense"``: mutual nearest neighbours of the coarse encoder's features and
    MAGSAC++ find a 100° rotation that the network alone never saw, to a few pixels at the global
    stage; the refinement levels then take it under a pixel."""
    from hdreg.estimators.coarse_to_fine import _Pair

    dense = CoarseToFineEstimator(
        wide.global_net, wide.refine_net, rotations=(0, 45, 90, 135, 180, 225, 270, 315),
        levels=(256, 512), grid=5, ransac_threshold=1.5, global_stage="dense",
    )  # fmt: skip
    a, b, b_from_a = _render(100.0, 1.0)
    pair = _Pair(a, b, np.eye(3), {})
    dense._global_dense(pair)
    assert pair.details["hypothesis_rotation"] in (225.0, 270.0)  # A' = A(G p): the other way
    assert _corner_error(pair.H, b_from_a) < 8.0
    est = dense.estimate([a], [b])
    assert not est.failed[0], est.reasons[0]
    assert _corner_error(est.H_a_from_b[0], b_from_a) < 1.0
    with pytest.raises(ValueError, match="global_stage must be"):
        CoarseToFineEstimator(wide.global_net, global_stage="sparse")
