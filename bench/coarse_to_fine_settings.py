"""Compare settings of the coarse-to-fine estimator on a folder of real pairs (HPatches or Oxford
layout, the first pair of each sequence's ground truth files), one line per run.

    python bench/coarse_to_fine_settings.py data/oxford-affine "grid=5,ransac_threshold=1.5"
    python bench/coarse_to_fine_settings.py data/benchmarks/wide_photos_200 "" --limit 40 \\
        --global-net outputs/train/<run>/checkpoints/best.ckpt
    python bench/coarse_to_fine_settings.py data/benchmarks/wide_full_200 "proposals=3" \\
        --global-net wide --proposal-net similarity

Settings are keyword arguments of :class:`hdreg.estimators.coarse_to_fine.CoarseToFineEstimator`
(Python syntax); the global network defaults to the shipped ``iterative``, the refinement
network is always the shipped ``iterative``; ``--proposal-net`` adds a rotation × zoom proposal
network (``proposal_net``). Prints the share of pairs under 1/3/5 px, AUC@1/3/5
(the evaluation's definition), the median corner error, failures and seconds per pair.
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hdreg.data.real.pairs import find_real_pairs
from hdreg.estimators.coarse_to_fine import CoarseToFineEstimator
from hdreg.geometry_np import project, rect_corners
from hdreg.models.checkpoint import load_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("settings", help='e.g. "grid=5,zooms=(0.5,1,2)"')
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--global-net", default="iterative")
    parser.add_argument("--proposal-net", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    call = ast.parse(f"f({args.settings})", mode="eval").body
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    if args.proposal_net:
        kwargs["proposal_net"] = load_net(args.proposal_net)
    est = CoarseToFineEstimator(load_net(args.global_net), load_net("iterative"), **kwargs)
    pairs = find_real_pairs(Path(args.root))[: args.limit]
    errors, failed, seconds = [], 0, []
    for pair in pairs:
        a = cv2.imread(str(pair.path_a), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(pair.path_b), cv2.IMREAD_GRAYSCALE)
        t0 = time.perf_counter()
        out = est.estimate([a], [b])
        seconds.append(time.perf_counter() - t0)
        corners = rect_corners((a.shape[1], a.shape[0]))
        b_from_a = np.linalg.inv(out.H_a_from_b[0])
        err = np.linalg.norm(project(b_from_a, corners) - project(pair.H_b_from_a, corners), axis=1)
        errors.append(float(err.mean()))
        failed += bool(out.failed[0])
    e = np.array(errors)

    def auc(t: float) -> float:
        return float(np.mean(np.clip(1 - e / t, 0, None)) * 100)

    kwargs.pop("proposal_net", None)
    print(
        f"{kwargs}: n={len(e)} <1 {np.mean(e < 1):.0%} <3 {np.mean(e < 3):.0%} "
        f"<5 {np.mean(e < 5):.0%} AUC@1/3/5 {auc(1):.1f}/{auc(3):.1f}/{auc(5):.1f} "
        f"median {np.median(e):.2f} failed {failed} s/pair {np.mean(seconds):.2f}"
    )


if __name__ == "__main__":
    main()
