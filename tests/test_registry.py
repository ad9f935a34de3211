"""One way from a method spec to an estimator (:func:`hdreg.estimators.registry.resolve`), and
one per-pair result type (:class:`hdreg.estimators.base.Result`) behind align and the runner."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from hdreg.apps.align import align_images
from hdreg.estimators.base import Result
from hdreg.estimators.downsize import Downsized
from hdreg.estimators.features import FeatureEstimator
from hdreg.estimators.refinement import RefinedEstimator
from hdreg.estimators.registry import build_estimators, resolve
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.evaluation.report import write_report
from hdreg.evaluation.runner import evaluate

from .conftest import textured_image

PACKAGE = Path(__file__).resolve().parents[1] / "hdreg"


class TestResolve:
    def test_max_side_wraps_the_estimator(self):
        plain = resolve("sift")
        assert isinstance(plain, FeatureEstimator)
        small = resolve("sift+ecc", max_side=500)
        assert isinstance(small, Downsized) and small.max_side == 500
        assert isinstance(small.inner, RefinedEstimator) and small.name == "sift+ecc"

    def test_a_bad_max_side_or_spec_is_refused(self):
        with pytest.raises(ValueError, match="max_side must be 0"):
            resolve("sift", max_side=10)
        with pytest.raises(ValueError, match="unknown method 'siftt': valid methods are"):
            resolve("siftt")

    def test_overrides_reach_the_method_and_its_refiner(self):
        est = resolve(
            "orb+adapt", overrides={"ratio": 0.6}, refiner_overrides={"adapt": {"steps": 3}}
        )
        assert est.base.ratio == 0.6 and est.refiner.steps == 3

    def test_the_evaluation_lists_share_their_common_part(self):
        sift, refined = build_estimators(["sift", "sift+ecc"], {})
        assert refined.base is sift


def test_training_imports_nothing_from_apps():
    """The test table of a training run used to import the evaluation app (an upward import)."""
    for path in sorted((PACKAGE / "training").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("hdreg.apps"), f"{path.name}: {node.module}"


class TestOneResultType:
    def test_an_alignment_holds_the_result(self):
        a = textured_image(120, 160, seed=1)
        b = np.ascontiguousarray(a[5:, 7:])
        alignment = align_images(a, b, resolve("sift"), method="sift")
        result = alignment.result
        assert isinstance(result, Result) and result.method == "sift" and not result.failed
        np.testing.assert_allclose(result.b_from_a[:2, 2], [-7, -5], atol=0.1)
        assert alignment.to_json()["b_from_a"] == result.b_from_a.tolist()
        assert alignment.seconds == result.seconds > 0

    def test_a_failed_alignment_has_a_reason_and_no_homography(self):
        blank = np.zeros((64, 64), np.uint8)
        alignment = align_images(blank, blank, resolve("sift"), method="sift")
        assert alignment.failed and alignment.result.failed and alignment.H_b_from_a is None
        assert alignment.reason and alignment.reason == alignment.result.reason
        with pytest.raises(ValueError, match="sift failed"):
            alignment.to_json()

    def test_pairs_csv_rows_are_the_runners_results(self, tmp_path):
        a = textured_image(96, 96, seed=2)
        blank = np.zeros((96, 96), np.uint8)
        corners = np.tile(np.array([[0, 0], [95, 0], [95, 95], [0, 95]], float), (2, 1, 1))
        pairs = EvalPairs(
            name="two", kind="synthetic", images_a=[a, blank], images_b=[a, blank],
            ids=["p0", "p1"], groups=["g", "g"], points_src=corners, points_dst_true=corners,
        )  # fmt: skip
        run = evaluate(pairs, [resolve("sift")], progress=False)
        method = run.methods[0]
        assert [r.method for r in method.results] == ["sift", "sift"]
        assert [r.failed for r in method.results] == [False, True]
        write_report(run, tmp_path)
        rows = list(csv.DictReader((tmp_path / "pairs.csv").open()))
        assert [row["failed"] for row in rows] == ["0", "1"]
        assert rows[1]["reason"] == method.results[1].reason != ""
        assert method.failed.tolist() == [False, True] and method.reasons[0] == ""
