"""The shipped ``wide`` estimator with some of its settings changed, on a folder of real pairs
(HPatches or Oxford layout, e.g. those of ``hdreg make-benchmark --protocol wide``): the share of
pairs under 3 px overall and by how far B is zoomed out or in, AUC@1/3, the mean corner error
(each pair's clipped at 100 px, so that a few far-off failures do not hide the rest), how often
the global stage fell back to its hypotheses, and seconds per pair (one thread); the share
under 3 px also by how far B is turned from 0° or 180° (where photos that are not square
differ most from their turned selves: 90°).

    python bench/wide_settings.py data/benchmarks/wide_full_val ""
    python bench/wide_settings.py data/benchmarks/wide_full_val "proposals=5,final_passes=1"
    python bench/wide_settings.py data/benchmarks/wide_full_val "proposals=1" \\
        --proposal global-encoder
    python bench/wide_settings.py data/benchmarks/wide_full_val "" --search "rotations=8,steps=1"
    python bench/wide_settings.py data/benchmarks/wide_full_val "dense_sides=(256,512)" \\
        --variant dense
    python bench/wide_settings.py data/benchmarks/wide_full_val "grid=4,final_passes=1" --ecc
    python bench/wide_settings.py data/benchmarks/wide_full_val "final_passes=2" --windows

Settings are keyword arguments of :class:`hdreg.estimators.coarse_to_fine.CoarseToFineEstimator`
(Python syntax) that replace those of ``hdreg/configs/estimator/wide.yaml``; ``--global-net``
replaces the global stage's network (the search keeps the shipped encoder). ``--proposal``
replaces the proposal network: ``scale-search`` (``--search``: keyword arguments of
:class:`hdreg.models.scale_search.ScaleSpaceSearch`), ``global-encoder`` (the rotation × zoom
classes of :class:`hdreg.models.similarity.SimilarityNet` about the photos' centres) or ``none``.
``--windows`` runs the refinement levels as ``wide`` did before its dense matcher: the iterative
network on windows (``dense_net=None``), two passes at full resolution (``final_passes=2``).
``--variant`` replaces one step of that design by one
that was measured and not shipped (``bench/refinement_variants.py``; its attributes are settings
too; the windows are implied, as measured); ``--ecc`` refines each
estimate by ECC as ``wide+ecc`` does. The corner error is that of A's corners mapped into B, as
in the evaluation; per zoom group its median is followed by the median error of B's corners
mapped into A (pixels of A).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from refinement_variants import VARIANTS

from hdreg.data.real.pairs import find_real_pairs
from hdreg.estimators.learned import load_checkpoint_estimator
from hdreg.estimators.registry import parse_spec, resolve
from hdreg.geometry_np import local_similarity, project, rect_corners
from hdreg.models.checkpoint import load_net
from hdreg.models.scale_search import ScaleSpaceSearch
from hdreg.models.similarity import SimilarityNet


def _kwargs(text: str) -> dict:
    call = ast.parse(f"f({text})", mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def _auc(errors: np.ndarray, threshold: float) -> float:
    """Area under the share-under-``t`` curve for ``t`` in ``[0, threshold]``, percent."""
    ts = np.linspace(0.0, threshold, 1001)
    return 100.0 * float(np.mean([(errors <= t).mean() for t in ts]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("settings", help='e.g. "proposals=5,final_passes=1"')
    parser.add_argument("--proposal", choices=["scale-search", "global-encoder", "none"])
    parser.add_argument("--search", default="", help='e.g. "rotations=8,steps=1"')
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="a refinement not shipped")
    parser.add_argument("--windows", action="store_true", help="levels on windows, not dense")
    parser.add_argument("--ecc", action="store_true", help="ECC after it, as wide+ecc")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", help="write the per-pair rows to this JSON file")
    parser.add_argument(
        "--global-net", help="the global stage's network instead of wide's (a checkpoint)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    est = load_checkpoint_estimator("wide", device="cpu")
    encoder = est.global_net.coarse.encoder  # (the search's, whatever --global-net)
    if args.global_net:
        est.global_net = load_net(args.global_net).eval()
    if args.proposal == "scale-search" or (args.search and args.proposal is None):
        est.proposal_net = ScaleSpaceSearch(encoder, **_kwargs(args.search)).eval()
    elif args.proposal == "global-encoder":
        net = est.global_net
        est.proposal_net = SimilarityNet.around(encoder, net.patch_size, net.input_size).eval()
    elif args.proposal == "none":
        est.proposal_net = None
    if args.windows or args.variant:  # (the variants were measured on the windows)
        est.dense_net, est.final_passes = None, 2
    if args.variant:
        est.__class__ = VARIANTS[args.variant]
    est.classes = [] if est.proposal_net is None else list(est.proposal_net.hypotheses())
    for key, value in _kwargs(args.settings).items():
        if not hasattr(est, key):
            raise SystemExit(f"wide has no setting {key!r}")
        setattr(est, key, value)
    run = est
    if args.ecc:  # as `wide+ecc`: ECC (hdreg/configs/method/ecc.yaml) after this estimator
        run = resolve(parse_spec("wide+ecc"), device="cpu")
        run.base = est
    rows = []
    for pair in find_real_pairs(Path(args.root))[: args.limit]:
        a = cv2.imread(str(pair.path_a), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(pair.path_b), cv2.IMREAD_GRAYSCALE)
        t0 = time.perf_counter()
        out = run.estimate([a], [b])
        seconds = time.perf_counter() - t0
        details, failed = out.details[0], bool(out.failed[0])
        corners = rect_corners((a.shape[1], a.shape[0]))
        H = np.eye(3) if failed else np.asarray(out.H_a_from_b[0], np.float64)
        error = np.linalg.norm(
            project(np.linalg.inv(H), corners) - project(pair.H_b_from_a, corners), axis=1
        ).mean()
        # the other way: B's corners mapped into A, in A's pixels (where B is zoomed in, A's
        # corners lie far outside B and the error above grows with the extrapolation)
        corners_b = rect_corners((b.shape[1], b.shape[0]))
        error_in_a = np.linalg.norm(
            project(H, corners_b) - project(np.linalg.inv(pair.H_b_from_a), corners_b), axis=1
        ).mean()
        centre_b = ((b.shape[1] - 1) / 2, (b.shape[0] - 1) / 2)
        zoom, angle = local_similarity(np.linalg.inv(pair.H_b_from_a), centre_b)
        turn = abs((angle + 90.0) % 180.0 - 90.0)  # from the nearest of 0° and 180°: 0-90°
        rows.append({"error": float(error), "error_in_a": float(error_in_a), "zoom": zoom,
                     "turn": turn,
                     "seconds": seconds,
                     "fallback": bool(details.get("global_fallback")),
                     "failed": failed})  # fmt: skip
    if args.save:
        Path(args.save).write_text(json.dumps(rows))
    errors = np.array([r["error"] for r in rows])
    zooms = np.array([r["zoom"] for r in rows])
    groups = {
        "B zoomed out > x2": zooms > 2,
        "zoom within x2": (zooms >= 0.5) & (zooms <= 2),
        "B zoomed in > x2": zooms < 0.5,
    }
    in_a = np.array([r["error_in_a"] for r in rows])
    by_zoom = ", ".join(
        f"{name} {np.mean(errors[keep] < 3):.0%} of {keep.sum()} (median "
        f"{np.median(errors[keep]):.1f} px; B's corners in A {np.median(in_a[keep]):.2f} px)"
        for name, keep in groups.items()
        if keep.any()
    )
    turns = np.array([r["turn"] for r in rows])
    by_turn = ", ".join(
        f"{lo}-{hi} {np.mean(errors[keep] < 3):.0%} of {keep.sum()} (failed "
        f"{np.mean(np.array([r['failed'] for r in rows])[keep]):.0%})"
        for lo, hi in ((0, 30), (30, 60), (60, 90))
        if (keep := (turns >= lo) & (turns < hi if hi < 90 else turns <= hi)).any()
    )
    print(
        f"{args.settings or 'as shipped'}{' +ecc' if args.ecc else ''} {args.variant or ''} "
        f"{args.proposal or ''} "
        f"{args.search}: {len(rows)} pairs, "
        f"under 3 px {np.mean(errors < 3):.1%} ({by_zoom}; turned from 0/180 degrees by "
        f"{by_turn}); AUC@1 {_auc(errors, 1):.1f}, "
        f"AUC@3 {_auc(errors, 3):.1f}; mean error (clipped at 100 px) "
        f"{np.minimum(errors, 100).mean():.1f}; failed {np.mean([r['failed'] for r in rows]):.0%}; "
        f"fallback {np.mean([r['fallback'] for r in rows]):.0%}; "
        f"{np.mean([r['seconds'] for r in rows]):.2f} s per pair"
    )


if __name__ == "__main__":
    main()
