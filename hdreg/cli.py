"""The ``hdreg`` console command."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

__all__ = ["main"]


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pair protocol (DeTone et al. 2016)")
    g.add_argument("--rho", type=float, default=32.0, help="corner perturbation range (px)")
    g.add_argument("--patch-size", type=int, default=128, help="patch side P (px)")
    g.add_argument(
        "--image-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
        help="size the source images are resized to",
    )  # fmt: skip
    g.add_argument(
        "--jitter", action="store_true",
        help="independent photometric jitter (brightness, contrast, gamma) on A and B",
    )  # fmt: skip
    g.add_argument("--brightness", type=float, default=0.2, help="jitter: max brightness shift")
    g.add_argument("--contrast", type=float, default=0.3, help="jitter: max |log contrast|")
    g.add_argument("--gamma", type=float, default=0.3, help="jitter: max |log gamma|")


def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from hdreg.data.benchmark import make_synthetic_benchmark, write_synthetic_benchmark
    from hdreg.data.sources import load_images, resolve_source, split_by_image
    from hdreg.data.synthetic import DeToneProtocol, PhotometricJitter

    jitter = PhotometricJitter(args.brightness, args.contrast, args.gamma) if args.jitter else None
    protocol = DeToneProtocol(tuple(args.image_size), args.patch_size, args.rho, jitter)
    source = resolve_source(args.source, coco_split=args.coco_split)
    images = load_images(source, protocol.image_size)
    if args.split != "all":
        fractions = tuple(float(f) for f in args.split_fractions)
        idx = split_by_image(images.groups, fractions, args.split_seed)
        images = images.subset(idx[("train", "val", "test").index(args.split)])
    t0 = time.perf_counter()
    bench = make_synthetic_benchmark(
        images, args.n, args.seed, protocol, full_images=args.full_images
    )
    path = write_synthetic_benchmark(bench, args.out)
    dt = time.perf_counter() - t0
    print(
        f"wrote {path}: {len(bench)} pairs of {protocol.patch_size}x{protocol.patch_size} from "
        f"{len(images)} images ({source.kind}: {source.root}), rho={protocol.rho:g}, "
        f"seed={args.seed}{', jitter' if jitter else ''} in {dt:.1f} s"
    )
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from hdreg.align import align, write_alignment

    result = align(
        args.image_a,
        args.image_b,
        method=args.method,
        checkpoint=args.checkpoint,
        refine=args.refine,
        device=args.device,
        ratio=args.ratio,
        robust=args.robust,
        reproj_threshold=args.reproj_threshold,
    )
    try:
        written = write_alignment(result, args.out)
    except OSError as exc:
        print(f"hdreg align: error: {exc}", file=sys.stderr)
        return 2
    if result.failed:
        note = " (matches.png written for diagnosis)" if written else ""
        print(
            f"hdreg align: {result.label} failed: {result.reason}; no homography written to "
            f"{args.out}{note}",
            file=sys.stderr,
        )
        return 1
    print(f"{result.summary()} -> {args.out}")
    return 0


def _add_align_parser(sub: argparse._SubParsersAction) -> None:
    from hdreg.align import KEYPOINT_METHODS, METHODS
    from hdreg.baselines.features import ROBUST_METHODS
    from hdreg.baselines.refine import REFINEMENTS

    al = sub.add_parser(
        "align",
        help="estimate the homography between two photos and write pictures of the result",
        description="Estimate H_b_from_a (maps pixel coordinates of image A into image B) with "
        "one method and write homography.json, b_warped_to_a.png, overlay.png (A magenta, "
        "B green: gray where aligned, colour fringes where not) and, for keypoint methods, "
        "matches.png into --out. Exit code 1 when the method finds no homography.",
    )
    al.add_argument("image_a", help="image A (the reference frame), any format")
    al.add_argument("image_b", help="image B, aligned to A")
    al.add_argument(
        "--method", choices=METHODS, default=None,
        help="estimator (default: model with --checkpoint, else sift); defaults as in "
        "configs/method/",
    )  # fmt: skip
    al.add_argument(
        "--checkpoint", help="trained model (.ckpt from train.py); implies --method model"
    )
    al.add_argument(
        "--refine", choices=REFINEMENTS, help="refine the estimate by ECC (kept only if it helps)"
    )
    al.add_argument("--out", required=True, help="output folder (created)")
    al.add_argument("--device", default="auto", help="for --method model: auto | cpu | cuda")
    kp = al.add_argument_group(f"keypoint methods ({', '.join(KEYPOINT_METHODS)})")
    kp.add_argument("--ratio", type=float, help="Lowe's ratio test threshold (default 0.75)")
    kp.add_argument("--robust", choices=sorted(ROBUST_METHODS), help="robust fit (default ransac)")
    kp.add_argument(
        "--reproj-threshold", type=float, help="inlier threshold in pixels of A (default 3)"
    )
    al.set_defaults(func=_cmd_align)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdreg", description="Deep homography estimation: data, benchmarks, alignment."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mb = sub.add_parser(
        "make-benchmark",
        help="write a fixed synthetic benchmark (.npz) from an image source",
        description="Write N fixed DeTone pairs from an image source to a .npz benchmark file. "
        "The same arguments always give identical arrays.",
    )
    mb.add_argument(
        "--source", default="samples",
        help="'samples' (scikit-image's photos, the default), a folder of images (searched "
        "recursively) or a COCO root (with train2014/val2014 or train2017/val2017)",
    )  # fmt: skip
    mb.add_argument("--n", type=int, default=1000, help="number of pairs (default 1000)")
    mb.add_argument("--seed", type=int, default=0, help="seed of the pairs (default 0)")
    mb.add_argument("--out", required=True, help="output .npz path")
    mb.add_argument("--coco-split", default="val", choices=["train", "val"], help="COCO folder")
    mb.add_argument(
        "--split", default="all", choices=["all", "train", "val", "test"],
        help="use only the images of this split of the source (split by image, see --split-seed)",
    )  # fmt: skip
    mb.add_argument("--split-seed", type=int, default=0, help="seed of the image split")
    mb.add_argument(
        "--split-fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"), help="shares of images per split",
    )  # fmt: skip
    mb.add_argument(
        "--full-images", action="store_true",
        help="also store each pair's full image A (extra keys image_a, top_left)",
    )  # fmt: skip
    _add_protocol_args(mb)
    mb.set_defaults(func=_cmd_make_benchmark)
    _add_align_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"hdreg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
