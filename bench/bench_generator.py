"""Throughput of the CPU DeTone pair generator: one process, and through a DataLoader.

    python bench/bench_generator.py [--source samples] [--pairs 20000] [--workers 2]

Prints one JSON object: pairs/s in this process (generation + tensor conversion, what a
DataLoader worker does per item) and through a DataLoader with N workers and batch 64, and the
per-core figure (pairs/s divided by the cores used).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torch.utils.data import DataLoader

from hdreg.data.sources import load_images, resolve_source
from hdreg.data.synthetic import DeToneProtocol, SyntheticPairs, worker_init_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="samples")
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    torch.set_num_threads(1)
    worker_init_fn(0)  # the single-process figure is per core too
    images = load_images(resolve_source(args.source)).images
    ds = SyntheticPairs(images, DeToneProtocol(), seed=0, length=args.pairs)
    for i in range(200):  # warm-up
        ds[i]
    t0 = time.perf_counter()
    for i in range(args.pairs):
        ds[i]
    single = args.pairs / (time.perf_counter() - t0)

    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        num_workers=args.workers,
        worker_init_fn=worker_init_fn,
    )
    it = iter(loader)
    next(it)  # workers started and warm
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["patch_a"].shape[0]
    loader_rate = n / (time.perf_counter() - t0)

    print(json.dumps({
        "benchmark": "cpu_pair_generator",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pairs": args.pairs,
        "single_process_pairs_per_s": round(single, 1),
        "dataloader_workers": args.workers,
        "dataloader_batch_size": args.batch_size,
        "dataloader_pairs_per_s": round(loader_rate, 1),
        "dataloader_pairs_per_s_per_worker": round(loader_rate / max(args.workers, 1), 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
