"""Seeded, independent random streams of pairs, and the DataLoader worker set-up: pair ``i`` of a
stream under seed ``s`` depends only on ``(s, stream, i)``, not on worker count or order."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["STREAMS", "check_sources", "pair_rng", "single_threaded_opencv", "worker_init_fn"]

# Independent random streams: the same seed never gives the same pairs in two roles.
STREAMS = {"benchmark": 0, "train": 1, "val": 2, "test": 3}


def check_sources(images, stream: str | None = None) -> None:
    """``ValueError`` unless ``images`` — the source photos of a pair stream, a numpy array or a
    torch tensor — is a non-empty ``(N, H, W)`` uint8 stack, and ``stream`` (if given) one of
    :data:`STREAMS`."""
    kind = "array" if isinstance(images, np.ndarray) else "tensor"
    if images.ndim != 3 or str(images.dtype) not in ("uint8", "torch.uint8") or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty (N, H, W) uint8 {kind}, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if stream is not None and stream not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")


def pair_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for pair ``index`` of ``stream`` under ``seed`` (independent of any other)."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def single_threaded_opencv() -> None:
    """Make OpenCV single-threaded in this process: call it in the parent *before* DataLoader
    workers fork (each worker is then one stream on one core; reconfiguring OpenCV's pool in a
    forked child can deadlock). Why: docs/methods.md ("Pair generation")."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker set-up: OpenCV single-threaded (a no-op in forked workers of a parent
    that called :func:`single_threaded_opencv`; needed under spawn/forkserver). Seeding needs
    nothing: every pair has its own generator (:func:`pair_rng`)."""
    single_threaded_opencv()
