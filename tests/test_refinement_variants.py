"""The refinements of ``wide`` that were measured and not shipped (bench/refinement_variants.py,
run by ``bench/wide_settings.py --variant``) stay runnable: each one's step runs on the pairs it
is for, and the estimate still lands where the step cannot spoil it."""

from __future__ import annotations

import sys

import pytest

from hdreg.estimators.learned import load_checkpoint_estimator

from .conftest import REPO
from .test_coarse_to_fine import _corner_error, _render

sys.path.insert(0, str(REPO / "bench"))
from refinement_variants import VARIANTS


def _variant(name: str, **settings):
    est = load_checkpoint_estimator("wide", device="cpu")
    est.dense_net, est.final_passes = None, 2  # (the windows these variants were measured on)
    est.__class__ = VARIANTS[name]
    for key, value in settings.items():
        setattr(est, key, value)
    return est


def test_dense_levels_match_every_cell_and_the_windows_finish():
    a, b, b_from_a = _render(12.0, 1.1)
    result = _variant("dense", dense_sides=(256,)).estimate_pair(a, b)
    used = result.details["level_windows"]
    # the dense level's inlier cells (negative: estimated, not kept), not windows (at most 25)
    assert abs(used[0]) > 100
    assert _corner_error(result.H_a_from_b, b_from_a) < 1.0


@pytest.mark.parametrize(
    ("name", "zoom", "check"),
    [
        # B zoomed in x2.5: the levels capped at B's side x 0.4 = 256 (two passes, not four)
        ("cap-zoom-in", 2.5, lambda r: len(r.details["level_windows"]) == 2),
        ("swap-zoom-in", 2.5, lambda r: r.details.get("refined_swapped") is True),
        ("blur-zoom-in", 2.5, lambda r: r.H_a_from_b is not None),
        # B zoomed out x2.5: swapped, and the levels capped at A's side / 2.5 = 256
        ("cap-zoom-out", 0.4, lambda r: len(r.details["level_windows"]) == 2),
    ],
)
def test_zoom_variants_take_their_branch(name, zoom, check):
    a, b, _ = _render(30.0, zoom)
    result = _variant(name).estimate_pair(a, b)
    assert check(result), result.details
