"""``hdreg align``: the right homography in the right direction, readable outputs, clear errors.

The real-pair test aligns Oxford graf 1 → 2 and scores ``b_from_a`` against ``H1to2p`` (which maps
image 1 = A into image 2 = B).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from hdreg.apps.align import OUTPUT_FILES, RECORD_FILE, Alignment, _keypoint_overrides, _spec
from hdreg.apps.cli import main
from hdreg.config import compose_config
from hdreg.data.real.pairs import read_homography_file
from hdreg.estimators.registry import resolve
from hdreg.visualize import overlay_image, warp_b_into_a
from hdreg.weights import shipped

from .conftest import oxford_sequence, textured_image, tiny_module


def write_tiny_checkpoint(path: Path) -> Path:
    """An untrained, tiny supervised HomographyNet in the weights-only format ``load_module``
    reads (its regression head starts at zero offsets, so it answers the identity)."""
    from hdreg.models.checkpoint import save_weights

    return save_weights(tiny_module(), path)


def corners(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def project(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    q = np.c_[points, np.ones(len(points))] @ np.asarray(H).T
    return q[:, :2] / q[:, 2:]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["align", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def shifted_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A textured image and the same image shifted by (3, 2) px, as PNG files."""
    a = textured_image(240, 320, seed=7)
    b = cv2.warpAffine(a, np.float32([[1, 0, -3], [0, 1, -2]]), (320, 240))  # B(p) = A(p + t)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    return tmp_path / "a.png", tmp_path / "b.png"


class TestAlignGraf:
    def test_sift_graf_1_to_2(self, tmp_path, capsys):
        graf = oxford_sequence("graf")
        out_dir = tmp_path / "out"
        code, out, err = run(
            [graf / "img1.ppm", graf / "img2.ppm", "--method", "sift", "--out", out_dir], capsys
        )
        assert code == 0, err
        assert "sift" in out and "inliers" in out and str(out_dir) in out

        result = json.loads((out_dir / "homography.json").read_text())
        b_from_a, a_from_b = np.array(result["b_from_a"]), np.array(result["a_from_b"])
        assert b_from_a.shape == a_from_b.shape == (3, 3)
        assert b_from_a[2, 2] == pytest.approx(1.0) and a_from_b[2, 2] == pytest.approx(1.0)
        product = a_from_b @ b_from_a
        np.testing.assert_allclose(product / product[2, 2], np.eye(3), atol=1e-9)
        assert result["size_a"] == result["size_b"] == [800, 640]
        assert result["method"] == "sift" and result["refine"] is None
        details = result["details"]
        assert details["inliers"] >= 8 and details["matches"] >= details["inliers"]
        assert f"matches {details['matches']}, inliers {details['inliers']}" in out
        assert 0 < result["correlation"] <= 1 and result["seconds"] > 0

        c = corners((800, 640))
        H_true = read_homography_file(graf / "H1to2p")
        error = np.linalg.norm(project(b_from_a, c) - project(H_true, c), axis=1).mean()
        assert error < 5.0, f"corner error {error:.2f} px against H1to2p"

        for name in ("b_warped_to_a.png", "overlay.png", "matches.png"):
            image = cv2.imread(str(out_dir / name))
            assert image is not None, name
        assert cv2.imread(str(out_dir / "b_warped_to_a.png")).shape[:2] == (640, 800)
        assert cv2.imread(str(out_dir / "overlay.png")).shape == (640, 800, 3)

    def test_large_photos_matched_downsized(self, tmp_path, capsys):
        """Photos larger than --max-side are matched on downsized copies; the homography is
        still the full-resolution one (graf is 800x640: --max-side 400 halves it)."""
        graf = oxford_sequence("graf")
        out_dir = tmp_path / "out"
        args = [graf / "img1.ppm", graf / "img2.ppm", "--method", "sift", "--max-side", "400"]
        code, _, err = run([*args, "--out", out_dir], capsys)
        assert code == 0, err
        result = json.loads((out_dir / "homography.json").read_text())
        assert result["size_a"] == result["size_b"] == [800, 640]
        assert result["matched_size_a"] == result["matched_size_b"] == [400, 320]
        c = corners((800, 640))
        H_true = read_homography_file(graf / "H1to2p")
        error = np.linalg.norm(project(result["b_from_a"], c) - project(H_true, c), axis=1).mean()
        assert error < 5.0, f"corner error {error:.2f} px against H1to2p"
        assert cv2.imread(str(out_dir / "b_warped_to_a.png")).shape[:2] == (640, 800)
        code, _, err = run([*args[:-1], "10", "--out", tmp_path / "o"], capsys)
        assert code == 2 and "--max-side must be 0" in err


