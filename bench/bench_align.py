"""Wall time of ``hdreg align`` per pair, as a user runs it, at two photo sizes.

    python bench/bench_align.py                       # 800x640 and 4000x3000; sift, wide, wide+ecc
    python bench/bench_align.py --methods sift wide --sizes 800x640 --repeats 5

Each run is a whole ``hdreg align A B --out DIR`` process (start-up, reading the photos, the
estimate, writing the pictures), on a pair rendered from scikit-image's astronaut photo (B is
A rotated by 12 degrees, zoomed by 1.1 and shifted), so that it runs anywhere. Prints one JSON
object: per size and method, the minimum and median wall seconds over ``--repeats`` runs, the
estimate's own seconds (from ``homography.json``) and the corner error against the truth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

#: ``hdreg align`` arguments per method name
METHODS = {
    "sift": ["--method", "sift"],
    "sift+ecc": ["--method", "sift", "--refine", "ecc"],
    "iterative": ["--checkpoint", "iterative"],
    "wide": ["--checkpoint", "wide"],
    "wide+ecc": ["--checkpoint", "wide", "--refine", "ecc"],
}


def render_pair(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two renderings of the astronaut photo at ``width×height`` and the true ``H_b_from_a``."""
    from skimage import data

    src = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    side = 2 * max(width, height)
    src = cv2.resize(src, (side, side), interpolation=cv2.INTER_CUBIC)
    src_from_a = np.array([[1.0, 0.02, side / 4], [0.01, 1.0, side / 4], [0, 0, 1]])
    cx, cy, t = (width - 1) / 2, (height - 1) / 2, math.radians(12.0)
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    back = np.array([[1, 0, cx + 0.02 * width], [0, 1, cy - 0.01 * height], [0, 0, 1.0]])
    R = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    b_from_a = back @ R @ np.diag([1.1, 1.1, 1.0]) @ to_centre
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    a = cv2.warpPerspective(src, src_from_a, (width, height), flags=flags)
    b = cv2.warpPerspective(src, src_from_a @ np.linalg.inv(b_from_a), (width, height), flags=flags)
    return a, b, b_from_a


def corner_error(b_from_a_est: np.ndarray, b_from_a: np.ndarray, width: int, height: int) -> float:
    c = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    c = np.c_[c, np.ones(4)]

    def proj(H: np.ndarray) -> np.ndarray:
        q = c @ H.T
        return q[:, :2] / q[:, 2:]

    return float(np.linalg.norm(proj(b_from_a_est) - proj(b_from_a), axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["sift", "wide", "wide+ecc"],
                        choices=sorted(METHODS))  # fmt: skip
    parser.add_argument("--sizes", nargs="+", default=["800x640", "4000x3000"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-side", type=int, help="hdreg align --max-side (default: its own)")
    args = parser.parse_args()
    hdreg = [sys.executable, "-m", "hdreg.apps.cli"]
    out: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": os.getloadavg()[0],
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            a, b, b_from_a = render_pair(width, height)
            pa, pb = Path(tmp) / f"a_{size}.png", Path(tmp) / f"b_{size}.png"
            cv2.imwrite(str(pa), a)
            cv2.imwrite(str(pb), b)
            for method in args.methods:
                walls, estimate_s, error = [], None, None
                for r in range(args.repeats):
                    folder = Path(tmp) / f"{size}_{method}_{r}"
                    cmd = [*hdreg, "align", str(pa), str(pb), "--out", str(folder)]
                    cmd += METHODS[method]
                    if args.max_side is not None:
                        cmd += ["--max-side", str(args.max_side)]
                    t0 = time.perf_counter()
                    run = subprocess.run(cmd, capture_output=True, text=True)
                    walls.append(time.perf_counter() - t0)
                    if run.returncode != 0:
                        error = f"exit {run.returncode}: {run.stderr.strip()[-200:]}"
                        break
                    result = json.loads((folder / "homography.json").read_text())
                    estimate_s = result.get("seconds")
                    error = corner_error(np.array(result["b_from_a"]), b_from_a, width, height)
                out["results"][f"{size} {method}"] = {
                    "wall_s_min": round(min(walls), 3),
                    "wall_s_median": round(statistics.median(walls), 3),
                    "estimate_s": estimate_s,
                    "corner_error_px": error if isinstance(error, str) else round(error, 3),
                }
                print(f"{size} {method}: {out['results'][f'{size} {method}']}", file=sys.stderr)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
