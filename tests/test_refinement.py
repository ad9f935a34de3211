"""ECC refinement of any estimator (RefinedEstimator) and its place in evaluate.py.

Pairs are built as in test_baselines: ``B(p) = A(H_a_from_b · p)`` (``cv2.warpPerspective`` with
``WARP_INVERSE_MAP``), so the true ``H_a_from_b`` (maps B into A) is known exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from hdreg.config import method_estimator
from hdreg.data.decoding import load_gray
from hdreg.estimators import ECCEstimator, Estimate, Estimator, IdentityEstimator, PairResult
from hdreg.estimators import registry as methods
from hdreg.estimators.refinement import RefinedEstimator, compare_estimates, warp_a_onto_b
from hdreg.estimators.registry import build_estimators, parse_checkpoint_spec
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.evaluation.report import write_report
from hdreg.evaluation.runner import evaluate
from hdreg.geometry_np import folds, rect_corners

from .conftest import REPO, oxford_sequence, textured_image
from .test_align import write_tiny_checkpoint

W, H = 320, 240
CORNERS_B = rect_corners((W, H))
# Where B's corners lie in A: a mild perspective that keeps all of B inside A.
CORNERS_IN_A = np.array([[12, 9], [305, 14], [311, 229], [7, 226]], np.float64)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(
        np.float64
    )


def make_b(image_a: np.ndarray, H_a_from_b: np.ndarray) -> np.ndarray:
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(image_a, H_a_from_b, (W, H), flags=flags)


def corner_error(H_a_from_b: np.ndarray, H_true_a_from_b: np.ndarray) -> float:
    def project(M: np.ndarray) -> np.ndarray:
        q = np.c_[CORNERS_B, np.ones(4)] @ M.T
        return q[:, :2] / q[:, 2:]

    return float(np.linalg.norm(project(H_a_from_b) - project(H_true_a_from_b), axis=1).mean())


H_TRUE = homography(CORNERS_B, CORNERS_IN_A)
# The start a keypoint method or a network might give: every corner 2-3 px off.
START_OFFSETS = np.array([[2.5, -1.5], [-2.0, 2.0], [1.5, 2.5], [-2.5, -1.0]])
H_START = homography(CORNERS_B, CORNERS_IN_A + START_OFFSETS)


@pytest.fixture(scope="module")
def textured_pair() -> tuple[np.ndarray, np.ndarray]:
    image_a = textured_image(H, W, seed=11)
    return image_a, make_b(image_a, H_TRUE)


class StubEstimator(Estimator):
    """Returns fixed answers, with a fixed time per pair."""

    name = "stub"

    def __init__(self, H_a_from_b: np.ndarray, failed: Sequence[bool], seconds: float = 0.25):
        self.H_a_from_b, self.failed, self.seconds = H_a_from_b, np.asarray(failed), seconds

    def estimate(self, images_a, images_b) -> Estimate:
        n = len(images_a)
        H = np.array(self.H_a_from_b[:n], np.float64)
        H[self.failed[:n]] = np.eye(3)
        reasons = ["stub failed" if f else "" for f in self.failed[:n]]
        return Estimate(H, self.failed[:n].copy(), np.full(n, self.seconds), reasons)


class SpyECC(ECCEstimator):
    """ECC that records its calls, and optionally answers a fixed (wrong) homography."""

    def __init__(self, answer: np.ndarray | None = None) -> None:
        ecc = method_estimator("ecc")  # the parameters of hdreg/configs/method/ecc.yaml
        super().__init__(**{k: v for k, v in vars(ecc).items() if not k.startswith("_")})
        self.answer, self.calls = answer, 0

    def refine(self, image_a, image_b, H_init_a_from_b, *, levels=None) -> PairResult:
        self.calls += 1
        if self.answer is not None:
            return PairResult(self.answer.copy(), None, {"correlation": 1.0})
        return super().refine(image_a, image_b, H_init_a_from_b, levels=levels)


class TestRefinedEstimator:
    def test_improves_a_perturbed_start_to_subpixel(self, textured_pair):
        a, b = textured_pair
        assert corner_error(H_START, H_TRUE) > 2.0
        est = RefinedEstimator(StubEstimator(H_START[None], [False]), method_estimator("ecc"))
        out = est.estimate([a], [b])
        assert not out.failed[0] and out.reasons == [""]
        d = out.details[0]
        assert d["refined_by"] == "ecc" and d["refine_kept"] is True and d["refine_note"] == ""
        assert corner_error(out.H_a_from_b[0], H_TRUE) < 0.5
        assert d["refine_correlation_refined"] > d["refine_correlation_start"]
        # per-pair time: the base's plus the refinement's
        assert out.seconds[0] > 0.25

    def test_any_refiner_and_the_base_details(self, textured_pair):
        """The wrapper is generic: a refiner other than ECC names the result and the details,
        the base's own details survive, and a per-pair base keeps the wrapper per-pair."""
        a, b = textured_pair

        class Oracle:
            name = "oracle"

            def refine(self, image_a, image_b, H_init_a_from_b):
                return PairResult(H_TRUE.copy())

        base = method_estimator("sift")
        est = RefinedEstimator(base, Oracle())
        assert est.name == "sift+oracle" and est.per_pair
        assert not RefinedEstimator(StubEstimator(H_START[None], [False]), Oracle()).per_pair
        out = est.estimate([a], [b])
        d = out.details[0]
        assert d["refined_by"] == "oracle" and d["refine_kept"] is True
        assert d["matches"] >= d["inliers"] > 8  # the base's details are kept
        np.testing.assert_array_equal(out.H_a_from_b[0], H_TRUE)

    def test_keeps_the_start_when_ecc_makes_it_worse(self, textured_pair):
        a, b = textured_pair
        # A "successful" ECC answer 8 px off: the start (2-3 px off) correlates better.
        wrong = homography(CORNERS_B, CORNERS_IN_A + np.array([8.0, 0.0]))
        est = RefinedEstimator(StubEstimator(H_START[None], [False]), SpyECC(answer=wrong))
        out = est.estimate([a], [b])
        d = out.details[0]
        assert not out.failed[0] and d["refine_kept"] is False
        np.testing.assert_array_equal(out.H_a_from_b[0], H_START)
        assert "worse" in d["refine_note"]
        assert d["refine_correlation_refined"] < d["refine_correlation_start"]

    def test_keeps_the_start_when_ecc_folds_b(self, textured_pair):
        a, b = textured_pair
        # B's bottom corners swapped: a bow tie, which no view of a plane gives.
        bow_tie = homography(CORNERS_B, CORNERS_IN_A[[0, 1, 3, 2]])
        assert folds(bow_tie, CORNERS_B) and not folds(H_START, CORNERS_B)
        est = RefinedEstimator(StubEstimator(H_START[None], [False]), SpyECC(answer=bow_tie))
        out = est.estimate([a], [b])
        d = out.details[0]
        assert not out.failed[0] and not d["refine_kept"] and "folds" in d["refine_note"]
        np.testing.assert_array_equal(out.H_a_from_b[0], H_START)

    def test_keeps_the_start_when_ecc_fails(self):
        # A flat image: ECC has no gradient to follow and fails at every level.
        flat = np.full((H, W), 128, np.uint8)
        est = RefinedEstimator(StubEstimator(H_START[None], [False]), method_estimator("ecc"))
        out = est.estimate([flat], [flat])
        assert not out.failed[0], "a failed refinement must not fail the pair"
        d = out.details[0]
        assert not d["refine_kept"] and d["refine_note"].startswith("ecc failed")
        np.testing.assert_array_equal(out.H_a_from_b[0], H_START)

    def test_base_failures_stay_failures(self, textured_pair):
        a, b = textured_pair
        spy = SpyECC()
        base = StubEstimator(np.stack([H_START, H_START]), [True, False])
        out = RefinedEstimator(base, spy).estimate([a, a], [b, b])
        assert out.failed.tolist() == [True, False]
        assert out.reasons == ["stub failed", ""]
        assert out.details[0] == {} and out.details[1]["refine_kept"] is True
        np.testing.assert_array_equal(out.H_a_from_b[0], np.eye(3))
        assert spy.calls == 1, "ECC must not run on a pair the base failed"
        assert out.seconds[0] == 0.25

    def test_report_says_whether_the_refinement_was_kept(self, textured_pair, tmp_path):
        a, b = textured_pair
        flat = np.full((H, W), 128, np.uint8)  # ECC fails on it: the start is kept
        pairs = EvalPairs(
            name="three pairs", kind="synthetic", ids=["fails", "kept", "flat"],
            groups=["t", "t", "t"], images_a=[a, a, flat], images_b=[b, b, flat],
            points_src=np.stack([CORNERS_B] * 3),
            points_dst_true=np.stack([CORNERS_IN_A] * 3),
        )  # fmt: skip
        base = StubEstimator(np.stack([H_START] * 3), [True, False, False])
        result = evaluate(pairs, [RefinedEstimator(base, method_estimator("ecc"))], progress=False)
        paths = write_report(result, tmp_path)
        rows = list(csv.DictReader(paths["pairs_csv"].open()))
        details = [json.loads(r["details"]) if r["details"] else {} for r in rows]
        assert details[0] == {}
        assert details[1]["refined_by"] == "ecc" and details[1]["refine_kept"] is True
        assert details[2]["refine_kept"] is False
        assert details[2]["refine_note"].startswith("ecc failed")
        assert [r["failed"] for r in rows] == ["1", "0", "0"]
        assert "stub+ecc: ecc's refinement kept on 1 of the 2 pairs" in paths["table"].read_text()

    def test_evaluation_runs_a_shared_base_once_with_the_same_results(self, textured_pair):
        a, b = textured_pair
        pairs = EvalPairs(
            name="two pairs", kind="synthetic", ids=["0", "1"], groups=["t", "t"],
            images_a=[a, a], images_b=[b, b],
            points_src=np.stack([CORNERS_B] * 2), points_dst_true=np.stack([CORNERS_IN_A] * 2),
        )  # fmt: skip

        class Counting(StubEstimator):
            calls = 0

            def estimate(self, images_a, images_b):
                Counting.calls += 1
                return super().estimate(images_a, images_b)

        base = Counting(np.stack([H_START] * 2), [False, True])
        ecc = method_estimator("ecc")
        shared = evaluate(pairs, [base, RefinedEstimator(base, ecc)], progress=False)
        assert Counting.calls == 1
        alone = evaluate(pairs, [RefinedEstimator(base, ecc)], progress=False).methods[0]
        assert Counting.calls == 2
        refined = shared.methods[1]
        np.testing.assert_allclose(refined.H_a_from_b, alone.H_a_from_b, atol=1e-9)
        np.testing.assert_array_equal(refined.failed, alone.failed)
        assert refined.reasons == alone.reasons == ["", "stub failed"]
        assert refined.details[0]["refine_kept"] is True
        assert refined.seconds[1] == 0.25 and refined.seconds[0] > 0.25  # base time included

    def test_comparison_is_symmetric_and_uses_the_common_region(self, textured_pair):
        a, b = textured_pair
        same = compare_estimates(a, b, H_TRUE, H_TRUE)
        assert same.correlation_first == same.correlation_second > 0.95
        assert same.common == pytest.approx(1.0, abs=0.02)
        swapped = compare_estimates(a, b, H_START, H_TRUE)
        back = compare_estimates(a, b, H_TRUE, H_START)
        assert swapped.correlation_first == back.correlation_second
        assert swapped.correlation_second > swapped.correlation_first

    def test_cubic_mask_keeps_the_footprint_inside_a(self, textured_pair):
        a, _ = textured_pair
        _, linear = warp_a_onto_b(a, np.eye(3), (W, H))
        warped, cubic = warp_a_onto_b(a, np.eye(3), (W, H), interpolation=cv2.INTER_CUBIC)
        assert linear.all()
        assert cubic[1:-1, 1:-1].all() and cubic.sum() == (W - 2) * (H - 2)
        np.testing.assert_array_equal(warped, a)

    def test_accepts_ecc_on_noisy_real_pair(self):
        # Oxford ubc 1 -> 6: JPEG compression, the true homography is the identity. SIFT's
        # estimate is ~1.7 px off; ECC's is within 0.2 px, and the comparison must see it (with
        # bilinear resampling the noise made SIFT's estimate correlate better).
        ubc = oxford_sequence("ubc")
        a, b = load_gray(ubc / "img1.ppm"), load_gray(ubc / "img6.ppm")
        out = RefinedEstimator(method_estimator("sift"), method_estimator("ecc")).estimate([a], [b])
        w, h = a.shape[1], a.shape[0]
        corners_a = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
        q = np.c_[corners_a, np.ones(4)] @ np.linalg.inv(out.H_a_from_b[0]).T
        error = np.linalg.norm(q[:, :2] / q[:, 2:] - corners_a, axis=1).mean()  # by hand
        assert out.details[0]["refine_kept"], out.details[0]["refine_note"]
        assert error < 0.5

    def test_rejects_bad_arguments(self):
        with pytest.raises(TypeError, match="refine"):
            RefinedEstimator(StubEstimator(H_START[None], [False]), IdentityEstimator())
        with pytest.raises(ValueError, match="min_common"):
            RefinedEstimator(
                StubEstimator(H_START[None], [False]), method_estimator("ecc"), min_common=0
            )


