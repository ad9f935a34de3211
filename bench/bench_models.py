"""Throughput of the learned models beside SIFT + RANSAC, on the same 128×128 pairs.

    python bench/bench_models.py          # CPU: HomographyNet (full, CPU-quick), iterative_cpu
    python bench/bench_models.py --device cuda --precision bf16-mixed --channels-last \\
        --batch-sizes 1 64 1024 --train-batch 64
    python bench/bench_models.py --models --onnx homographynet iterative  # PyTorch vs onnxruntime

Prints one JSON object: per model, training samples/s (forward + backward + optimizer step on
batches of ``--train-batch`` pairs) and inference pairs/s per batch size (patches already in
memory, as uint8 → float on the device, offsets → DLT homographies included); and SIFT + RANSAC
pairs/s on the first pairs of the same set (one process, as ``evaluate.py`` runs it). GPU timings
are synchronized.

With ``--onnx NAME ...`` (CPU), each shipped network is also exported (``hdreg export onnx``) and
timed in PyTorch and in onnxruntime on the same batches, network only (uint8 → float conversion,
offsets out; no DLT), with onnxruntime given as many threads as torch; the largest corner
difference between the two is reported beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from hdreg.apps.protocols import detone_protocol
from hdreg.config import method_estimator
from hdreg.data.benchmarks.synthetic import make_synthetic_benchmark
from hdreg.data.decoding import load_images
from hdreg.data.sources import resolve_source
from hdreg.geometry import four_point_to_homography_ex, patch_corners
from hdreg.models.homographynet import HomographyNet
from hdreg.models.iterative import IterativeHomographyNet
from hdreg.models.losses import SequenceL1

MODELS = {
    # DeTone et al.'s network
    "homographynet_full": (HomographyNet, {"width": 1.0, "input_size": 128}),
    # experiment=cpu_quick (the shipped `homographynet` weights)
    "homographynet_cpu_quick": (HomographyNet, {"width": 0.5, "input_size": 32}),
    # experiment=iterative_cpu (the shipped `iterative` weights): hdreg/configs/model/iterative.yaml
    "iterative_cpu": (IterativeHomographyNet, {
        "input_size": 64, "channels": (32, 48), "dim": 64, "width": 48, "iterations": 4,
        "fine_input_size": 128, "fine_channels": (16, 32, 48), "fine_iterations": 3,
    }),
    # experiment=iterative_gpu: IHN-sized, 1/4 then 1/2 resolution
    "iterative_gpu": (IterativeHomographyNet, {
        "input_size": 128, "channels": (64, 96), "dim": 96, "blocks": 2, "width": 128,
        "iterations": 6, "fine_input_size": 128, "fine_channels": (96,), "fine_iterations": 3,
    }),
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, min_seconds: float, min_iters: int = 3) -> float:
    """Seconds per call of ``fn`` (after two warm-up calls), over at least ``min_seconds``."""
    for _ in range(2):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def bench_model(name, spec, patches_a, patches_b, offsets, args, device) -> dict:
    cls, kwargs = spec
    net = cls(**kwargs).to(device)
    sequence_loss = SequenceL1() if cls is IterativeHomographyNet else None
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    fwd = torch.compile(net) if args.compile else net
    out: dict = {"params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3), **kwargs}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    # training step
    b = args.train_batch
    a_u8 = torch.from_numpy(patches_a[:b])[:, None].to(device)
    b_u8 = torch.from_numpy(patches_b[:b])[:, None].to(device)
    target = torch.from_numpy(offsets[:b]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    net.train()

    def train_step():
        pa = a_u8.float().div_(255).contiguous(memory_format=memory_format)
        pb = b_u8.float().div_(255).contiguous(memory_format=memory_format)
        with autocast(device, args.precision):
            out = fwd(pa, pb)
        if sequence_loss is not None:
            loss = sequence_loss(out, {"offsets": target})
        else:
            loss = torch.nn.functional.mse_loss(out["offsets"].float() / 32, target / 32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_samples_per_s"] = round(b / timed(train_step, device, min_seconds=args.seconds), 1)

    # inference, with the DLT to homographies
    net.eval()
    for bs in args.batch_sizes:
        if bs > len(patches_a):
            continue
        pa_u8 = torch.from_numpy(patches_a[:bs])[:, None].to(device)
        pb_u8 = torch.from_numpy(patches_b[:bs])[:, None].to(device)
        corners = patch_corners(torch.zeros(bs, 2, device=device), 128)

        @torch.inference_mode()
        def infer(pa_u8=pa_u8, pb_u8=pb_u8, corners=corners):
            pa = pa_u8.float().div_(255).contiguous(memory_format=memory_format)
            pb = pb_u8.float().div_(255).contiguous(memory_format=memory_format)
            with autocast(device, args.precision):
                off = fwd(pa, pb)["offsets"]
            four_point_to_homography_ex(corners, corners + off.float())

        out[f"infer_pairs_per_s_batch{bs}"] = round(
            bs / timed(infer, device, min_seconds=args.seconds), 1
        )
    return out


def bench_onnx(name: str, patches_a, patches_b, args) -> dict:
    """PyTorch and onnxruntime pairs/s of shipped network ``name`` on the CPU, per batch size."""
    import onnxruntime as ort

    from hdreg.models.checkpoint import load_net
    from hdreg.models.onnx import export_onnx

    net = load_net(name)
    out: dict = {"params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(net, Path(tmp) / f"{name}.onnx")
        out["export_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out["session_s"] = round(time.perf_counter() - t0, 1)
    out["onnxruntime"] = ort.__version__
    worst = 0.0
    cpu = torch.device("cpu")
    for bs in args.batch_sizes:
        if bs > len(patches_a):
            continue
        a_u8, b_u8 = patches_a[:bs, None], patches_b[:bs, None]
        ta, tb = torch.from_numpy(a_u8), torch.from_numpy(b_u8)

        @torch.inference_mode()
        def run_torch(ta=ta, tb=tb):
            return net(ta.float().div_(255), tb.float().div_(255))["offsets"]

        def run_ort(a_u8=a_u8, b_u8=b_u8):
            a = a_u8.astype(np.float32) / 255
            b = b_u8.astype(np.float32) / 255
            return session.run(["offsets"], {"patch_a": a, "patch_b": b})[0]

        diff = np.linalg.norm(run_ort() - run_torch().numpy(), axis=-1).max()
        worst = max(worst, float(diff))
        for backend, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            seconds = timed(fn, cpu, min_seconds=args.seconds)
            out[f"{backend}_pairs_per_s_batch{bs}"] = round(bs / seconds, 1)
    out["max_corner_diff_px"] = float(f"{worst:.2g}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--source", default="samples")
    parser.add_argument("--pairs", type=int, default=1024, help="pairs generated for the runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument(
        "--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"]
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing per figure")
    parser.add_argument("--sift-pairs", type=int, default=200)
    parser.add_argument(
        "--models", nargs="*", choices=list(MODELS),
        default=["homographynet_full", "homographynet_cpu_quick", "iterative_cpu"],
        help="architectures to train and run (random weights); none with a bare --models",
    )  # fmt: skip
    parser.add_argument(
        "--onnx", nargs="*", default=[], metavar="NAME",
        help="shipped networks to time in PyTorch and onnxruntime (CPU; needs hdreg[onnx])",
    )  # fmt: skip
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images = load_images(resolve_source(args.source))
    bench = make_synthetic_benchmark(
        images,
        max(args.pairs, max(args.batch_sizes)),
        0,
        detone_protocol(image_size=images.image_size),
    )
    result: dict = {
        "benchmark": "models",
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "train_batch": args.train_batch,
    }
    for name in args.models:
        result[name] = bench_model(
            name, MODELS[name], bench.patch_a, bench.patch_b, bench.offsets, args, device
        )

    if args.onnx and device.type != "cpu":
        parser.error("--onnx times onnxruntime's CPU provider: use it with --device cpu")
    if args.onnx:
        from hdreg.models.onnx import require_onnx

        require_onnx()
    for name in args.onnx:
        result[f"{name}_onnx"] = bench_onnx(name, bench.patch_a, bench.patch_b, args)

    sift = method_estimator("sift")
    n = min(args.sift_pairs, len(bench))
    t0 = time.perf_counter()
    est = sift.estimate(list(bench.patch_a[:n]), list(bench.patch_b[:n]))
    dt = time.perf_counter() - t0
    result["sift_ransac"] = {
        "pairs_per_s": round(n / dt, 1),
        "pairs": n,
        "fail_rate": round(float(np.mean(est.failed)), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
