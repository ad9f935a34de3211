"""Learning-rate schedules built from the config (``hdreg/configs/model/scheduler/``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import OneCycleLR

__all__ = ["one_cycle"]

log = logging.getLogger(__name__)


def one_cycle(
    optimizer: torch.optim.Optimizer,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.1,
    **kwargs: Any,
) -> OneCycleLR:
    """``torch.optim.lr_scheduler.OneCycleLR`` (warm-up to ``max_lr`` over ``pct_start`` of
    ``total_steps``, then cosine annealing), valid for any run length.

    PyTorch divides by the warm-up length minus one step, which is zero when
    ``pct_start · total_steps`` is exactly 1 (e.g. a 10-step smoke run with ``pct_start=0.1``):
    a short run gets a warm-up of at least 2 steps instead (or none when it has fewer than
    3 steps), and the log says so. ``total_steps`` below 1 is an error naming
    ``trainer.max_steps``, which it comes from in the configs.
    """
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(
            f"the one-cycle LR schedule needs total_steps >= 1 (trainer.max_steps), got "
            f"{total_steps}"
        )
    if not 0.0 < float(pct_start) < 1.0:
        raise ValueError(f"one-cycle pct_start must be in (0, 1), got {pct_start}")
    warmup = float(pct_start) * total_steps
    adjusted = float(pct_start)
    if total_steps < 3:
        adjusted = min(adjusted, 0.5 / total_steps)  # the warm-up phase ends before step 1
    elif warmup < 2.0:
        adjusted = 2.0 / total_steps
    if adjusted != float(pct_start):
        log.info(
            "one-cycle schedule of %d steps: warm-up fraction %.3g instead of %.3g "
            "(a warm-up of %.3g steps is not a usable one-cycle phase)",
            total_steps, adjusted, pct_start, warmup,
        )  # fmt: skip
    return OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=adjusted, **kwargs
    )
