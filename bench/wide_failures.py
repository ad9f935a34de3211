"""Which wide-motion pairs fail, and why: failure rate by the share of B that A sees, and the
share of pairs under 3 px by the ground truth's zoom and rotation.

Reads a benchmark written by ``hdreg make-benchmark --protocol wide`` and the ``pairs.csv`` of
``evaluate.py benchmark=pairs`` on it; a pair counts as failed for a method when the method
reported it failed or its corner error exceeds ``--max-error`` px. Prints the failure rate of
each method by overlap (the share of B's pixels whose ground-truth position lies inside A), the
pairs every listed method fails, and the photo collections they come from. ``--by-motion``
prints instead the share of pairs under 3 px by the zoom and the rotation of the ground truth's
local similarity at A's centre (zoom < 1: B is zoomed out).

    python bench/wide_failures.py data/benchmarks/wide_photos outputs/evaluate/<run>/pairs.csv
    python bench/wide_failures.py data/benchmarks/wide_full_500 <run>/pairs.csv --by-motion \\
        --methods sift sift+ecc wide wide+ecc
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np

from hdreg.geometry_np import local_similarity


def overlap(H_b_from_a: np.ndarray, size: tuple[int, int]) -> float:
    """Share of B's pixels (a 40×30 grid) that the ground truth maps inside A."""
    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, 40), np.linspace(0, h - 1, 30))
    pb = np.c_[xs.ravel(), ys.ravel(), np.ones(xs.size)]
    pa = pb @ np.linalg.inv(H_b_from_a).T
    pa = pa[:, :2] / pa[:, 2:]
    return float(np.mean((pa[:, 0] >= 0) & (pa[:, 0] < w) & (pa[:, 1] >= 0) & (pa[:, 1] < h)))


def by_motion(benchmark: Path, errors: dict[str, dict[str, float]], methods: list[str]) -> None:
    """Share of pairs under 3 px by the ground truth's zoom and rotation, per method."""
    size = tuple(json.loads((benchmark / "manifest.json").read_text())["view_size"])
    seqs = sorted(errors[methods[0]])
    centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)
    motion = np.array([local_similarity(np.loadtxt(benchmark / s / "H_1_2"), centre) for s in seqs])
    zoom, angle = motion[:, 0], np.abs(motion[:, 1])
    print(f"realised zoom {zoom.min():.2f}-{zoom.max():.2f}, {np.mean(zoom < 0.5):.1%} under 0.5, "
          f"{np.mean(zoom > 2):.1%} over 2; rotation up to {angle.max():.0f} degrees")  # fmt: skip
    zoom_bins = [(0.0, 0.35), (0.35, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 2.83), (2.83, 9.0)]
    for label, values, bins in (
        ("zoom of B", zoom, zoom_bins),
        ("rotation", angle, [(0, 45), (45, 90), (90, 135), (135, 181)]),
    ):
        print(f"\n| {label} | pairs | " + " | ".join(methods) + " |")
        print("|---|---:|" + "---:|" * len(methods))
        for lo, hi in bins:
            keep = (values >= lo) & (values < hi)
            shares = " | ".join(
                f"{np.mean([errors[m][s] < 3 for s, k in zip(seqs, keep, strict=True) if k]):.0%}"
                for m in methods
            )
            print(f"| {lo:g}–{hi:g} | {int(keep.sum())} | {shares} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("benchmark", type=Path, help="folder written by make-benchmark --protocol wide")
    ap.add_argument("pairs_csv", type=Path, help="pairs.csv of evaluate.py on that folder")
    ap.add_argument("--methods", nargs="+", default=["wide", "sift", "ecc"])
    ap.add_argument("--max-error", type=float, default=10.0)
    ap.add_argument("--by-motion", action="store_true")
    args = ap.parse_args()

    manifest = json.loads((args.benchmark / "manifest.json").read_text())
    size = tuple(manifest["view_size"])
    source = {p["sequence"]: p["source"] for p in manifest["pairs"]}
    failed: dict[str, dict[str, bool]] = collections.defaultdict(dict)
    errors: dict[str, dict[str, float]] = collections.defaultdict(dict)
    with args.pairs_csv.open() as f:
        for row in csv.DictReader(f):
            if row["reason"].startswith("skipped: "):  # not scored: no error to count
                continue
            bad = row["failed"] == "1" or float(row["error"]) > args.max_error
            failed[row["method"]][row["group"]] = bad
            errors[row["method"]][row["group"]] = float(row["error"])
    missing = [m for m in args.methods if m not in failed]
    if missing:
        raise SystemExit(f"{args.pairs_csv}: no rows for {', '.join(missing)}")
    if args.by_motion:
        by_motion(args.benchmark, errors, args.methods)
        return
    seqs = sorted(failed[args.methods[0]])
    ov = np.array([overlap(np.loadtxt(args.benchmark / s / "H_1_2"), size) for s in seqs])
    bins = [(0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01)]
    print(f"failed or over {args.max_error:g} px, by the share of B inside A ({len(seqs)} pairs)")
    print("| method | " + " | ".join(f"{lo:.1f}–{min(hi, 1):.1f}" for lo, hi in bins) + " |")
    print("|---|" + "---:|" * len(bins))
    counts = " | ".join(str(int(((ov >= lo) & (ov < hi)).sum())) for lo, hi in bins)
    print(f"| pairs | {counts} |")
    for m in args.methods:
        f = np.array([failed[m][s] for s in seqs])
        rates = " | ".join(f"{f[(ov >= lo) & (ov < hi)].mean():.0%}" for lo, hi in bins)
        print(f"| {m} | {rates} |")
    every = np.array([all(failed[m][s] for m in args.methods) for s in seqs])
    print(
        f"\nfailed by every one of {', '.join(args.methods)}: {int(every.sum())} pairs; median "
        f"share of B inside A {np.median(ov[every]):.2f} (the other pairs: "
        f"{np.median(ov[~every]):.2f})"
    )
    collection = collections.Counter(source[s].split("/")[0] for s in seqs)
    hit = collections.Counter(
        source[s].split("/")[0] for s, e in zip(seqs, every, strict=True) if e
    )
    for name, n in collection.most_common():
        print(f"  {name}: {hit[name]} of its {n} pairs")


if __name__ == "__main__":
    main()
