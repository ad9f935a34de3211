"""Run estimators on evaluation pairs and score them, all with the same code.

Classical methods (``Estimator.per_pair``) may run on a pool of worker processes
(``num_workers``): the pairs are cut into the same batches, each batch is estimated in a worker,
and the batches are put back in order, so the results are those of a single process (only the
wall times differ). Learned models always run in the calling process, on their device.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hdreg.estimators import Estimate, Estimator, reportable
from hdreg.estimators.base import Result
from hdreg.estimators.refinement import RefinedEstimator
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.evaluation.metrics import summarize

__all__ = ["EvaluationResult", "MethodResult", "evaluate", "unique_names"]


@dataclass
class MethodResult:
    """One method on one evaluation set: its :class:`~hdreg.estimators.base.Result` for each
    pair (in the order of the pairs; a failed pair carries the identity, and ``details`` only
    the reportable entries), the corner errors and the summary (``SUMMARY_KEYS``). The per-pair
    arrays below are read from the results."""

    name: str
    results: list[Result]
    errors: np.ndarray
    summary: dict[str, float]

    @cached_property
    def H_a_from_b(self) -> np.ndarray:
        """``(N, 3, 3)``: each pair's ``a_from_b`` (the identity where failed)."""
        return np.stack([r.a_from_b for r in self.results]) if self.results else np.zeros((0, 3, 3))

    @cached_property
    def failed(self) -> np.ndarray:
        return np.array([r.failed for r in self.results], bool)

    @cached_property
    def seconds(self) -> np.ndarray:
        return np.array([r.seconds for r in self.results], np.float64)

    @cached_property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.results]

    @cached_property
    def details(self) -> list[dict[str, Any]]:
        return [r.details for r in self.results]


@dataclass
class EvaluationResult:
    pairs: EvalPairs
    methods: list[MethodResult]

    def summaries(self) -> dict[str, dict[str, float]]:
        return {m.name: m.summary for m in self.methods}

    def method(self, name: str) -> MethodResult:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"no method {name!r}; have {[m.name for m in self.methods]}")


def unique_names(names: Sequence[str]) -> list[str]:
    """Make method names unique for the report: a repeated ``x`` becomes ``x-2``, ``x-3``, …"""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"`` → the number of CPU cores this process may use; an int >= 1 as it is."""
    if num_workers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be 'auto' or an integer >= 1, got {num_workers!r}")
    return num_workers


def _init_worker() -> None:
    # Each worker is one of the parallel streams: OpenCV's own thread pool would oversubscribe
    # the cores. The worker is a fresh (spawned) process, so reconfiguring it is safe.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    # Ctrl-C reaches every process of the terminal's group: the calling process stops the run
    # (and the pool); a worker ends with it instead of printing a KeyboardInterrupt of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _estimate_batch(
    estimator: Estimator, images_a: list[np.ndarray], images_b: list[np.ndarray]
) -> Estimate:
    """One batch, with only the reportable details (what the runner keeps; less to send back)."""
    out = estimator.estimate(images_a, images_b)
    out.details = [reportable(d) for d in out.details]
    return out


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _refine_batch(
    estimator: RefinedEstimator,
    images_a: list[np.ndarray],
    images_b: list[np.ndarray],
    start: Estimate,
) -> Estimate:
    """One batch of a refined estimator whose base was already run on it (``start``)."""
    out = estimator.refine_estimate(images_a, images_b, start)
    out.details = [reportable(d) for d in out.details]
    return out


def _slice(est: Estimate, sl: slice) -> Estimate:
    return Estimate(
        est.H_a_from_b[sl].copy(), est.failed[sl].copy(), est.seconds[sl].copy(),
        list(est.reasons[sl]), [dict(d) for d in est.details[sl]],
    )  # fmt: skip


def _run(
    est: Estimator,
    pairs: EvalPairs,
    batches: list[slice],
    pool: ProcessPoolExecutor | None,
    start: Estimate | None = None,
) -> Iterator[tuple[slice, Estimate]]:
    def job(sl: slice) -> tuple:
        a, b = pairs.images_a[sl], pairs.images_b[sl]
        if start is None:
            return _estimate_batch, est, a, b
        return _refine_batch, est, a, b, _slice(start, sl)

    if pool is None or not est.per_pair:
        for sl in batches:
            fn, *args = job(sl)
            yield sl, fn(*args)
        return
    # The workers start here: with Ctrl-C blocked meanwhile (it waits, then stops this process),
    # they inherit the block and never print a KeyboardInterrupt, even while starting up.
    sigmask = getattr(signal, "pthread_sigmask", None)  # POSIX
    blocked = sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if sigmask else None
    try:
        futures = [pool.submit(*job(sl)) for sl in batches]
    finally:
        if sigmask:
            sigmask(signal.SIG_SETMASK, blocked)
    for sl, future in zip(batches, futures, strict=True):
        yield sl, future.result()


