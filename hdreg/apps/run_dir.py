"""One run, one folder: ``hdreg train`` and ``hdreg evaluate`` claim their run directory before
Hydra writes into it, so that a folder's ``.hydra/`` config and its results belong to one run.

:class:`RunDirectory` is the Hydra callback that does it (``hydra.callbacks.run_dir`` in
``hdreg/configs/train.yaml`` and ``evaluate.yaml``); :func:`claim_run_dir` is the rule:

* A time-stamped folder (the default ``outputs/<task>/<time>``) is always a new one: when runs
  started in the same second ask for the same name, each after the first gets ``<time>_2``,
  ``<time>_3``, … (a folder is claimed by creating it with ``os.mkdir``, which one process wins).
* Any other folder (``hydra.run.dir=DIR``) is refused, in one line, while another run uses it
  (its :data:`LOCK_FILE`) or when it holds an earlier run's results; ``overwrite=true`` lets an
  evaluation replace an earlier evaluation's report (removed before the new run starts), and a
  training resumed from a checkpoint inside the folder (``ckpt_path=DIR/checkpoints/last.ckpt``)
  continues there.
* :data:`LOCK_FILE` (created with ``O_EXCL``) marks the run in progress; it is removed when the run
  ends. One left by a killed run (its process is gone) is taken over.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

__all__ = [
    "LOCK_FILE",
    "TRAINING_OUTPUTS",
    "RunDirectory",
    "claim_run_dir",
    "earlier_results",
    "release_run_dirs",
]

#: marks a run in progress in its folder: the process id and host of the run, as JSON
LOCK_FILE = ".hdreg-run.lock"
#: the folders a training fills
TRAINING_OUTPUTS = ("checkpoints", "tensorboard", "test")
#: a lock that cannot be read yet is taken for a run starting now, for this many seconds
_UNREADABLE_LOCK_GRACE_S = 60.0
#: environment variables that number the processes of one distributed run (Lightning, torchrun,
#: SLURM): only the first process claims the folder; the others write into the one it claimed
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")

_held: set[Path] = set()


def _option(folder: Path) -> str:
    return f"hydra.run.dir={folder}"


def _blocking_file(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists, if it is not a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _make_folder(folder: Path, named: Path | None = None) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)`` with one-line errors naming the run folder
    (``named``, default ``folder``)."""
    named = named or folder
    if (blocker := _blocking_file(folder)) is not None:
        if blocker == named:
            raise NotADirectoryError(f"{_option(named)} is a file, not a folder")
        raise NotADirectoryError(f"{_option(named)}: cannot create the folder: {blocker} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{_option(named)}: cannot create the folder: {exc.strerror or exc}"
        ) from None


