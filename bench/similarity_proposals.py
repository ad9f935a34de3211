"""How often a rotation × zoom proposal network ranks the true class of real pairs among its
first k, overall and by how far B is zoomed out or in (HPatches or Oxford layout folders, e.g.
those of ``hdreg make-benchmark --protocol wide``).

    python bench/similarity_proposals.py data/benchmarks/wide_full_200 --net similarity
    python bench/similarity_proposals.py data/benchmarks/wide_full_200 --net untrained
    python bench/similarity_proposals.py data/benchmarks/wide_full_200 --net scale-search \
        --search "rotations=8,steps=1"

``--net`` is a shipped name or a checkpoint of :class:`hdreg.models.similarity.SimilarityNet`;
``untrained`` is a fresh one whose encoder is the shipped ``wide`` network's (its head scores
each class by the mean best cosine alone); ``scale-search`` is
:class:`hdreg.models.scale_search.ScaleSpaceSearch` around that encoder (``--search``: its
keyword arguments). The true class is the one nearest to the similarity part of the true
``H_a_from_b`` at B's centre, on both photos resized to the network's view size, as the
whole-image estimator sees them. Prints one line per group: pairs, top-1 / top-3 / top-5 share,
and for the scale-space search, which also places each class, the share of pairs whose first
class lands within a quarter of the view's side (the largest error, over the corners of the
middle half of the view that shows the shared content larger, of the first class's similarity
against the truth, in that view's pixels: the global network's reach); then the milliseconds per
pair of the network (one thread unless ``--threads``).
"""

from __future__ import annotations

import argparse
import ast
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hdreg.data.real.pairs import find_real_pairs
from hdreg.geometry_np import project, scale_matrix
from hdreg.images import resize_area, size_of
from hdreg.models.checkpoint import load_net
from hdreg.models.scale_search import ScaleSpaceSearch
from hdreg.models.similarity import SimilarityNet, similarity_of


def _placement_error(found: np.ndarray, truth: np.ndarray, zoom: float, n: int) -> float:
    """Largest error over the corners of the middle half of the view that shows the shared
    content larger (A when B is zoomed out, ``zoom >= 1``; else B), in that view's pixels."""
    box = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]) * (n - 1)
    if zoom >= 1:  # A's box, through B by the truth and back by the found similarity
        return float(np.linalg.norm(project(found, project(np.linalg.inv(truth), box)) - box,
                                    axis=1).max())  # fmt: skip
    return float(np.linalg.norm(project(found, box) - project(truth, box), axis=1).max() / zoom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--net", default="similarity")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search", default="", help='scale-search: e.g. "rotations=8,steps=1"')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    search = args.net == "scale-search"
    if search:
        call = ast.parse(f"f({args.search})", mode="eval").body
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        net = ScaleSpaceSearch(load_net("wide").coarse.encoder, **kwargs)
    elif args.net == "untrained":
        net = SimilarityNet()
        net.encoder.load_state_dict(load_net("wide").coarse.encoder.state_dict())
    else:
        net = load_net(args.net)
    net.eval()
    p = net.input_size if search else net.patch_size
    ranks, zooms, seconds, placed = [], [], [], []
    for pair in find_real_pairs(Path(args.root))[: args.limit]:
        a = cv2.imread(str(pair.path_a), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(pair.path_b), cv2.IMREAD_GRAYSCALE)
        a_from_b = np.linalg.inv(pair.H_b_from_a)
        H = scale_matrix(size_of(a), (p, p)) @ a_from_b @ scale_matrix((p, p), size_of(b))
        angle, zoom = (float(v) for v in similarity_of(torch.from_numpy(H)[None], p))
        r = round((angle % 360) / (360 / net.rotations)) % net.rotations
        z = int(np.argmin(np.abs(np.log(net.zooms) - math.log(zoom))))  # nearest, in log
        truth = r * len(net.zooms) + z
        ta = torch.from_numpy(resize_area(a, (p, p)))[None, None].float() / 255
        tb = torch.from_numpy(resize_area(b, (p, p)))[None, None].float() / 255
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = net(ta, tb)
        seconds.append(time.perf_counter() - t0)
        order = torch.argsort(out["scores" if search else "logits"].flatten(), descending=True)
        ranks.append(order.tolist().index(truth))
        zooms.append(zoom)
        if search:
            found = out["H_a_from_b"][int(order[0])].numpy()
            placed.append(_placement_error(found, H, zoom, p) < p / 4)
    ranks_a, zooms_a, placed_a = np.array(ranks), np.array(zooms), np.array(placed)
    groups = {
        "all": np.ones(len(ranks_a), bool),
        "B zoomed out > x2": zooms_a > 2,
        "zoom within x2": (zooms_a >= 0.5) & (zooms_a <= 2),
        "B zoomed in > x2": zooms_a < 0.5,
    }
    for name, keep in groups.items():
        r = ranks_a[keep]
        if len(r):
            where = f", placed {np.mean(placed_a[keep]):.0%}" if search else ""
            print(
                f"{name}: n={len(r)} top-1 {np.mean(r < 1):.0%} top-3 {np.mean(r < 3):.0%} "
                f"top-5 {np.mean(r < 5):.0%}{where}"
            )
    print(
        f"{args.net}: {1000 * np.median(seconds):.1f} ms per pair (median, {args.threads} thread)"
    )


if __name__ == "__main__":
    main()
