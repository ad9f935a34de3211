"""Corner-error metric, H-file readers, the runner's failure accounting and the report files."""

from __future__ import annotations

import csv
import json
import os
import warnings

import cv2
import numpy as np
import pytest

from hdreg.data.real.pairs import find_real_pairs, read_homography_file
from hdreg.estimators import Estimate, Estimator, IdentityEstimator, PairResult, PairwiseEstimator
from hdreg.evaluation.benchmarks import EvalPairs, real_pairs
from hdreg.evaluation.metrics import SUMMARY_KEYS, corner_error, summarize
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

from .conftest import oxford_sequence, real_data_root, textured_image
from .fixtures import write_matrix, write_opencv_xml, write_sequence

GRAF_H1TO3P = """   7.6285898e-01  -2.9922929e-01   2.2567123e+02
   3.3443473e-01   1.0143901e+00  -7.6999973e+01
   3.4663091e-04  -1.4364524e-05   1.0000000e+00
"""
GRAF_H1TO3P_XML = """<?xml version="1.0"?>
<opencv_storage>
<H13 type_id="opencv-matrix">
  <rows>3</rows>
  <cols>3</cols>
  <dt>d</dt>
  <data>
\t7.6285898e-01  -2.9922929e-01   2.2567123e+02
\t3.3443473e-01   1.0143901e+00  -7.6999973e+01
\t3.4663091e-04  -1.4364524e-05   1.0000000e+00 </data></H13>
</opencv_storage>
"""
SQUARE = np.array([[[0, 0], [127, 0], [127, 127], [0, 127]]], np.float64)
SHIFT = np.array([3.0, 4.0])  # a 3-4-5 translation


class TestCornerError:
    def test_hand_computed(self):
        # identity vs a 3-4-5 translation: every corner is 5 px off
        assert corner_error(np.eye(3)[None], SQUARE, SQUARE + SHIFT).tolist() == [5.0]
        # exact estimate: 0
        H = np.array([[[1, 0, 3], [0, 1, 4], [0, 0, 1]]], float)
        assert corner_error(H, SQUARE, SQUARE + SHIFT).tolist() == [0.0]
        # only one corner displaced by 8 px: mean over 4 corners is 2 px
        true = SQUARE.copy()
        true[0, 2] += [0, 8]
        assert corner_error(np.eye(3)[None], SQUARE, true).tolist() == [2.0]
        # scale by 2 about the origin, judged against the identity: corners move by 0, 127, 127*sqrt(2), 127
        S = np.diag([2.0, 2.0, 1.0])[None]
        expected = (0 + 127 + 127 * np.sqrt(2) + 127) / 4
        assert corner_error(S, SQUARE, SQUARE) == pytest.approx([expected])

    def test_homogeneous_scale_irrelevant(self):
        H = np.array([[[1, 0, 3], [0, 1, 4], [0, 0, 1]]], float)
        assert corner_error(7 * H, SQUARE, SQUARE + SHIFT) == pytest.approx([0.0])

    def test_point_at_the_horizon_is_far_but_finite(self):
        # x = 0 lies on the horizon of this H: the policy (hdreg.geometry_np) divides by eps, so
        # the error is huge, finite and not NaN. The runner never scores such an estimate: it
        # folds the square and counts as failed (TestRunner.test_failure_accounting).
        H = np.array([[[1, 0, 0], [0, 1, 0], [1, 0, 0]]], float)
        error = corner_error(H, SQUARE, SQUARE)[0]
        assert np.isfinite(error) and error > 1e12

    def test_non_finite_estimate_scores_inf(self):
        H = np.full((1, 3, 3), np.nan)
        assert corner_error(H, SQUARE, SQUARE)[0] == np.inf

    def test_summary(self):
        errors = np.array([0.5, 2.0, 4.0, 8.0, 20.0])
        s = summarize(errors, np.array([0, 0, 0, 0, 1], bool), np.full(5, 0.002))
        assert list(s) == list(SUMMARY_KEYS)
        assert s["mace"] == pytest.approx(6.9) and s["median"] == 4.0
        assert (s["lt1"], s["lt3"], s["lt5"], s["lt10"]) == (0.2, 0.4, 0.6, 0.8)
        assert s["fail_rate"] == 0.2 and s["ms_per_pair"] == pytest.approx(2.0) and s["n"] == 5