def _new_folder(base: Path) -> Path:
    """``base``, or ``base_2``, ``base_3``, …: the first that this process creates itself."""
    _make_folder(base.parent, named=base)
    for i in range(1, 10_000):
        candidate = base if i == 1 else base.with_name(f"{base.name}_{i}")
        try:
            candidate.mkdir()  # atomic: of the runs asking for this name, one creates it
        except FileExistsError:
            continue
        except OSError as exc:
            raise ValueError(
                f"{_option(base)}: cannot create the folder: {exc.strerror or exc}"
            ) from None
        return candidate
    raise ValueError(f"{_option(base)}: 9999 runs already took this name; choose another folder")


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock_holder(lock: Path) -> dict[str, Any] | None:
    """The lock's ``{"pid", "host"}``, or ``None`` when it cannot be read (yet)."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    return holder


def _stale(lock: Path) -> bool:
    """True when the run that wrote ``lock`` has ended without removing it: its process is gone
    (same host), or it is this process (a run that ended before this one started)."""
    holder = _lock_holder(lock)
    if holder is None:
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
        return False
    if holder.get("host") != socket.gethostname():
        return False  # its process cannot be looked up from here
    return holder["pid"] == os.getpid() or not _process_alive(holder["pid"])


def _in_use_message(folder: Path, lock: Path) -> str:
    holder = _lock_holder(lock) or {}
    who = f"process {holder['pid']} on {holder.get('host')}" if "pid" in holder else "a run"
    return (
        f"{_option(folder)} is in use by another run ({who}, {lock.name}): choose another "
        f"hydra.run.dir (or, if no run is using the folder, delete {lock})"
    )


def _lock(folder: Path) -> None:
    """Create ``folder/LOCK_FILE`` for this process; ``ValueError`` when another run holds it."""
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not _stale(lock):
                raise ValueError(_in_use_message(folder, lock)) from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        except OSError as exc:
            raise ValueError(
                f"{_option(folder)}: cannot write into the folder: {exc.strerror or exc}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        if not _held:
            atexit.register(release_run_dirs)
        _held.add(lock)
        return
    raise ValueError(_in_use_message(folder, lock))


def _release(lock: Path) -> None:
    _held.discard(lock)
    holder = _lock_holder(lock)
    if holder is not None and holder["pid"] == os.getpid():
        with contextlib.suppress(OSError):
            lock.unlink()


def release_run_dirs() -> None:
    """Remove the locks of the run directories this process claimed (its runs have ended)."""
    for lock in list(_held):
        _release(lock)


def _nonempty_folder(path: Path) -> bool:
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return True  # unreadable: not ours to reuse


def earlier_results(folder: Path) -> tuple[list[str], list[str]]:
    """What earlier runs left in ``folder``: ``(evaluation files, non-empty training folders)``."""
    from hdreg.evaluation.report import PLOT_FILE, TABLE_FILE  # (not at start-up: it needs torch)

    # what an evaluation writes (docs/conventions.md, "Evaluation outputs")
    names = (TABLE_FILE, "results.csv", "pairs.csv", "results.json", PLOT_FILE)
    report = [name for name in names if (folder / name).exists()]
    training = [name for name in TRAINING_OUTPUTS if _nonempty_folder(folder / name)]
    return report, training


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(folder.resolve())


def _check_earlier_run(
    folder: Path, task: str, *, resume_from: str | Path | None, overwrite: bool
) -> None:
    """Refuse ``folder`` when it holds an earlier run's results, except for an evaluation with
    ``overwrite`` (the earlier report is removed) or a training resumed from inside it."""
    report, training = earlier_results(folder)
    if not report and not training:
        return
    if task == "train" and not report and resume_from and _inside(resume_from, folder):
        return  # the same training, continued from its own checkpoint
    if task == "evaluate" and overwrite and not training:
        for name in report:
            (folder / name).unlink(missing_ok=True)
        return
    last = folder / "checkpoints" / "last.ckpt"
    if training and task == "train" and last.is_file():
        hint = f", or continue that run with ckpt_path={last}"
    elif not training and task == "evaluate":
        hint = ", or add overwrite=true to replace its results"
    else:
        hint = ""
    kind = "a training run" if training else "an evaluation"
    held = ", ".join([f"{name}/" for name in training] + report)
    raise ValueError(
        f"{_option(folder)} holds the results of {kind} ({held}): choose another "
        f"hydra.run.dir{hint}"
    )


def claim_run_dir(
    folder: str | Path,
    task: str,
    *,
    new: bool = False,
    resume_from: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Claim a run directory for this process and return it (created, locked).

    ``new``: the folder must be one no other run has used: ``folder`` itself if this process
    creates it, else the first free ``folder_2``, ``folder_3``, …. Otherwise ``folder`` (created
    if needed) is refused while another run holds its :data:`LOCK_FILE` or when it holds an
    earlier run's results, unless ``task`` is ``"evaluate"`` with ``overwrite`` (an earlier
    evaluation's report is removed) or ``"train"`` resumed from a checkpoint in it
    (``resume_from``). Errors are one line naming ``hydra.run.dir``.
    """
    folder = Path(folder)
    if new:
        folder = _new_folder(folder)
    else:
        _make_folder(folder)
    _lock(folder)
    try:
        if not new:
            _check_earlier_run(folder, task, resume_from=resume_from, overwrite=overwrite)
    except BaseException:
        _release(folder / LOCK_FILE)
        raise
    return folder


def _secondary_process(environ: Iterable[tuple[str, str]] | None = None) -> bool:
    """True in a process of a distributed run other than the first (its rank is not 0)."""
    env = dict(environ if environ is not None else os.environ.items())
    return any(env.get(name, "0") not in ("", "0") for name in _RANK_VARIABLES)


def _time_stamped(run_config: Any) -> bool:
    """True when ``hydra.run.dir`` is named by its start time (``${now:...}``): a new folder
    for each run is meant."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(run_config, resolve=False).get("dir", "")
    return "${now:" in str(raw)


class RunDirectory(Callback):
    """Hydra callback: claims ``hydra.run.dir`` (:func:`claim_run_dir`) when a run starts,
    before Hydra writes ``.hydra/`` there, and releases it when the job ends (or the process
    exits). ``task``: ``"train"`` or ``"evaluate"`` (what may reuse a folder, how errors are
    named)."""

    def __init__(self, task: str) -> None:
        self.task = task

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if _secondary_process():
            return  # the first process of this distributed run claimed the folder
        from omegaconf import open_dict, read_write

        from hdreg.errors import program_name, user_errors

        requested = Path(str(config.hydra.run.dir))
        with user_errors(program_name(self.task)):
            folder = claim_run_dir(
                requested,
                self.task,
                new=_time_stamped(config.hydra.run),
                resume_from=config.get("ckpt_path"),
                overwrite=bool(config.get("overwrite", False)),
            )
        if folder != requested:
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(folder)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        release_run_dirs()
