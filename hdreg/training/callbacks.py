"""Lightning callbacks that keep a training run honest and resumable.

* :class:`NonFiniteLossStop` stops a diverged run (the loss NaN or infinite for ``patience``
  consecutive steps) with :class:`hdreg.errors.TrainingDiverged` instead of training on NaNs.
* :class:`RandomState` stores the random number generators in every checkpoint and restores
  them on resume, so that dropout draws continue where they were: a killed and resumed run
  ends with the same weights as an uninterrupted one.
* :class:`ScheduleOnResume` rebuilds a one-cycle LR schedule whose length changed on resume
  (``trainer.max_steps`` raised): the restored schedule would otherwise stop at its old length.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.optim.lr_scheduler import OneCycleLR

from hdreg.errors import TrainingDiverged

__all__ = ["NonFiniteLossStop", "RandomState", "ScheduleOnResume"]

log = logging.getLogger(__name__)


class NonFiniteLossStop(Callback):
    """Raise :class:`TrainingDiverged` after ``patience`` consecutive training steps whose loss
    is NaN or infinite (a single bad batch is tolerated when ``patience > 1``).

    Args:
        patience: consecutive non-finite steps that stop the run (>= 1).
    """

    def __init__(self, patience: int = 3) -> None:
        if int(patience) < 1:
            raise ValueError(f"NonFiniteLossStop: patience must be >= 1, got {patience}")
        self.patience = int(patience)
        self.bad_steps = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            self.bad_steps = 0
            return
        self.bad_steps += 1
        if self.bad_steps >= self.patience:
            raise TrainingDiverged(
                f"training diverged: the loss was {value} for {self.bad_steps} consecutive steps "
                f"(up to step {trainer.global_step}); lower the learning rate "
                "(model.optimizer.lr) or clip gradients (trainer.gradient_clip_val). "
                f"Non-finite checkpoints are never saved; the count is "
                "callbacks.nonfinite_loss.patience"
            )


class RandomState(Callback):
    """Saves Python's, NumPy's and torch's (CPU and CUDA) random states in each checkpoint and
    restores them when training resumes from it."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, numbers and tuples only: checkpoints stay loadable with weights_only.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global state seed_everything seeds)
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict  # applied when training starts, after Lightning's own setup

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._restore = self._restore, None
        if not state:
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)


class ScheduleOnResume(Callback):
    """On resume, rebuild a ``OneCycleLR`` whose configured length differs from the restored
    one (``trainer.max_steps`` changed): the new schedule has the configured length and is
    positioned at the resumed step. The log says so."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        factory = getattr(pl_module, "scheduler_factory", None)
        if factory is None or trainer.global_step == 0:
            return
        for config in trainer.lr_scheduler_configs:
            restored = config.scheduler
            if not isinstance(restored, OneCycleLR):
                continue
            optimizer = restored.optimizer
            # Building a schedule rewrites the optimizer's learning rates: keep them to put back.
            saved = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            fresh = factory(optimizer=optimizer)
            if not isinstance(fresh, OneCycleLR) or fresh.total_steps == restored.total_steps:
                for group, values in zip(optimizer.param_groups, saved, strict=True):
                    group.update(values)
                continue
            step = restored.last_epoch
            if step >= fresh.total_steps:
                raise ValueError(
                    f"cannot resume at step {step} with a one-cycle schedule of "
                    f"{fresh.total_steps} steps: raise trainer.max_steps above {step}"
                )
            fresh.last_epoch = step - 1
            fresh.step()  # the learning rate (and momentum) of step `step` of the new schedule
            config.scheduler = fresh
            log.info(
                "resumed at step %d: the one-cycle LR schedule is rebuilt for %d total steps "
                "(the checkpoint's schedule had %d)",
                step, fresh.total_steps, restored.total_steps,
            )  # fmt: skip