def method_params(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "hdreg" / "configs")):
        return compose("evaluate", overrides=list(overrides)).method_params


class TestBuildEstimators:
    def test_methods_with_refinement(self):
        params = method_params("method_params.ecc.refine_levels=1")
        ests = build_estimators(["sift", "sift+ecc", "orb+ecc"], params)
        assert [e.name for e in ests] == ["sift", "sift+ecc", "orb+ecc"]
        assert isinstance(ests[1], RefinedEstimator) and ests[1].base.detector == "sift"
        assert ests[2].base.detector == "orb"
        # the refiner comes from method_params.ecc, so its parameters can be overridden
        assert ests[1].refiner.refine_levels == 1
        assert ests[1].refiner is ests[2].refiner  # one refiner, built once

    def test_refined_spec_shares_the_base_of_the_same_run(self, tmp_path):
        params = method_params()
        ests = build_estimators(["sift", "orb+ecc", "sift+ecc"], params)
        assert ests[2].base is ests[0]  # the runner then estimates sift once
        assert ests[1].base is not ests[0]
        ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
        ests = build_estimators([], params, [f"{ckpt}+ecc", str(ckpt)], device="cpu")
        assert ests[0].base is ests[1]

    def test_unknown_refinement_lists_the_valid_ones(self):
        with pytest.raises(
            ValueError, match=r"unknown refinement 'foo'.*valid refinements are ecc"
        ):
            build_estimators(["sift+foo"], method_params())
        with pytest.raises(ValueError, match="unknown method 'surf"):
            build_estimators(["surf+ecc"], method_params())

    def test_checkpoint_with_refinement(self, tmp_path):
        ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
        params = method_params()
        ests = build_estimators([], params, [str(ckpt), f"{ckpt}+ecc"], device="cpu")
        assert not isinstance(ests[0], RefinedEstimator)
        assert isinstance(ests[1], RefinedEstimator)
        assert ests[1].name == f"{ests[0].name}+ecc"
        with pytest.raises(ValueError, match="valid refinements are ecc"):
            build_estimators([], params, [f"{ckpt}+foo"], device="cpu")
        with pytest.raises(FileNotFoundError, match=r"missing\.ckpt does not exist"):
            build_estimators([], params, [str(tmp_path / "missing.ckpt+ecc")], device="cpu")


