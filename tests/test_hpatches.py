"""The HPatches protocol (benchmark=hpatches) and the AUC it reports."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from hdreg.evaluation.hpatches import LARGE_SEQUENCES, hpatches_pairs, short_side_size
from hdreg.evaluation.metrics import error_auc, summarize

from .conftest import REPO
from .fixtures import write_sequence
from .warm_python import run_python


class TestAUC:
    def test_hand_computed(self):
        # errors 0.5, 2, 4, 10 px; the curve joins (0, 0), (0.5, .25), (2, .5), (4, .75), (10, 1):
        # up to 1 px:  area .25*.5/2 + .25*.5                    = 0.1875, / 1
        # up to 3 px:  .0625 + (.25+.5)/2*1.5 + .5*1             = 1.125,  / 3 = 0.375
        # up to 5 px:  .0625 + .5625 + (.5+.75)/2*2 + .75*1       = 2.625,  / 5 = 0.525
        assert error_auc(np.array([10.0, 2.0, 0.5, 4.0]), (1, 3, 5)) == pytest.approx(
            [0.1875, 0.375, 0.525], abs=1e-12
        )

    def test_limits(self):
        assert error_auc(np.zeros(7), (1, 3)) == [1.0, 1.0]
        assert error_auc(np.full(3, 6.0), (1, 5)) == [0.0, 0.0]
        # an infinite error (a corner thrown through infinity) is a miss, not a NaN
        assert error_auc(np.array([0.0, np.inf]), (1,)) == pytest.approx([0.5])

    def test_errors(self):
        with pytest.raises(ValueError, match="empty"):
            error_auc(np.array([]))
        with pytest.raises(ValueError, match="NaN"):
            error_auc(np.array([1.0, np.nan]))
        with pytest.raises(ValueError, match="thresholds must be > 0"):
            error_auc(np.array([1.0]), (0,))

    def test_in_summary(self):
        s = summarize(np.array([0.5, 2.0, 4.0, 10.0]), np.zeros(4, bool), np.zeros(4))
        assert (s["auc1"], s["auc3"], s["auc5"]) == pytest.approx((0.1875, 0.375, 0.525))


@pytest.fixture
def hpatches_root(tmp_path):
    """Two HPatches-layout sequences of 320×240 images (3 pairs each), plus one of the 8
    sequences the protocol leaves out."""
    root = tmp_path / "hpatches-sequences-release"
    truth = {
        "v_astro": write_sequence(root / "v_astro", "hpatches", "astronaut.png"),
        "i_coffee": write_sequence(root / "i_coffee", "hpatches", "coffee.png", ext=".png"),
    }
    write_sequence(root / "i_dc", "hpatches", "rocket.jpg")
    return root, truth


class TestHPatchesPairs:
    def test_short_side(self):
        assert short_side_size((320, 240), 480) == (640, 480)
        assert short_side_size((1000, 700), 480) == (686, 480)
        assert short_side_size((600, 900), 480) == (480, 720)
        assert "i_dc" in LARGE_SEQUENCES and len(LARGE_SEQUENCES) == 8

    def test_protocol_on_fixture(self, hpatches_root):
        root, truth = hpatches_root
        with pytest.warns(
            UserWarning, match="6 pairs in 2 sequences, while the HPatches protocol has 540"
        ):
            pairs = hpatches_pairs(str(root))
        assert pairs.ids == [f"{s}/1-{k}" for s in ("i_coffee", "v_astro") for k in (2, 3, 4)]
        assert all(a.shape == (480, 640) for a in pairs.images_a)
        assert all(b.shape == (480, 640) for b in pairs.images_b)
        # the true homography at full size, carried to the ×2 images with pixel centres:
        # x' = 2x + 0.5, so the corners (0, 0)…(639, 479) of A land at 2·H(corner/2 − 1/4) + 1/2
        H = truth["v_astro"][1]  # v_astro 1 -> 3
        i = pairs.ids.index("v_astro/1-3")
        corners = np.array([[0, 0], [639, 0], [639, 479], [0, 479]], np.float64)
        small = cv2.perspectiveTransform(((corners + 0.5) / 2 - 0.5)[None], H)[0]
        np.testing.assert_allclose(pairs.points_dst_true[i], (small + 0.5) * 2 - 0.5, atol=1e-9)
        # the exact estimate scores 0, the identity scores the corners' displacement
        S = np.array([[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1.0]])
        H_a_from_b = np.stack(
            [
                np.linalg.inv(S @ truth[s][k - 2] @ np.linalg.inv(S))
                for s in ("i_coffee", "v_astro")
                for k in (2, 3, 4)
            ]
        )
        np.testing.assert_allclose(pairs.errors(H_a_from_b), 0, atol=1e-6)  # H files: 10 digits
        moved = np.linalg.norm(pairs.points_dst_true - pairs.points_src, axis=-1).mean(axis=1)
        np.testing.assert_allclose(pairs.errors(np.tile(np.eye(3), (6, 1, 1))), moved)

    def test_full_resolution_and_nothing_left(self, hpatches_root):
        root, _ = hpatches_root
        with pytest.warns(UserWarning):
            pairs = hpatches_pairs(str(root), short_side=0, exclude=[])
        assert len(pairs) == 9 and pairs.images_a[0].shape == (240, 320)
        with pytest.raises(ValueError, match="no pairs left"):
            hpatches_pairs(str(root / "i_dc"), exclude=["i_dc"])
        with pytest.raises(ValueError, match="short_side must be >= 0"):
            hpatches_pairs(str(root), short_side=-1)

    def test_evaluate_py(self, hpatches_root, tmp_path):
        root, _ = hpatches_root
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
        proc = run_python(  # python evaluate.py ..., forked from a warm interpreter
            [REPO / "evaluate.py", "benchmark=hpatches", f"benchmark.root={root}",
             "methods=[identity,sift]", "progress=false", f"hydra.run.dir={tmp_path / 'run'}",
             "num_workers=1"],  # no process pool: test_evaluation checks that it changes nothing
            env=env, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "| AUC@1px | AUC@3px | AUC@5px |" in proc.stdout
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert results["identity"]["n"] == 6
        for key in ("auc1", "auc3", "auc5"):
            assert 0 <= results["identity"][key] <= results["sift"][key] <= 1
        assert results["sift"]["auc5"] > 0.8  # exact synthetic views: SIFT is within a pixel or two
        assert results["identity"]["auc5"] < 0.05
