"""Throughput of the DeTone pair generators: CPU (one process, DataLoader) and batched torch.

    python bench/bench_generator.py [--source samples] [--pairs 20000] [--workers 2]
    python bench/bench_generator.py --device cuda --torch-batch-sizes 64 1024 4096
    python bench/bench_generator.py --source /data/coco --cache ~/.cache/hdreg

Prints one JSON object:

* the CPU generator (``SyntheticPairs``): pairs/s in this process (generation + tensor
  conversion, what a DataLoader worker does per item, one OpenCV and one torch thread) and
  through a DataLoader with N workers and batch 64, and per worker;
* the torch generator (``TorchPairGenerator``) on ``--device``: pairs/s per batch size, whole
  batches made on the device (``--threads`` torch threads on the CPU), timings synchronized;
* how the images were loaded (decoded, or from the ``--cache`` folder) and how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.seeding import worker_init_fn
from hdreg.data.sources import resolve_source
from hdreg.data.synthetic.detone import DeToneProtocol, SyntheticPairs
from hdreg.data.synthetic.detone_torch import TorchPairGenerator
from hdreg.training.image_cache import load_cached_images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_torch(
    images: np.ndarray,
    protocol: DeToneProtocol,
    device: torch.device,
    batch_sizes: list[int],
    pairs: int,
) -> dict[str, float]:
    """Pairs/s of the torch generator per batch size (at least 3 timed batches each)."""
    gen = TorchPairGenerator(torch.from_numpy(np.array(images)).to(device), protocol, seed=0)
    rates = {}
    for bs in batch_sizes:
        gen.generate(bs, 0)  # warm-up: allocator, kernels
        n_batches = max(3, pairs // bs)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(1, n_batches + 1):
            gen.generate(bs, i)
        _sync(device)
        rates[str(bs)] = round(n_batches * bs / (time.perf_counter() - t0), 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="samples")
    parser.add_argument("--pairs", type=int, default=20000, help="pairs per CPU figure")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size")
    parser.add_argument("--device", default="cpu", help="device of the torch generator")
    parser.add_argument("--torch-batch-sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--torch-pairs", type=int, default=8192, help="pairs per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--jitter", action="store_true", help="photometric jitter on")
    parser.add_argument("--cache", default=None, help="image cache folder (load_cached_images)")
    parser.add_argument("--skip-cpu", action="store_true", help="torch generator only")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    worker_init_fn(0)  # the single-process figure is per core too
    protocol = detone_protocol(jitter=bool(args.jitter))
    source = resolve_source(args.source)
    t0 = time.perf_counter()
    if args.cache:
        images = load_cached_images(source, protocol.image_size, args.cache).images
    else:
        images = load_images(source, protocol.image_size).images
    load_s = time.perf_counter() - t0

    result = {
        "benchmark": "cpu_pair_generator",  # name kept for readers of earlier results
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "source": args.source,
        "images": len(images),
        "images_from": f"cache {args.cache}" if args.cache else "decoded",
        "images_load_s": round(load_s, 3),
        "jitter": args.jitter,
        "pairs": args.pairs,
    }
    if not args.skip_cpu:
        ds = SyntheticPairs(images, protocol, seed=0, length=args.pairs)
        for i in range(200):  # warm-up
            ds[i]
        t0 = time.perf_counter()
        for i in range(args.pairs):
            ds[i]
        single = args.pairs / (time.perf_counter() - t0)

        loader = DataLoader(
            ds, batch_size=args.batch_size, num_workers=args.workers, worker_init_fn=worker_init_fn
        )
        it = iter(loader)
        next(it)  # workers started and warm
        t0 = time.perf_counter()
        n = 0
        for batch in it:
            n += batch["patch_a"].shape[0]
        loader_rate = n / (time.perf_counter() - t0)
        result |= {
            "single_process_pairs_per_s": round(single, 1),
            "dataloader_workers": args.workers,
            "dataloader_batch_size": args.batch_size,
            "dataloader_pairs_per_s": round(loader_rate, 1),
            "dataloader_pairs_per_s_per_worker": round(loader_rate / max(args.workers, 1), 1),
        }

    device = torch.device(args.device)
    result["torch_generator"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "pairs_per_s_by_batch_size": bench_torch(
            images, protocol, device, args.torch_batch_sizes, args.torch_pairs
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