def evaluate(
    pairs: EvalPairs,
    estimators: Sequence[Estimator],
    *,
    names: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    num_workers: int | str = 1,
) -> EvaluationResult:
    """Run every estimator on every pair, in order, and score it.

    A pair is *failed* when the method says so or when its estimate folds the reference points
    (see :meth:`EvalPairs.folds`); a failed pair is scored as the identity and counted in
    ``fail_rate``. Pairs are processed in batches of ``batch_size`` (learned models batch them;
    classical methods loop), always in the same order, so results are reproducible.
    ``num_workers`` (an int, or ``"auto"``: every core) > 1 runs the batches of classical
    methods on that many worker processes, with the same results. Pairs the set skipped
    (``pairs.skipped``) are not run; the report lists them.
    """
    if len(pairs) == 0:
        why = "; ".join(f"{s.id}: {s.reason}" for s in pairs.skipped[:5])
        raise ValueError(
            f"{pairs.name}: no pairs to evaluate"
            + (f" (all {len(pairs.skipped)} skipped: {why})" if pairs.skipped else "")
        )
    names = unique_names(list(names) if names is not None else [e.name for e in estimators])
    if len(names) != len(estimators):
        raise ValueError(f"{len(names)} names for {len(estimators)} estimators")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = resolve_num_workers(num_workers)
    pool = None
    if workers > 1 and any(e.per_pair for e in estimators):
        # spawn: fresh workers, no copy of this process's threads (OpenCV's, torch's).
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    # The raw results of each estimator, by identity: a refined estimator whose base was
    # scored alone in this run (``wide`` and ``wide+ecc`` share one base, see
    # hdreg.estimators.registry.build_estimators) refines those results instead of running it again.
    raw: dict[int, Estimate] = {}
    try:
        results = []
        for name, est in zip(names, estimators, strict=True):
            start = raw.get(id(est.base)) if isinstance(est, RefinedEstimator) else None
            result, raw[id(est)] = _evaluate_one(
                name, est, pairs, batch_size, progress, pool, start
            )
            results.append(result)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return EvaluationResult(pairs, results)


def _evaluate_one(
    name: str,
    est: Estimator,
    pairs: EvalPairs,
    batch_size: int,
    progress: bool,
    pool: ProcessPoolExecutor | None,
    start: Estimate | None = None,
) -> tuple[MethodResult, Estimate]:
    """Score ``est`` on ``pairs``; also return its raw results (before fold checks).
    ``start``: the raw results of ``est.base`` when ``est`` is a :class:`RefinedEstimator`
    whose base already ran on these pairs (its per-pair seconds count in ``est``'s)."""
    n = len(pairs)
    H = np.tile(np.eye(3), (n, 1, 1))
    failed = np.zeros(n, bool)
    seconds = np.zeros(n)
    reasons = [""] * n
    details: list[dict[str, Any]] = [{} for _ in range(n)]
    bar = tqdm(total=n, desc=f"{name:>14s}", unit="pair", disable=not progress, leave=False)
    for sl, out in _run(est, pairs, _batches(n, batch_size), pool, start):
        if len(out) != sl.stop - sl.start:
            raise RuntimeError(f"{name} returned {len(out)} results for a batch of {sl}")
        H[sl], failed[sl], seconds[sl] = out.H_a_from_b, out.failed, out.seconds
        reasons[sl] = out.reasons
        details[sl] = out.details
        bar.update(sl.stop - sl.start)
    bar.close()
    raw = Estimate(
        H.copy(), failed.copy(), seconds.copy(), list(reasons), [dict(d) for d in details]
    )
    folded = ~failed & pairs.folds(H)
    for i in np.flatnonzero(folded):
        reasons[i] = "estimate folds the image (a corner maps through the horizon)"
    failed |= folded
    H[failed] = np.eye(3)
    errors = pairs.errors(H)
    summary = summarize(errors, failed, seconds)
    scored = Estimate(H, failed, seconds, reasons, details)
    results = [Result.from_estimate(scored, i, name) for i in range(n)]
    return MethodResult(name, results, errors, summary), raw
