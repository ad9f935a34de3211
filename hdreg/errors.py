"""User-input errors end in one line, not a traceback: for ``train.py``, ``evaluate.py`` and the
``hdreg`` command.

A missing file, an unreadable image or checkpoint, a bad config value or a run that diverged is
reported as ``<program>: error: <message>`` on stderr with a non-zero exit code. Set
``HDREG_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) to see the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "USER_ERRORS",
    "TrainingDiverged",
    "debug_enabled",
    "program_name",
    "user_error_message",
    "user_errors",
]


class TrainingDiverged(RuntimeError):
    """The training loss stayed non-finite (NaN or inf) for too many consecutive steps."""


#: what counts as a user-input error: the message names the file, option or value at fault
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    ValueError,
    TrainingDiverged,
)


def _missing_mandatory_value(exc: BaseException) -> bool:
    """True for OmegaConf's ``MissingMandatoryValue`` (a ``???`` left unset in a config).

    OmegaConf is looked up among the loaded modules rather than imported: a process that never
    loaded it (inference, ``hdreg align``) cannot have raised one, and need not pay its import."""
    errors = sys.modules.get("omegaconf.errors")
    return errors is not None and isinstance(exc, errors.MissingMandatoryValue)


def debug_enabled() -> bool:
    """True when ``HDREG_DEBUG`` or ``HYDRA_FULL_ERROR`` is set to a non-empty, non-zero value."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("HDREG_DEBUG", "HYDRA_FULL_ERROR"))


def _root_user_error(exc: BaseException) -> BaseException | None:
    """``exc`` or the first exception in its cause chain that is a user-input error.

    Hydra's ``instantiate`` wraps a constructor's ``ValueError`` into an
    ``InstantiationException`` whose cause is the original error; the original is the message
    worth showing."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, USER_ERRORS) or _missing_mandatory_value(cur):
            return cur
        cur = cur.__cause__
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a user-input error (``None`` when ``exc`` is not one)."""
    root = _root_user_error(exc)
    if root is None:
        return None
    if _missing_mandatory_value(root):
        key = getattr(root, "full_key", None)
        text = f"missing mandatory value {key}: set it on the command line ({key}=...)"
        return text if key else str(root).splitlines()[0]
    text = " ".join(str(root).split())  # one line, even when the message had several
    return text or type(root).__name__


def program_name(job: str) -> str:
    """How a Hydra job calls itself in error lines: ``train.py`` when run as the script,
    ``hdreg train`` when run as the ``hdreg`` subcommand."""
    script = Path(sys.argv[0]).name if sys.argv else ""
    return script if script.endswith(".py") else f"hdreg {job}"


@contextmanager
def user_errors(program: str, exit_code: int = 2) -> Iterator[None]:
    """Turn a user-input error raised inside the block into one line on stderr and
    ``SystemExit(exit_code)`` (``SystemExit(1)`` for a diverged run); anything else, and
    everything when :func:`debug_enabled`, propagates with its traceback."""
    try:
        yield
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or debug_enabled():
            raise
        print(f"{program}: error: {message}", file=sys.stderr, flush=True)
        code = 1 if isinstance(_root_user_error(exc), TrainingDiverged) else exit_code
        raise SystemExit(code) from None
