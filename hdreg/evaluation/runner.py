"""Run estimators on evaluation pairs and score them, all with the same code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from hdreg.estimators import Estimator
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.evaluation.metrics import summarize

__all__ = ["EvaluationResult", "MethodResult", "evaluate", "unique_names"]


@dataclass
class MethodResult:
    """One method on one evaluation set: per-pair arrays and the summary (``SUMMARY_KEYS``)."""

    name: str
    H_a_from_b: np.ndarray
    failed: np.ndarray
    seconds: np.ndarray
    reasons: list[str]
    errors: np.ndarray
    summary: dict[str, float]
    notes: list[str] = field(default_factory=list)  # per pair, e.g. whether ECC's result was kept


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


def evaluate(
    pairs: EvalPairs,
    estimators: Sequence[Estimator],
    *,
    names: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> EvaluationResult:
    """Run every estimator on every pair, in order, and score it.

    A pair is *failed* when the method says so or when its estimate folds the reference points
    (see :meth:`EvalPairs.folds`); a failed pair is scored as the identity and counted in
    ``fail_rate``. Pairs are processed in batches of ``batch_size`` (learned models batch them;
    classical methods loop), always in the same order, so results are reproducible.
    """
    if len(pairs) == 0:
        raise ValueError(f"{pairs.name}: no pairs to evaluate")
    names = unique_names(list(names) if names is not None else [e.name for e in estimators])
    if len(names) != len(estimators):
        raise ValueError(f"{len(names)} names for {len(estimators)} estimators")
    results = []
    for name, est in zip(names, estimators, strict=True):
        n = len(pairs)
        H = np.tile(np.eye(3), (n, 1, 1))
        failed = np.zeros(n, bool)
        seconds = np.zeros(n)
        reasons = [""] * n
        notes = [""] * n
        bar = tqdm(total=n, desc=f"{name:>14s}", unit="pair", disable=not progress, leave=False)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            out = est.estimate(pairs.images_a[sl], pairs.images_b[sl])
            if len(out) != sl.stop - sl.start:
                raise RuntimeError(f"{name} returned {len(out)} results for a batch of {sl}")
            H[sl], failed[sl], seconds[sl] = out.H_a_from_b, out.failed, out.seconds
            reasons[sl] = out.reasons
            notes[sl] = out.notes()
            bar.update(sl.stop - sl.start)
        bar.close()
        folded = ~failed & pairs.folds(H)
        for i in np.flatnonzero(folded):
            reasons[i] = "estimate folds the image (a corner maps through infinity)"
        failed |= folded
        H[failed] = np.eye(3)
        errors = pairs.errors(H)
        summary = summarize(errors, failed, seconds)
        results.append(MethodResult(name, H, failed, seconds, reasons, errors, summary, notes))
    return EvaluationResult(pairs, results)
