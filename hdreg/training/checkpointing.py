"""Checkpoints that are never half-written and never hold a diverged model.

* :class:`AtomicCheckpointIO` writes each checkpoint into a temporary file *beside* its
  destination, flushes it to disk and renames it over the destination (an atomic ``rename`` on
  one filesystem). Lightning's own writer stages the file in the system temporary folder and
  copies it over when that folder is on another filesystem (tmpfs ``/tmp``): a kill during that
  copy left a truncated ``last.ckpt`` and an orphaned temporary file.
* :class:`FiniteModelCheckpoint` is Lightning's ``ModelCheckpoint`` that skips a save when the
  monitored metric or any weight is NaN or infinite, so ``best.ckpt`` is never a diverged model.
* :func:`check_checkpoint` turns a missing, empty, corrupt or weights-only ``ckpt_path`` into one
  clear error before training starts, and :func:`check_same_model` one of another model.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from hdreg.files import STAGING_MARK, atomic_write
from hdreg.models.checkpoint import load_torch_file

__all__ = [
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "atomic_torch_save",
    "check_checkpoint",
    "check_same_model",
    "staged_checkpoints",
]

log = logging.getLogger(__name__)

#: what Lightning reads to resume a run
RESUME_KEYS = (
    "state_dict",
    "global_step",
    "epoch",
    "pytorch-lightning_version",
    "optimizer_states",
)


def staged_checkpoints(path: str | Path) -> list[Path]:
    """The staging files of saves to ``path`` still on disk beside it (a save in progress, or
    one whose process was killed): ``.<stem>.<pid>-<random>.partial<suffix>``
    (:func:`hdreg.files.staging_path`), and ``.<name>.partial`` of older hdreg versions."""
    path = Path(path)
    pattern = f".{glob.escape(path.stem)}.*-*{STAGING_MARK}{glob.escape(path.suffix)}"
    legacy = path.with_name(f".{path.name}{STAGING_MARK}")
    return sorted(path.parent.glob(pattern)) + ([legacy] if legacy.is_file() else [])


def _writer_gone(staged: Path) -> bool:
    """True when the process that staged ``staged`` no longer runs (its pid is in the name)."""
    found = re.search(rf"\.(\d+)-[0-9a-f]+{re.escape(STAGING_MARK)}", staged.name)
    if found is None:
        return True  # an older hdreg's name: no writer of this version
    pid = int(found.group(1))
    if pid == os.getpid() or os.name == "nt":  # (os.kill would end the process there)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is either its old content or the complete
    new one, whenever the process dies: staged under a name of its own in the same folder (pid
    and a random part: two writers never share one), flushed to disk, then renamed over ``path``
    (:func:`hdreg.files.atomic_write`)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
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

    Staged files of interrupted saves beside it (:func:`staged_checkpoints`) whose process is
    gone are removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: no such checkpoint file")
    for stale in staged_checkpoints(path):
        if _writer_gone(stale):
            log.info("removing %s, left by a save that was interrupted", stale)
            stale.unlink(missing_ok=True)
    ckpt = load_torch_file(path, f"{option}={path}", mmap=True)
    missing = [k for k in RESUME_KEYS if k not in ckpt] if isinstance(ckpt, dict) else []
    if not isinstance(ckpt, dict) or missing:
        what = f" (no {', '.join(repr(k) for k in missing)})" if missing else ""
        raise ValueError(
            f"{option}={path} is not a training checkpoint written by train.py{what}: resume "
            "from the run's checkpoints/last.ckpt"
        )
    return path


def check_same_model(path: str | Path, module: torch.nn.Module, option: str = "ckpt_path") -> None:
    """``ValueError`` naming ``option`` and the file when the checkpoint's weights do not fit
    ``module`` (another network, size or head): names and shapes of every tensor must match."""
    path = Path(path).expanduser()
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if theirs == ours:
        return
    problems = []
    if absent := sorted(set(ours) - set(theirs)):
        problems.append(f"{len(absent)} tensor(s) missing, e.g. {absent[0]}")
    if extra := sorted(set(theirs) - set(ours)):
        problems.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    if reshaped := sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k]):
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape, e.g. {k} {theirs[k]} vs {ours[k]}")
    saved = ckpt.get("hdreg_model")
    name = saved.get("name") if isinstance(saved, dict) else None
    held = f" ({name!r})" if name else ""
    raise ValueError(
        f"{option}={path} holds a different model{held} than the one configured "
        f"({'; '.join(problems)}): resume with the model config it was trained with"
    )