class TestAlign:
    def test_failure_writes_no_homography(self, tmp_path, capsys):
        flat = np.full((120, 160), 90, np.uint8)
        cv2.imwrite(str(tmp_path / "a.png"), flat)
        cv2.imwrite(str(tmp_path / "b.png"), flat)
        out_dir = tmp_path / "out"
        code, _, err = run(
            [tmp_path / "a.png", tmp_path / "b.png", "--method", "sift", "--out", out_dir], capsys
        )
        assert code == 1
        assert "keypoints" in err and "failed" in err and "no homography written" in err
        assert not (out_dir / "homography.json").exists()
        assert not (out_dir / "overlay.png").exists()
        assert cv2.imread(str(out_dir / "matches.png")) is not None  # for diagnosis

    def test_failure_keeps_an_earlier_result(self, shifted_pair, tmp_path, capsys):
        """A failed run used to delete the homography.json and overlay.png already in --out."""
        out_dir = tmp_path / "out"
        assert run([*shifted_pair, "--method", "sift", "--out", out_dir], capsys)[0] == 0
        before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
        assert {"homography.json", "overlay.png", "matches.png"} <= set(before)
        flat = np.full((120, 160), 90, np.uint8)
        cv2.imwrite(str(tmp_path / "flat.png"), flat)
        code, _, err = run(
            [tmp_path / "flat.png", tmp_path / "flat.png", "--method", "sift", "--out", out_dir],
            capsys,
        )
        assert code == 1 and "nothing written" in err and "homography.json" in err
        assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    def test_bad_device_is_named(self, shifted_pair, tmp_path, capsys):
        code, _, err = run([*shifted_pair, "--device", "foo", "--out", tmp_path / "o"], capsys)
        assert code == 2
        assert err.strip() == (
            "hdreg align: error: --device 'foo' is not a device: expected auto, cpu, cuda or "
            "cuda:<index>"
        )
        assert not (tmp_path / "o").exists()

    def test_model_needs_a_checkpoint(self, shifted_pair, tmp_path, capsys):
        code, _, err = run([*shifted_pair, "--method", "model", "--out", tmp_path / "o"], capsys)
        assert code == 2 and "--checkpoint" in err

    def test_input_errors(self, shifted_pair, tmp_path, capsys):
        a, b = shifted_pair
        code, _, err = run([tmp_path / "nope.png", b, "--out", tmp_path / "o"], capsys)
        assert code == 2 and "nope.png does not exist" in err
        (tmp_path / "bad.png").write_text("not an image")
        code, _, err = run([a, tmp_path / "bad.png", "--out", tmp_path / "o"], capsys)
        assert code == 2 and "cannot read image" in err
        code, _, err = run([a, b, "--checkpoint", tmp_path / "x.ckpt", "--out", tmp_path], capsys)
        assert code == 2 and "x.ckpt does not exist" in err
        code, _, err = run([a, b, "--method", "ecc", "--ratio", "0.8", "--out", tmp_path], capsys)
        assert code == 2 and "--ratio" in err
        assert not (tmp_path / "o").exists()

    def test_model_checkpoint_with_ecc_refinement(self, shifted_pair, tmp_path, capsys):
        ckpt = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
        out_dir = tmp_path / "out"
        # --checkpoint alone implies --method model
        args = [*shifted_pair, "--checkpoint", ckpt, "--refine", "ecc", "--device", "cpu"]
        code, out, err = run([*args, "--out", out_dir], capsys)
        assert code == 0, err
        assert out.startswith("tiny.ckpt+ecc, ")  # named by its checkpoint
        result = json.loads((out_dir / "homography.json").read_text())
        assert result["method"] == "model" and result["refine"] == "ecc"
        assert result["checkpoint"] == str(ckpt)
        # The untrained model answers the identity; ECC finds the (3, 2) px shift and is kept.
        assert result["details"]["refine_kept"] is True
        assert result["details"]["refined_by"] == "ecc"
        np.testing.assert_allclose(
            project(result["b_from_a"], [[50.0, 60.0]]), [[47, 58]], atol=0.1
        )
        assert "matches" not in result["details"] and not (out_dir / "matches.png").exists()

    def test_refiner_parameters_come_from_the_ecc_config(self, monkeypatch):
        """`--refine ecc` builds its refiner from hdreg/configs/method/ecc.yaml, not from defaults
        written in the code: a changed config changes the refiner."""
        import hdreg.config
        from hdreg.estimators import registry as methods

        real = hdreg.config.method_estimator

        def edited(name, /, **kw):
            if name == "ecc":  # as if hdreg/configs/method/ecc.yaml said so
                kw = {"refine_levels": 3, "iterations": 7, **kw}
            return real(name, **kw)

        monkeypatch.setattr(hdreg.config, "method_estimator", edited)
        est = resolve(_spec("sift", None, "ecc"))
        assert est.name == "sift+ecc"
        assert (est.refiner.refine_levels, est.refiner.iterations) == (3, 7)
        assert est.base.ratio == real("sift").ratio
        assert methods.REFINEMENTS == ("ecc", "adapt")

    def test_any_format_and_size(self, tmp_path, capsys):
        gray = textured_image(240, 320, seed=3)
        rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(tmp_path / "a.jpg"), rgb)
        rgba = cv2.cvtColor(cv2.resize(gray, (400, 300)), cv2.COLOR_GRAY2BGRA)
        cv2.imwrite(str(tmp_path / "b.png"), rgba)
        out_dir = tmp_path / "out"
        code, _, err = run(
            [tmp_path / "a.jpg", tmp_path / "b.png", "--method", "sift", "--out", out_dir], capsys
        )
        assert code == 0, err
        result = json.loads((out_dir / "homography.json").read_text())
        assert result["size_a"] == [320, 240] and result["size_b"] == [400, 300]
        # B is A scaled by 1.25 (cv2.resize's pixel-centre map): B's corners land on A's.
        a_from_b = np.array(result["a_from_b"])
        expected = (corners((400, 300)) + 0.5) / 1.25 - 0.5
        np.testing.assert_allclose(project(a_from_b, corners((400, 300))), expected, atol=1.0)
        assert cv2.imread(str(out_dir / "b_warped_to_a.png")).shape[:2] == (240, 320)
        assert {*OUTPUT_FILES, RECORD_FILE} == {p.name for p in out_dir.iterdir()}

    def test_a_shipped_model_is_shown_by_its_name(self):
        def shown(method: str, checkpoint: str | None) -> str:
            return Alignment.name.fget(SimpleNamespace(method=method, checkpoint=checkpoint))

        assert shown("model", str(shipped("wide").path)) == "wide"
        assert shown("model", "runs/x/best.ckpt") == "best.ckpt"
        assert shown("sift", None) == "sift"

    def test_the_default_is_wide_refined_by_ecc(self):
        """Without --method or --checkpoint: the most accurate method measured at the full range
        of camera motion (docs/results.md)."""
        spec = _spec(None, None, None)
        assert (spec.text, spec.method, spec.checkpoint.name, spec.refine) == (
            "wide",
            None,
            "wide.pt",
            "ecc",
        )
        assert _spec(None, None, "adapt").refine == "adapt"

    def test_options_change_only_their_parameter_of_the_method_config(self):
        spec = _spec("orb", None, None)
        est = resolve(spec, overrides=_keypoint_overrides(spec, ratio=0.6, robust="magsac"))
        config = compose_config("method/orb")
        assert (est.detector, est.ratio, est.robust) == ("orb", 0.6, "magsac")
        assert est.reproj_threshold == config.reproj_threshold != 0.6
        assert est.min_matches == config.min_matches