class TestCheckpointSpecs:
    """One parser decides, without guessing, what a '+' in a checkpoint spec means."""

    def test_a_file_whose_name_holds_plus_ecc_is_a_checkpoint(self, tmp_path):
        odd = tmp_path / "run+ecc"
        odd.write_bytes(b"")
        spec = parse_checkpoint_spec(str(odd))
        assert spec.checkpoint == odd and spec.refine is None
        # ... and with a refinement after it
        spec = parse_checkpoint_spec(f"{odd}+ecc")
        assert spec.checkpoint == odd and spec.refine == "ecc"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("", r"empty checkpoint spec ''"), (" ", "empty checkpoint spec"),
         ("+ecc", r"'\+ecc' is a refinement with no checkpoint before it")],
    )  # fmt: skip
    def test_empty_spec_or_refinement_alone_says_so(self, text, expected):
        with pytest.raises(ValueError, match=expected) as info:
            parse_checkpoint_spec(text)
        assert "does not exist" not in str(info.value)
        with pytest.raises(ValueError, match=expected.replace("checkpoint", "method")):
            methods.parse_method_spec(text, ["sift", "ecc"])

    def test_plus_ecc_after_a_missing_path_is_the_refinement(self, tmp_path):
        spec = parse_checkpoint_spec(str(tmp_path / "m.ckpt+ecc"))
        assert spec.checkpoint == tmp_path / "m.ckpt" and spec.refine == "ecc"
        plain = parse_checkpoint_spec(str(tmp_path / "a+b.ckpt"))
        assert plain.checkpoint == tmp_path / "a+b.ckpt" and plain.refine is None

    def test_names_go_through_resolve_checkpoint(self, tmp_path, monkeypatch):
        import hdreg.estimators.learned as model_estimator

        seen = []

        def resolve(spec):
            seen.append(spec)
            return tmp_path / f"{spec}.ckpt"

        monkeypatch.setattr(model_estimator, "resolve_checkpoint", resolve)
        spec = parse_checkpoint_spec("iterative+ecc")
        assert seen == ["iterative"] and spec.checkpoint == tmp_path / "iterative.ckpt"
        assert spec.refine == "ecc"
        assert parse_checkpoint_spec("iterative").checkpoint == tmp_path / "iterative.ckpt"

    def test_method_specs(self):
        spec = methods.parse_method_spec("orb+ecc", ["orb", "ecc"])
        assert (spec.method, spec.checkpoint, spec.refine) == ("orb", None, "ecc")
        with pytest.raises(ValueError, match="unknown refinement 'x'"):
            methods.parse_method_spec("orb+x", ["orb", "ecc"])
