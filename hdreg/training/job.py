"""The training job behind ``train.py``: Hydra config in, checkpoints, logs and a test table out.

The one place of the training path that reads a config: it instantiates the DataModule, the
LightningModule, callbacks, loggers and Trainer, fits, and then scores the best checkpoint on
the test split with the evaluation path (``hdreg.evaluation``) beside the classical methods.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from hdreg.estimators.registry import build_estimators, check_method_specs
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.evaluation.report import format_table, write_report
from hdreg.evaluation.runner import evaluate
from hdreg.models.base import build_module
from hdreg.models.unsupervised import UnsupervisedHomography
from hdreg.training.checkpointing import AtomicCheckpointIO, check_checkpoint, check_same_model

__all__ = ["evaluate_test_split", "init_weights", "train_from_config"]

log = logging.getLogger(__name__)


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, flattened to ``a/b/c: value`` for TensorBoard's hparams tab."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, list):
            out[prefix] = str(node)
        else:
            out[prefix] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def check_run_length(max_steps: int | None, max_epochs: int | None) -> None:
    """``ValueError`` naming the option unless the run has a length: ``trainer.max_steps`` a
    positive number of steps, or -1 with a positive ``trainer.max_epochs``."""
    if max_steps is None or max_steps == -1:
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                "trainer.max_steps=-1 needs a positive trainer.max_epochs; set trainer.max_steps "
                "to the number of optimizer steps to train"
            )
        return
    if max_steps < 1:
        raise ValueError(
            f"trainer.max_steps must be a positive number of optimizer steps (or -1 with "
            f"trainer.max_epochs), got {max_steps}"
        )


def evaluate_test_split(
    datamodule: Any,
    checkpoint: str | Path,
    out_dir: str | Path,
    methods: list[str],
    method_params: DictConfig,
    *,
    device: str = "auto",
) -> dict[str, dict[str, float]]:
    """Score ``checkpoint`` beside ``methods`` on the DataModule's fixed test pairs, with the same
    code as ``evaluate.py``; write the report into ``out_dir``, print the table."""
    bench = datamodule.test_benchmark
    splits = datamodule.splits
    held_out = "training" if splits["test"] is splits["train"] else "held-out"
    pairs = EvalPairs.from_synthetic(
        bench, name=f"test split ({len(datamodule.splits['test'])} {held_out} images)"
    )
    estimators = build_estimators(methods, method_params, [str(checkpoint)], device=device)
    result = evaluate(pairs, estimators, progress=False)
    write_report(result, out_dir)
    print(format_table(result))
    return result.summaries()


def init_weights(model: Any, spec: str, part: str | None = None) -> None:
    """Start from the weights of a checkpoint or shipped model (``init=iterative``): its network
    weights are loaded strictly into ``model.net``; ``ValueError`` naming ``spec`` when they do
    not fit (another architecture). The optimizer, schedule and step count start fresh
    (``ckpt_path`` resumes a run instead).

    ``part="SRC:DST"`` (``init_part=coarse.encoder:encoder``) loads only the source's module
    ``SRC`` into ``model.net``'s module ``DST`` (strictly: every weight of ``DST``, same shapes),
    e.g. a new network's encoder from a trained one's; the rest keeps its fresh initialisation.
    """
    from hdreg.models.checkpoint import load_net

    source = load_net(spec)
    if part is None:
        target, state = model.net, source.state_dict()
    else:
        src, sep, dst = part.partition(":")
        try:
            if not sep:
                raise AttributeError(part)
            target = model.net.get_submodule(dst)
            state = source.get_submodule(src).state_dict()
        except AttributeError:
            raise ValueError(
                f"init_part={part}: expected SRC:DST, a module of {spec}'s network and one of "
                f"model.net ({type(model.net).__name__}), e.g. coarse.encoder:encoder"
            ) from None
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        where = "model.net" if part is None else f"model.net.{part.partition(':')[2]}"
        raise ValueError(
            f"init={spec}: its network does not fit {where} ({type(model.net).__name__} with "
            f"this config): {first}"
        ) from None
    log.info("initialized model.net%s from %s", "" if part is None else f" ({part})", spec)


def train_from_config(cfg: DictConfig) -> float | None:
    """Train as ``cfg`` says; returns the best ``val/mace`` (for Hydra sweeps)."""
    t0 = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    steps, per_epoch = cfg.trainer.get("max_steps", -1), cfg.data.get("steps_per_epoch")
    check_run_length(steps, cfg.trainer.get("max_epochs", -1))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        ckpt_path = str(check_checkpoint(ckpt_path, "ckpt_path"))

    if cfg.get("evaluate_test", True):  # an unknown test method stops here, before training
        check_method_specs(list(cfg.test_methods), cfg.get("method_params"))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # bad data stops here, before any logger writes a file
    model = build_module(cfg.model)
    if cfg.get("init"):
        init_weights(model, cfg.init, cfg.get("init_part"))
    if ckpt_path:
        check_same_model(ckpt_path, model, "ckpt_path")

    if not getattr(datamodule, "has_labels", True) and not isinstance(
        model, UnsupervisedHomography
    ):
        raise ValueError(
            f"{type(datamodule).__name__} delivers pairs without labels, but model "
            f"{type(model).__name__} trains on labels: use a label-free model "
            "(model=iterative_unsupervised or model=unsupervised)"
        )
    if getattr(model.loss, "needs_full_image", False) and not datamodule.with_full_image:
        raise ValueError(
            f"{type(model.loss).__name__} warps each pair's full image A, but "
            "data.with_full_image is false: set it to true "
            "(hdreg/configs/model/unsupervised.yaml does)"
        )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    if not loggers:  # logger=none: Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    if per_epoch and steps and steps > 0 and steps % per_epoch:
        log.warning(
            "trainer.max_steps=%d is not a multiple of data.steps_per_epoch=%d: the last %d steps "
            "end without validation, so best.ckpt cannot include them",
            steps, per_epoch, steps % per_epoch,
        )  # fmt: skip
    for lg in loggers:
        lg.log_hyperparams(_flat_hparams(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters", type(model).__name__, n_params / 1e6)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - t0
    log.info("training took %.1f s (%d steps)", fit_seconds, trainer.global_step)

    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    ckpt_cb = next((c for c in checkpoints if c.monitor), None)
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    if not best:  # no monitored checkpoint (e.g. no validation): the latest one
        best = next((c.best_model_path for c in checkpoints if c.best_model_path), "")
    best_score = float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score else None

    if cfg.get("evaluate_test") and trainer.is_global_zero:
        if not best:
            log.warning("no checkpoint was written, so the test split is not scored")
        else:
            print(f"\nscoring {best} on the test split")
            summaries = evaluate_test_split(
                datamodule, best, out_dir / "test", list(cfg.test_methods), cfg.method_params
            )
            model_name = list(summaries)[-1]
            metrics = {f"test/{k}": v for k, v in summaries[model_name].items() if k != "n"}
            for lg in loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
                lg.finalize("success")
    print(f"run directory: {out_dir} (total {time.perf_counter() - t0:.0f} s)")
    return best_score