class TestHomographyFiles:
    def test_text_and_opencv_xml_agree(self, tmp_path):
        # graf 1 -> 3 as the Oxford set writes it (text) and as OpenCV's samples ship it (XML)
        (tmp_path / "H1to3p").write_text(GRAF_H1TO3P)
        (tmp_path / "H1to3p.xml").write_text(GRAF_H1TO3P_XML)
        graf = read_homography_file(tmp_path / "H1to3p")
        xml = read_homography_file(tmp_path / "H1to3p.xml")
        np.testing.assert_allclose(xml, graf, rtol=0, atol=0)
        assert graf[2, 2] == 1.0 and graf[0, 2] == pytest.approx(225.67123)
        # and a file written by OpenCV itself reads back exactly
        H = np.array([[2.0, 0.1, 5.5], [0.0, 2.2, -3.25], [1e-3, 0.0, 1.0]])
        np.testing.assert_array_equal(
            read_homography_file(write_opencv_xml(tmp_path / "w.xml", H)), H
        )

    def test_yaml_storage_and_scale(self, tmp_path):
        H = np.array([[2.0, 0.1, 5], [0, 2.2, 3], [0.001, 0, 2]])
        fs = cv2.FileStorage(str(tmp_path / "h.yml"), cv2.FILE_STORAGE_WRITE)
        fs.write("H", H)
        fs.release()
        np.testing.assert_allclose(read_homography_file(tmp_path / "h.yml"), H / 2)
        (tmp_path / "H_1_2").write_text("\n".join(" ".join(map(str, r)) for r in H))
        np.testing.assert_allclose(read_homography_file(tmp_path / "H_1_2"), H / 2)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("1 0 0\n0 1 0\n", "found 6 numbers, expected 9"),
            ("1 0 0\n0 one 0\n0 0 1", "'one' is not a number"),
            ("1 0 0\n0 1 0\n0 0 nan", "not finite"),
            ("1 2 3\n2 4 6\n0 0 1", "singular"),
        ],
    )
    def test_malformed(self, tmp_path, content, message):
        path = tmp_path / "H1to2p"
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            read_homography_file(path)
        assert str(path) in str(info.value)

    def test_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            read_homography_file(tmp_path / "H_1_2")


def _hpatches_fixture(root, seq="v_test", sizes=((160, 120), (200, 150))):
    """A tiny HPatches-layout sequence: 1.png and 2.png (different sizes) plus H_1_2."""
    d = root / seq
    d.mkdir(parents=True)
    a = textured_image(sizes[0][1], sizes[0][0], seed=4)
    H_b_from_a = np.array([[1.1, 0.02, 6.0], [-0.03, 1.05, 4.0], [1e-4, 0, 1.0]])
    b = cv2.warpPerspective(a, H_b_from_a, sizes[1])
    cv2.imwrite(str(d / "1.png"), a)
    cv2.imwrite(str(d / "2.png"), b)
    (d / "H_1_2").write_text("\n".join(" ".join(f"{v:.10g}" for v in r) for r in H_b_from_a))
    return H_b_from_a


class TestRealPairs:
    def test_both_layouts(self, tmp_path):
        H = _hpatches_fixture(tmp_path / "hp")
        oxford_H = write_sequence(tmp_path / "hp" / "deeper" / "graf", "oxford")
        pairs = find_real_pairs(tmp_path / "hp")
        assert [p.pair_id for p in pairs] == [
            "deeper/graf/1-2", "deeper/graf/1-3", "deeper/graf/1-4", "v_test/1-2",
        ]  # fmt: skip
        assert pairs[0].path_a.name == "img1.ppm" and pairs[1].path_b.name == "img3.ppm"
        np.testing.assert_allclose(pairs[1].H_b_from_a, oxford_H[1], rtol=1e-9)
        np.testing.assert_allclose(pairs[3].H_b_from_a, H, rtol=1e-9)

    def test_real_oxford_sequences(self):
        """The downloaded Oxford sequences: 5 pairs each, ground truth read for all."""
        root = real_data_root()
        oxford_sequence("graf")  # skip, saying how to get them, when they are not there
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. an H file kept without its images
            pairs = find_real_pairs(root)
        by_sequence: dict[str, int] = {}
        for p in pairs:
            if (p.path_a.parent / "H1to2p").is_file():
                by_sequence[p.path_a.parent.name] = by_sequence.get(p.path_a.parent.name, 0) + 1
        assert {"graf", "bikes", "trees", "leuven", "ubc"} <= set(by_sequence)
        assert set(by_sequence.values()) == {5}

    def test_missing_image_warns_and_empty_errors(self, tmp_path):
        d = tmp_path / "seq"
        d.mkdir()
        cv2.imwrite(str(d / "img1.png"), textured_image(50, 60))
        (d / "H1to2p").write_text("1 0 0 0 1 0 0 0 1")
        with (
            pytest.warns(UserWarning, match="no image 2"),
            pytest.raises(ValueError, match="no image pairs"),
        ):
            find_real_pairs(tmp_path)
        with pytest.raises(FileNotFoundError):
            find_real_pairs(tmp_path / "nope")

    def test_identity_error_and_exact_estimate(self, tmp_path):
        H_b_from_a = _hpatches_fixture(tmp_path)
        pairs = real_pairs(str(tmp_path))
        assert pairs.images_a[0].shape == (120, 160) and pairs.images_b[0].shape == (150, 200)
        exact = np.linalg.inv(H_b_from_a)[None]  # H_a_from_b
        assert pairs.errors(exact)[0] == pytest.approx(0.0, abs=1e-9)
        corners = np.array([[0, 0], [159, 0], [159, 119], [0, 119]], float)
        mapped = cv2.perspectiveTransform(corners[None], H_b_from_a)[0]
        expected = np.linalg.norm(mapped - corners, axis=1).mean()
        assert pairs.errors(np.eye(3)[None])[0] == pytest.approx(expected)


