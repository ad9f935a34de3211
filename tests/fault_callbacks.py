"""Fault injection for the training tests: callbacks that train.py loads by name
(``+callbacks.kill._target_=tests.fault_callbacks.KillAtStep``)."""

from __future__ import annotations

import os
import signal

from pytorch_lightning.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process when training is about to take optimizer step ``step + 1`` (that is,
    after ``step`` steps and whatever they saved): a crash that no cleanup code sees."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
