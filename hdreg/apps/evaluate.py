"""The evaluation job behind ``hdreg evaluate`` and ``evaluate.py``: Hydra config in, report
files out.

This is the one place of the evaluation path that reads a config: it instantiates the benchmark
and the estimators, then hands plain objects to :func:`hdreg.evaluation.runner.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from hdreg.estimators import Estimator
from hdreg.estimators.registry import build_estimator, parse_checkpoint_spec, parse_method_spec
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

__all__ = ["build_estimators", "check_method_specs", "evaluate_from_config", "main"]


def check_method_specs(methods: Any, method_params: Any) -> list:
    """Parse method specs against the registry (``hdreg/configs/method/`` plus any
    ``method_params`` entry); ``ValueError`` for an unknown name, before any work starts."""
    from hdreg.config import method_names

    known = sorted(set(method_names()) | set((method_params or {}).keys()))
    return [parse_method_spec(str(m), known) for m in methods]


def build_estimators(
    methods: list[str] | ListConfig,
    method_params: DictConfig,
    checkpoints: list[str] | ListConfig = (),
    device: str = "auto",
) -> list[Estimator]:
    """Instantiate the named methods (from ``method_params``) and load the checkpoints.

    Each entry is parsed by :mod:`hdreg.estimators.registry`: a method name or checkpoint may end in
    ``+ecc`` (``sift+ecc``, ``model.ckpt+ecc``), and its estimates are then refined by the ECC
    refiner built from ``method_params.ecc`` (overridable: ``method_params.ecc.refine_levels=1``);
    ``+adapt`` likewise (``method_params.adapt``), and they chain: ``wide+adapt+ecc``.
    """
    if isinstance(methods, str):
        methods = [methods]
    specs = check_method_specs(methods, method_params)
    specs += [parse_checkpoint_spec(str(c)) for c in checkpoints or ()]
    if not specs:
        raise ValueError("nothing to evaluate: give methods=[...] and/or checkpoints=[...]")
    # one cache for the run: x, x+ecc and x+adapt+ecc share x (the runner estimates it once)
    refiners: dict = {}
    built: dict = {}
    return [
        build_estimator(spec, method_params, device=device, refiners=refiners, built=built)
        for spec in specs
    ]


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
    write_report(result, out_dir)
    print(format_table(result))
    print(f"report written to {out_dir}")
    return result.summaries()


@hydra.main(version_base="1.3", config_path="pkg://hdreg.configs", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    """``hdreg evaluate [overrides]``: score methods on one benchmark
    (hdreg/configs/evaluate.yaml)."""
    from hdreg.errors import program_name, user_errors

    with user_errors(program_name("evaluate")):  # one line for bad input; HDREG_DEBUG=1: traceback
        return evaluate_from_config(cfg)