class TestImplausibleGroundTruth:
    @pytest.mark.parametrize("w_at_corner", [0.0, -1.0])  # to infinity, behind the camera
    def test_a_corner_of_a_at_infinity_or_behind_is_scored_on_the_part_in_view(
        self, tmp_path, w_at_corner
    ):
        truth = write_sequence(tmp_path / "seq", "hpatches")  # 320x240 images
        # w = 1 + a*x + b*y equals w_at_corner at the bottom-right corner (319, 239)
        a = (w_at_corner - 1) / 2 / 319
        b = (w_at_corner - 1) / 2 / 239
        H = np.array([[1, 0, 0], [0, 1, 0], [a, b, 1]])
        write_matrix(tmp_path / "seq" / "H_1_2", H)
        pairs = real_pairs(str(tmp_path))  # not an error: the other pairs, and this one, count
        assert pairs.ids == ["seq/1-2", "seq/1-3", "seq/1-4"] and not pairs.skipped
        assert pairs.clipped.tolist() == [True, False, False]
        exact = np.linalg.inv(np.stack([H, *truth[1:]]))
        np.testing.assert_allclose(pairs.errors(exact), 0, atol=1e-6)
        assert not pairs.folds(exact).any()

    def test_an_image_b_far_smaller_than_its_ground_truth_is_named(self, tmp_path):
        write_sequence(tmp_path / "seq", "hpatches")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            real_pairs(str(tmp_path))  # the fixture itself is plausible
        assert cv2.imwrite(str(tmp_path / "seq" / "3.ppm"), np.zeros((15, 20, 3), np.uint8))
        with pytest.warns(UserWarning, match=r"1 ground truth\(s\) implausible") as record:
            pairs = real_pairs(str(tmp_path))
        message = str(record[0].message)
        assert str(tmp_path / "seq" / "H_1_3") in message and "image B 20x15" in message
        assert len(pairs.ids) == 3  # scored anyway


