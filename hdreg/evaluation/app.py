"""The evaluation job behind ``evaluate.py``: Hydra config in, report files out.

This is the one place of the evaluation path that reads a config: it instantiates the benchmark
and the estimators, then hands plain objects to :func:`hdreg.evaluation.runner.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from hdreg.baselines.ecc import ECCEstimator
from hdreg.baselines.refine import REFINEMENTS, RefinedEstimator
from hdreg.estimators import Estimator
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate

__all__ = ["build_estimators", "evaluate_from_config"]


def _split_checkpoint(path: str) -> tuple[str, str]:
    """``"dir/model.ckpt+ecc"`` → ``("dir/model.ckpt", "ecc")``, ``"dir/model.ckpt"`` →
    ``("dir/model.ckpt", "")``. The part after the last '+' of the file name is a refinement
    when the path itself is not a file and either the part before it is a file or the suffix is
    a known refinement; otherwise the whole string is the path (missing files are reported by
    the loader, under the name the user wrote)."""
    if Path(path).expanduser().is_file() or "+" not in Path(path).name:
        return path, ""
    base, _, refine = path.rpartition("+")
    if Path(base).expanduser().is_file() or refine in REFINEMENTS:
        return base, refine
    return path, ""


def _check_refinement(refine: str, what: str) -> None:
    if refine and refine not in REFINEMENTS:
        raise ValueError(
            f"unknown refinement {refine!r} in {what}: valid refinements are "
            f"{', '.join(REFINEMENTS)} (as in sift+ecc or model.ckpt+ecc)"
        )


def build_estimators(
    methods: list[str] | ListConfig,
    method_params: DictConfig,
    checkpoints: list[str] | ListConfig = (),
    device: str = "auto",
) -> list[Estimator]:
    """Instantiate the named methods (from ``method_params``) and load the checkpoints.

    A method name or checkpoint path may end in ``+ecc`` (``sift+ecc``, ``model.ckpt+ecc``):
    the estimator's answers are then refined by ECC (:class:`~hdreg.baselines.RefinedEstimator`),
    the ECC refiner being built from ``method_params.ecc`` so that its parameters can be
    overridden (``method_params.ecc.refine_levels=1``).
    """
    if isinstance(methods, str):
        methods = [methods]
    known = sorted(method_params.keys())
    refiners: dict[str, ECCEstimator] = {}

    def refined(estimator: Estimator, refine: str) -> Estimator:
        if not refine:
            return estimator
        if refine not in refiners:
            if refine not in method_params:
                raise ValueError(f"refinement {refine!r} needs method_params.{refine}")
            refiner = instantiate(method_params[refine])
            if not isinstance(refiner, ECCEstimator):
                raise ValueError(
                    f"method_params.{refine} must build an ECCEstimator, got "
                    f"{type(refiner).__name__}"
                )
            refiners[refine] = refiner
        return RefinedEstimator(estimator, refiners[refine])

    estimators: list[Estimator] = []
    for name in methods:
        base, _, refine = str(name).partition("+")
        if base not in method_params:
            raise ValueError(
                f"unknown method {name!r}: valid methods are {', '.join(known)} "
                "(each a config in configs/method/), optionally followed by "
                f"+{'/+'.join(REFINEMENTS)}"
            )
        _check_refinement(refine, f"method {name!r}")
        estimators.append(refined(instantiate(method_params[base]), refine))
    for entry in checkpoints or ():
        from hdreg.models.estimator import load_checkpoint_estimator

        path, refine = _split_checkpoint(str(entry))
        _check_refinement(refine, f"checkpoint {str(entry)!r}")
        estimators.append(refined(load_checkpoint_estimator(path, device=device), refine))
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
