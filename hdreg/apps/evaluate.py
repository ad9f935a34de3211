"""The evaluation job behind ``hdreg evaluate`` and ``evaluate.py``: Hydra config in, report
files out.

This is the one place of the evaluation path that reads a config: it instantiates the benchmark
and resolves the estimators (:func:`hdreg.estimators.registry.build_estimators`), then hands
plain objects to :func:`hdreg.evaluation.runner.evaluate`.
The run directory is claimed before Hydra writes into it (:mod:`hdreg.apps.run_dir`); the report
lands in it whole or not at all, and Ctrl-C ends the run with one line and exit code 130.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from hdreg.apps.hydra_app import hydra_app
from hdreg.estimators.registry import build_estimators
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

__all__ = ["evaluate_from_config", "main"]

#: exit code of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT_CODE = 130


def evaluate_from_config(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run ``cfg.methods`` and ``cfg.checkpoints`` on ``cfg.benchmark``; write the report into
    the Hydra run directory; print the table. Returns the summaries (``results.json``)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    estimators = build_estimators(cfg.methods, cfg.method_params, cfg.checkpoints, cfg.device)
    pairs = instantiate(cfg.benchmark)
    result = evaluate(
        pairs,
        estimators,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        num_workers=cfg.get("num_workers", 1),
    )
    write_report_whole(result, out_dir)
    print(format_table(result))
    print(f"report written to {out_dir}")
    return result.summaries()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # Python's own handler: KeyboardInterrupt, now


def write_report_whole(result: Any, out_dir: str | Path) -> list[Path]:
    """:func:`hdreg.evaluation.report.write_report` into ``out_dir`` so that an interrupted or
    failed run leaves no half-written report: the files are written into a staging folder inside
    ``out_dir``, then renamed into place (``results.json`` last) with Ctrl-C held back. Returns
    the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report.", suffix=".partial", dir=out))
    try:
        write_report(result, staging)
        files = sorted(staging.iterdir(), key=lambda p: (p.name == "results.json", p.name))
        with _interrupts_held():
            for path in files:
                os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / path.name for path in files]


@hydra_app("evaluate")
def main(cfg: DictConfig) -> dict:
    """``hdreg evaluate [overrides]``: score methods on one benchmark
    (hdreg/configs/evaluate.yaml)."""
    from hdreg.errors import debug_enabled, program_name, user_errors

    program = program_name("evaluate")
    try:
        with user_errors(program):  # one line for bad input; HDREG_DEBUG=1: traceback
            return evaluate_from_config(cfg)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{program}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
