"""Real-pair benchmarks with awkward ground truth: unusable pairs are skipped with their reason,
pairs whose ground truth crosses the horizon are scored on the part of A that B sees, legitimate
strong zooms and foreshortening raise no warning, and one pair never counts twice."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from hdreg.data.real.pairs import (
    RealPair,
    check_ground_truth,
    crosses_horizon,
    find_real_pairs,
    overlap_polygon,
)
from hdreg.estimators import IdentityEstimator
from hdreg.evaluation.benchmarks import EvalPairs, real_pairs
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

from .conftest import REPO
from .fixtures import homographies_b_from_a, sample_photo, warp_b, write_matrix
from .warm_python import run_python

# x = 80 is this ground truth's horizon: A's right half goes behind the camera.
H_HORIZON = np.array([[1.0, 0, 0], [0, 1, 0], [-1 / 80, 0, 1]])
# The part of a 100x100 A that lands inside a 100x100 B: x <= 99 w and y <= 99 w, w = 1 - x/80,
# cut A's square at x = 99 * 80 / 179 and below the line y = 99 (1 - x/80).
X_CUT = 99 * 80 / 179


def _pair(tmp_path: Path, name: str = "seq", k: int = 2) -> RealPair:
    d = tmp_path / name
    return RealPair(name, k, d / "1.png", d / f"{k}.png", None, d / f"H_1_{k}")


def _write_pair(folder: Path, image_a: np.ndarray, H_b_from_a: np.ndarray) -> None:
    """An HPatches-layout pair: 1.png, 2.png (A seen through ``H_b_from_a``) and H_1_2."""
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "1.png"), image_a)
    cv2.imwrite(str(folder / "2.png"), warp_b(image_a, H_b_from_a))
    write_matrix(folder / "H_1_2", H_b_from_a)


class TestHorizonCrossingGroundTruth:
    def test_overlap_polygon_hand_computed(self):
        region = overlap_polygon(H_HORIZON, (100, 100), (100, 100))
        expected = [[0, 0], [X_CUT, 0], [X_CUT, X_CUT], [0, 99]]  # 99 (1 - X_CUT/80) = X_CUT
        np.testing.assert_allclose(region, expected, atol=1e-9)
        # the sign of a file's matrix is arbitrary: -H is the same ground truth
        np.testing.assert_allclose(overlap_polygon(-H_HORIZON, (100, 100), (100, 100)), expected)
        assert crosses_horizon(H_HORIZON, (100, 100)) and not crosses_horizon(-np.eye(3), (9, 9))

    def test_scored_on_the_part_of_a_that_b_sees(self, tmp_path):
        blank = np.zeros((100, 100), np.uint8)
        pairs = EvalPairs.from_real("t", [_pair(tmp_path)], [blank], [blank], H_HORIZON[None])
        assert len(pairs) == 1 and pairs.clipped.tolist() == [True]
        assert pairs.counts.tolist() == [4]
        # the vertices land on B's corners (0, 0), (99, 0), (99, 99) and (0, 99); the identity
        # leaves the two cut vertices (X_CUT, 0) and (X_CUT, X_CUT) 99 - X_CUT (x, y) short
        identity = pairs.errors(np.eye(3)[None])[0]
        assert identity == pytest.approx((99 - X_CUT) * (1 + np.sqrt(2)) / 4, rel=1e-12)
        exact = np.linalg.inv(H_HORIZON)[None]  # H_a_from_b
        assert pairs.errors(exact)[0] == pytest.approx(0, abs=1e-9)
        assert pairs.folds(exact).tolist() == [False] and pairs.folds(np.eye(3)[None]).tolist() == [
            False
        ]
        # an estimate that sends a vertex of the part through the horizon folds it
        folding = np.linalg.inv(np.array([[1.0, 0, 0], [0, 1, 0], [-1 / 20, 0, 1]]))[None]
        assert pairs.folds(folding).tolist() == [True]

    def test_a_set_mixing_corners_and_polygons(self, tmp_path):
        # a 5-vertex part pads the 4-corner pair; each is scored on its own points
        blank = np.zeros((100, 100), np.uint8)
        five = np.array([[0.6, 0, 0], [0, 0.6, 0], [-1 / 90, 0, 1]])  # cut by B's edges and A's
        H = np.stack([np.eye(3), five, H_HORIZON])
        p = [_pair(tmp_path, s) for s in ("a", "b", "c")]
        pairs = EvalPairs.from_real("t", p, [blank] * 3, [blank] * 3, H)
        assert pairs.clipped.tolist() == [False, True, True] and pairs.counts.tolist() == [4, 5, 4]
        errors = pairs.errors(np.eye(3)[None].repeat(3, 0))
        assert errors[0] == 0 and errors[2] == pytest.approx((99 - X_CUT) * (1 + np.sqrt(2)) / 4)
        np.testing.assert_allclose(pairs.errors(np.linalg.inv(H)), 0, atol=1e-9)

    def test_nothing_in_view_is_skipped(self, tmp_path):
        # a corner behind the camera and every point in front mapped beyond B: no part to score
        H = np.array([[1.0, 0, 500], [0, 1, 0], [-1 / 80, 0, 1]])
        blank = np.zeros((100, 100), np.uint8)
        pairs = EvalPairs.from_real("t", [_pair(tmp_path)], [blank], [blank], H[None])
        assert len(pairs) == 0 and [s.id for s in pairs.skipped] == ["seq/1-2"]
        assert "nothing to score" in pairs.skipped[0].reason
        with pytest.raises(ValueError, match=r"no pairs to evaluate \(all 1 skipped: seq/1-2"):
            evaluate(pairs, [IdentityEstimator()], progress=False)


def _bark_like(size=(765, 512), zoom=0.24, degrees=150.0):
    """Oxford bark 1 -> 6: a zoom out to 0.24x and a rotation about the centre."""
    c = np.array([[1, 0, -(size[0] - 1) / 2], [0, 1, -(size[1] - 1) / 2], [0, 0, 1.0]])
    t = np.deg2rad(degrees)
    R = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    return np.linalg.inv(c) @ R @ np.diag([zoom, zoom, 1]) @ c


def _oblique_view(theta_deg: float, distance: float, size=(640, 480), f=500.0):
    """A plane seen face-on in A and from ``theta_deg`` off its normal in B, B's camera at
    ``distance`` (times A's) from the point in the middle of A: H = K (R + t n^T / d) K^-1."""
    K = np.array([[f, 0, (size[0] - 1) / 2], [0, f, (size[1] - 1) / 2], [0, 0, 1]])
    th = np.deg2rad(theta_deg)
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    centre = np.array([0, 0, 1.0]) - distance * R @ np.array([0, 0, 1.0])
    H = K @ (R.T + np.outer(-R.T @ centre, [0, 0, 1.0])) @ np.linalg.inv(K)
    return H / H[2, 2]


class TestPlausibility:
    @pytest.mark.parametrize(
        ("H", "size"),
        [
            (_bark_like(), (765, 512)),
            (np.linalg.inv(_bark_like()), (765, 512)),  # bark 6 -> 1: a 4.2x zoom in
            (_oblique_view(60, 0.6), (640, 480)),  # A's corners map to 62x B's area
        ],
        ids=["bark-zoom-out", "bark-zoom-in", "foreshortening"],
    )
    def test_strong_real_views_raise_no_warning(self, tmp_path, H, size):
        pair = _pair(tmp_path)
        pair.H_b_from_a = H
        assert not crosses_horizon(H, size)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_ground_truth([pair], [size], [size])

    def test_foreshortening_across_the_horizon_raises_no_warning(self, tmp_path):
        # B's camera so close and oblique that A's left corners are behind it (an EVD-like pair);
        # scaled so that H[2, 2] = 1, as in a file, the matrix's sign puts A's (0, 0) in front
        H = _oblique_view(75, 0.4)
        pair = _pair(tmp_path)
        pair.H_b_from_a = H
        assert crosses_horizon(H, (640, 480))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_ground_truth([pair], [(640, 480)], [(640, 480)])
        # the part B sees is the side of the horizon where A's middle is, whatever the sign
        region = overlap_polygon(H, (640, 480), (640, 480))
        assert cv2.pointPolygonTest(region.astype(np.float32), (319.5, 239.5), False) > 0

    @pytest.mark.parametrize(
        ("H", "size_b"),
        [
            (homographies_b_from_a()[0], (20, 15)),  # B at 1/16 of the ground truth's resolution
            # an H for 8x larger images (2560x1920): a 400-px shift leaves nothing in common
            (np.array([[0.99, -0.05, 400], [0.05, 0.99, 250], [0, 0, 1]]), (320, 240)),
            (np.array([[1, 0, 2000], [0, 1, 0], [0, 0, 1.0]]) @ homographies_b_from_a()[1],
             (320, 240)),  # another pair's file: maps A far outside B
        ],
        ids=["small-b", "other-resolution", "other-images"],
    )  # fmt: skip
    def test_ground_truth_of_other_images_or_resolution_warns(self, tmp_path, H, size_b):
        pair = _pair(tmp_path)
        pair.H_b_from_a = H
        with pytest.warns(UserWarning, match=r"1 ground truth\(s\) implausible") as record:
            check_ground_truth([pair], [(320, 240)], [size_b])
        assert str(pair.path_h) in str(record[0].message)


class TestUnusablePairs:
    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            ("1 0 0\n0 1 0\n", "found 6 numbers, expected 9"),
            ("1 0 0\n0 1 0\n0 0 nan", "not finite"),
            ("1 2 3\n2 4 6\n0 0 1", "singular"),
            ("1 0 0\n0 x 0\n0 0 1", "'x' is not a number"),
            ('<?xml version="1.0"?>\n<opencv_storage><H type_id="opencv-matrix"><rows>3', "XML"),
        ],
        ids=["two-rows", "nan", "singular", "not-a-number", "broken-xml"],
    )
    def test_bad_ground_truth_is_skipped_with_its_reason(self, tmp_path, content, reason):
        a = sample_photo("coffee.png", (80, 60))
        _write_pair(tmp_path / "good", a, np.eye(3))
        bad = tmp_path / "bad"
        _write_pair(bad, a, np.eye(3))
        name = "H_1_2.xml" if "xml" in content else "H_1_2"
        (bad / "H_1_2").unlink()
        (bad / name).write_text(content)
        with pytest.raises(ValueError, match=reason):
            find_real_pairs(tmp_path)  # strict: the error names the file
        pairs = real_pairs(str(tmp_path))
        assert pairs.ids == ["good/1-2"] and [s.id for s in pairs.skipped] == ["bad/1-2"]
        assert reason in pairs.skipped[0].reason and str(bad / name) in pairs.skipped[0].reason

    def test_unreadable_image_is_skipped(self, tmp_path):
        a = sample_photo("coffee.png", (80, 60))
        for seq in ("p1", "p2", "p3"):
            _write_pair(tmp_path / seq, a, np.eye(3))
        (tmp_path / "p2" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        (tmp_path / "p3" / "1.png").write_bytes(b"")
        pairs = real_pairs(str(tmp_path))
        assert pairs.ids == ["p1/1-2"]
        assert [s.id for s in pairs.skipped] == ["p2/1-2", "p3/1-2"]
        assert all("cannot read image" in s.reason for s in pairs.skipped)
        assert str(tmp_path / "p2" / "2.png") in pairs.skipped[0].reason


class TestOnePairOneGroundTruth:
    def test_same_matrix_in_two_files_is_one_pair(self, tmp_path):
        a = sample_photo("coffee.png", (80, 60))
        H = homographies_b_from_a()[0]
        _write_pair(tmp_path / "seq", a, H)
        # the same matrix at another scale and precision, as another tool would write it
        (tmp_path / "seq" / "H_1_2.txt").write_text(" ".join(f"{v:.12g}" for v in (2 * H).ravel()))
        pairs = find_real_pairs(tmp_path)
        assert [p.pair_id for p in pairs] == ["seq/1-2"] and pairs[0].path_h.name == "H_1_2"

    def test_two_different_files_are_an_error_naming_both(self, tmp_path):
        a = sample_photo("coffee.png", (80, 60))
        _write_pair(tmp_path / "seq", a, homographies_b_from_a()[0])
        write_matrix(tmp_path / "seq" / "H_1_2.txt", homographies_b_from_a()[1])
        with pytest.raises(ValueError, match="two different ground truths of pair seq/1-2") as e:
            find_real_pairs(tmp_path)
        message = str(e.value)
        assert str(tmp_path / "seq" / "H_1_2") in message and "H_1_2.txt" in message
        assert "\n" not in message
        # in an evaluation the pair is skipped with that reason, the others scored
        _write_pair(tmp_path / "other", a, np.eye(3))
        pairs = real_pairs(str(tmp_path))
        assert pairs.ids == ["other/1-2"] and [s.id for s in pairs.skipped] == ["seq/1-2"]


@pytest.fixture
def awkward_root(tmp_path):
    """Three pairs from scikit-image photos: a ground truth across the horizon (its right side
    goes behind the camera), a NaN matrix, and a corrupt image."""
    root = tmp_path / "pairs"
    a = sample_photo("astronaut.png")  # 320x240
    # x = 300 maps to infinity; every pixel of B shows the side of A in front of the camera
    horizon = np.array([[0.6, 0, 0], [0, 0.6, 0], [-1 / 300, 0, 1]])
    _write_pair(root / "horizon", a, horizon)
    _write_pair(root / "nan", sample_photo("coffee.png"), homographies_b_from_a()[0])
    (root / "nan" / "H_1_2").write_text("1 0 0\n0 1 0\n0 nan 1\n")
    _write_pair(root / "corrupt", sample_photo("chelsea.png"), homographies_b_from_a()[1])
    (root / "corrupt" / "2.png").write_bytes((root / "corrupt" / "2.png").read_bytes()[:200])
    return root


def test_report_lists_skipped_and_clipped_pairs(awkward_root, tmp_path):
    pairs = real_pairs(str(awkward_root))
    result = evaluate(pairs, [IdentityEstimator()], progress=False)
    paths = write_report(result, tmp_path / "report")
    table = paths["table"].read_text()
    assert table == format_table(result)
    assert table.startswith("Corner error (px) on 1 real pairs (skipped 2):")
    assert "Skipped 2 pair(s)" in table and "corrupt/1-2 (cannot read image" in table
    assert "Scored on the part of image A that lands inside B" in table and "horizon/1-2" in table
    assert "| nan/1-2 | skipped |" in table


def test_evaluate_py_scores_what_it_can(awkward_root, tmp_path):
    """python evaluate.py benchmark=pairs over the three pairs: exit 0, the horizon pair scored
    on the part of A that B sees, the other two skipped with their reasons."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    proc = run_python(  # python evaluate.py ..., forked from a warm interpreter
        [REPO / "evaluate.py", "benchmark=pairs", f"benchmark.root={awkward_root}",
         "methods=[identity,sift]", "progress=false", f"hydra.run.dir={run}", "num_workers=1"],
        env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 1 real pairs (skipped 2)" in proc.stdout
    assert "nan/1-2 (homography file" in proc.stdout and "not finite" in proc.stdout
    assert "corrupt/1-2 (cannot read image" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["identity"]["n"] == results["sift"]["n"] == 1
    # the identity's error, by hand: with w = 1 - x/300, A's points land in B where
    # 0.6 x <= 319 w (so x <= x1) and 0.6 y <= 239 w; the second bound meets A's bottom edge
    # y = 239 at x = 120 (w = 0.6). The part's vertices land at (0, 0), (319, 0), (319, 239),
    # (120, 239) and (0, 0.6 * 239) in B.
    x1 = 319 / (0.6 + 319 / 300)
    y1 = 239 * (1 - x1 / 300) / 0.6
    part = np.array([[0, 0], [x1, 0], [x1, y1], [120, 239], [0, 239]])
    in_b = np.array([[0, 0], [319, 0], [319, 239], [120, 239], [0, 0.6 * 239]])
    expected = np.linalg.norm(part - in_b, axis=1).mean()
    assert results["identity"]["mace"] == pytest.approx(expected, rel=1e-6)
    rows = list(csv.DictReader((run / "pairs.csv").open()))
    skipped = {(r["method"], r["pair"]): r for r in rows if r["reason"].startswith("skipped: ")}
    assert set(skipped) == {
        (m, p) for m in ("identity", "sift") for p in ("nan/1-2", "corrupt/1-2")
    }
    assert all(r["error"] == r["failed"] == "" for r in skipped.values())
    assert "not finite" in skipped["sift", "nan/1-2"]["reason"]
    assert "cannot read image" in skipped["sift", "corrupt/1-2"]["reason"]
    scored = [r for r in rows if r["pair"] == "horizon/1-2"]
    assert len(scored) == 2 and all(np.isfinite(float(r["error"])) for r in scored)
