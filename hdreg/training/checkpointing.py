"""Checkpoints that are never half-written and never hold a diverged model.

* :class:`AtomicCheckpointIO` writes each checkpoint into a temporary file *beside* its
  destination, flushes it to disk and renames it over the destination (an atomic ``rename`` on
  one filesystem). Lightning's own writer stages the file in the system temporary folder and
  copies it over when that folder is on another filesystem (tmpfs ``/tmp``): a kill during that
  copy left a truncated ``last.ckpt`` and an orphaned temporary file.
* :class:`FiniteModelCheckpoint` is Lightning's ``ModelCheckpoint`` that skips a save when the
  monitored metric or any weight is NaN or infinite, so ``best.ckpt`` is never a diverged model.
* :func:`check_checkpoint` turns a missing, empty or corrupt ``ckpt_path`` into one clear error
  before training starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

__all__ = [
    "PARTIAL_SUFFIX",
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "atomic_torch_save",
    "check_checkpoint",
    "partial_path",
]

log = logging.getLogger(__name__)

#: a checkpoint being written is ``.<name>.partial`` in the destination folder
PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """Where the checkpoint for ``path`` is staged while it is written (same folder)."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is either its old content or the complete
    new one, whenever the process dies: staged in :func:`partial_path` (same folder, hence same
    filesystem), flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer using :func:`atomic_torch_save` (local paths)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_torch_save(checkpoint, path)


def _weights_finite(module: torch.nn.Module) -> bool:
    return all(
        bool(torch.isfinite(p).all()) for p in module.state_dict().values() if p.is_floating_point()
    )


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that does not save a model whose monitored metric or weights are NaN
    or infinite (with a warning): a diverged run never replaces ``best.ckpt`` or ``last.ckpt``."""

    @property
    def state_key(self) -> str:
        # The key Lightning's ModelCheckpoint has: checkpoints written before keep their state.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            log.warning(
                "%s=%s is not finite: %s is not saved", self.monitor, float(current), self.filename
            )
            return False
        if not _weights_finite(trainer.lightning_module):
            log.warning("the model has non-finite weights: %s is not saved", self.filename)
            return False
        return super().check_monitor_top_k(trainer, current)

    def _save_none_monitor_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not _weights_finite(trainer.lightning_module):
            log.warning("the model has non-finite weights: %s is not saved", self.filename)
            return
        super()._save_none_monitor_checkpoint(trainer, monitor_candidates)


def check_checkpoint(path: str | Path, option: str = "ckpt_path") -> Path:
    """``path`` if it is a readable PyTorch checkpoint with Lightning's training state; else
    ``FileNotFoundError`` / ``ValueError`` naming ``option`` and the file, in one line.

    A staged file of an interrupted save (:func:`partial_path`) beside it is removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: no such checkpoint file")
    stale = partial_path(path)
    if stale.is_file():
        log.info("removing %s, left by a save that was interrupted", stale)
        stale.unlink(missing_ok=True)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{option}={path} is an empty file (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{option}={path} is corrupt or truncated ({size} bytes), not a readable PyTorch "
            f"checkpoint: {first}"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ValueError(f"{option}={path} is not a training checkpoint written by train.py")
    return path