def test_warp_b_into_a_matches_opencv_forward_warp():
    """B warped into A with H_b_from_a (inverse map) is OpenCV's forward warp by H_a_from_b."""
    b = textured_image(60, 80, seed=4)
    H_a_from_b = np.array([[1.05, 0.02, 3.0], [-0.01, 0.98, -2.0], [1e-4, 2e-4, 1.0]])
    H_b_from_a = np.linalg.inv(H_a_from_b)
    warped, covered = warp_b_into_a(b, H_b_from_a, (90, 70))
    ref = cv2.warpPerspective(b, H_a_from_b, (90, 70), flags=cv2.INTER_LINEAR)
    assert warped.shape == (70, 90)
    assert np.abs(warped.astype(int) - ref)[covered].max() <= 1
    # covered: exactly the pixels of A whose sample lies within B's outermost pixel centres
    ys, xs = np.mgrid[0:70, 0:90]
    q = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3) @ H_b_from_a.T
    p = (q[:, :2] / q[:, 2:]).reshape(70, 90, 2)

    def within(tol):
        x, y = p[..., 0], p[..., 1]
        return (x >= -tol) & (x <= 79 + tol) & (y >= -tol) & (y <= 59 + tol)

    # OpenCV's fixed-point sample positions (1/32 px): exact up to that tolerance
    assert covered[within(-0.05)].all() and not covered[~within(0.05)].any()
    assert 0.5 < covered.mean() < 1.0


def test_overlay_is_gray_where_aligned():
    a = textured_image(60, 80, seed=2)
    covered = np.ones_like(a, bool)
    # a change of exposure between the photos must not tint the overlay
    brighter = np.clip(a.astype(np.float64) * 0.8 + 30, 0, 255).astype(np.uint8)
    overlay = overlay_image(a, brighter, covered)
    assert overlay.shape == (60, 80, 3)
    assert np.abs(overlay[..., 1].astype(int) - overlay[..., 0]).mean() < 2.0
    np.testing.assert_array_equal(overlay[..., 0], overlay[..., 2])
    shifted = overlay_image(a, np.roll(a, 4, axis=1), covered)
    assert np.abs(shifted[..., 1].astype(int) - shifted[..., 0]).mean() > 10.0
