"""The evaluation job behind ``evaluate.py``: Hydra config in, report files out.

This is the one place of the evaluation path that reads a config: it instantiates the benchmark
and the estimators, then hands plain objects to :func:`hdreg.evaluation.runner.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from hdreg.estimators import Estimator
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

__all__ = ["build_estimators", "evaluate_from_config"]


def build_estimators(
    methods: list[str] | ListConfig,
    method_params: DictConfig,
    checkpoints: list[str] | ListConfig = (),
    device: str = "auto",
) -> list[Estimator]:
    """Instantiate the named methods (from ``method_params``) and load the checkpoints."""
    if isinstance(methods, str):
        methods = [methods]
    known = sorted(method_params.keys())
    estimators: list[Estimator] = []
    for name in methods:
        base, _, refine = str(name).partition("+")
        if base not in method_params:
            raise ValueError(
                f"unknown method {name!r}: valid methods are {', '.join(known)} "
                "(each a config in configs/method/)"
            )
        if refine:
            raise ValueError(f"unknown refinement {refine!r} in method {name!r}")
        estimators.append(instantiate(method_params[base]))
    for path in checkpoints or ():
        from hdreg.models.estimator import load_checkpoint_estimator

        estimators.append(load_checkpoint_estimator(str(path), device=device))
    if not estimators:
        raise ValueError("nothing to evaluate: give methods=[...] and/or checkpoints=[...]")
    return estimators


def evaluate_from_config(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run ``cfg.methods`` and ``cfg.checkpoints`` on ``cfg.benchmark``; write the report into
    the Hydra run directory; print the table. Returns the summaries (``results.json``)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    estimators = build_estimators(cfg.methods, cfg.method_params, cfg.checkpoints, cfg.device)
    pairs = instantiate(cfg.benchmark)
    result = evaluate(pairs, estimators, batch_size=cfg.batch_size, progress=cfg.progress)
    write_report(result, out_dir)
    print(format_table(result))
    print(f"report written to {out_dir}")
    return result.summaries()