class _Scripted(PairwiseEstimator):
    """Returns scripted results: a homography, None (failure) or an exception."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)

    def estimate_pair(self, image_a, image_b):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return PairResult(item, None if item is not None else "too few matches")


class _Batched(Estimator):
    name = "batched"

    def estimate(self, images_a, images_b):
        n = len(images_a)
        return Estimate(
            np.tile(np.eye(3), (n, 1, 1)), np.zeros(n, bool), np.full(n, 1e-3), [""] * n
        )


class _WhereBatched(Estimator):
    """A batch estimator (like a learned model) that says which process ran it."""

    name = "where-batched"

    def estimate(self, images_a, images_b):
        n = len(images_a)
        details = [{"pid": os.getpid()} for _ in range(n)]
        return Estimate(
            np.tile(np.eye(3), (n, 1, 1)), np.zeros(n, bool), np.zeros(n), [""] * n, details
        )


class _WherePairwise(PairwiseEstimator):
    name = "where-pairwise"

    def estimate_pair(self, image_a, image_b):
        return PairResult(np.eye(3), None, {"pid": os.getpid()})


@pytest.fixture(scope="module")
def small_synthetic():
    from hydra.utils import instantiate

    from hdreg.config import compose_config

    cfg = compose_config("benchmark/synthetic")  # evaluate.py's synthetic benchmark
    cfg.n, cfg.seed = 6, 1
    return instantiate(cfg)


class TestRunner:
    def test_failure_accounting(self, small_synthetic):
        pairs = small_synthetic
        exact = [np.linalg.inv(np.eye(3)) for _ in range(6)]
        # the exact H_a_from_b of each pair, from its label
        for i in range(6):
            exact[i] = cv2.getPerspectiveTransform(
                pairs.points_src[i].astype(np.float32), pairs.points_dst_true[i].astype(np.float32)
            )
        fold = np.array([[1, 0, 0], [0, 1, 0], [-0.02, 0, 1]], float)  # sends x = 50 to infinity
        singular = np.zeros((3, 3))
        script = [
            exact[0], None, cv2.error("ECC diverged"), exact[3], singular, fold,
        ]  # fmt: skip
        result = evaluate(pairs, [_Scripted(script), IdentityEstimator()], progress=False)
        m, ident = result.methods
        assert m.failed.tolist() == [False, True, True, False, True, True]
        assert m.errors[0] == pytest.approx(0, abs=1e-3) and m.errors[3] == pytest.approx(
            0, abs=1e-3
        )
        # failed pairs are scored exactly as the identity
        np.testing.assert_allclose(m.errors[[1, 2, 4, 5]], ident.errors[[1, 2, 4, 5]])
        assert m.summary["fail_rate"] == pytest.approx(4 / 6)
        assert m.reasons[1] == "too few matches"
        assert "ECC diverged" in m.reasons[2]
        assert "singular" in m.reasons[4] and "folds" in m.reasons[5]

    def test_bugs_are_not_swallowed(self, small_synthetic):
        with pytest.raises(TypeError):
            evaluate(small_synthetic, [_Scripted([TypeError("bug")] * 6)], progress=False)

    def test_report_files(self, small_synthetic, tmp_path):
        result = evaluate(
            small_synthetic, [IdentityEstimator(), _Batched(), IdentityEstimator()], progress=False
        )
        assert [m.name for m in result.methods] == ["identity", "batched", "identity-2"]
        paths = write_report(result, tmp_path)
        summaries = json.loads(paths["results_json"].read_text())
        assert list(summaries) == ["identity", "batched", "identity-2"]
        assert all(list(s) == list(SUMMARY_KEYS) for s in summaries.values())
        assert summaries["identity"]["n"] == 6 and summaries["identity"]["fail_rate"] == 0.0
        rows = list(csv.DictReader(paths["pairs_csv"].open()))
        assert len(rows) == 18 and set(rows[0]) == {
            "method",
            "pair",
            "group",
            "error",
            "failed",
            "ms",
            "reason",
            "details",
        }
        assert len(list(csv.DictReader(paths["results_csv"].open()))) == 3
        table = paths["table"].read_text()
        assert table == format_table(result) and "| identity |" in table
        assert paths["plot"].stat().st_size > 10_000

    def test_process_pool_gives_the_single_process_results(self, small_synthetic):
        """num_workers=2: per-pair methods run in worker processes, learned-style batch
        estimators in this one, and every per-pair result is the single-process one."""
        from hdreg.config import method_estimator
        from hdreg.estimators.refinement import RefinedEstimator

        estimators = [
            method_estimator("sift"),
            RefinedEstimator(method_estimator("orb"), method_estimator("ecc")),
            _WhereBatched(),
            _WherePairwise(),
        ]
        kw = {"batch_size": 2, "progress": False}
        one = evaluate(small_synthetic, estimators, num_workers=1, **kw)
        two = evaluate(small_synthetic, estimators, num_workers=2, **kw)
        here = os.getpid()
        for a, b in zip(one.methods[:2], two.methods[:2], strict=True):
            np.testing.assert_array_equal(a.H_a_from_b, b.H_a_from_b)
            np.testing.assert_array_equal(a.errors, b.errors)
            np.testing.assert_array_equal(a.failed, b.failed)
            assert a.reasons == b.reasons and a.details == b.details and a.summary.keys()
        assert any(d.get("refine_kept") for d in two.methods[1].details)
        assert {d["pid"] for d in two.methods[2].details} == {here}
        pool_pids = {d["pid"] for d in two.methods[3].details}
        assert here not in pool_pids and len(pool_pids) >= 1
        assert {d["pid"] for d in one.methods[3].details} == {here}

    def test_num_workers_is_checked(self, small_synthetic):
        for bad in (0, -1, "many", 1.5):
            with pytest.raises(ValueError, match="num_workers must be 'auto' or an integer"):
                evaluate(small_synthetic, [IdentityEstimator()], num_workers=bad, progress=False)

    def test_eval_pairs_shape_check(self, small_synthetic):
        assert isinstance(small_synthetic, EvalPairs)
        with pytest.raises(ValueError, match=r"expected 6 homographies"):
            small_synthetic.errors(np.eye(3)[None])
