"""``@hydra_app("train")``: ``@hydra.main`` on hdreg's configs (``pkg://hdreg.configs``), with the
command line checked before Hydra runs.

A bad override (a key or config option that does not exist, a value of the wrong type, one that
does not parse) ends in one ``<program>: error:`` line and exit code 2, before Hydra creates a
run folder (:func:`hdreg.config.check_overrides`); Hydra's own flags (``--help``, ``--cfg``, ...)
are left to Hydra. The composed config's values are checked again in every job
(:func:`hdreg.config.check_values`), so sweeps and configs passed in by code are covered too.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from hdreg.config import check_overrides, check_values
from hdreg.errors import program_name, user_errors

__all__ = ["check_command_line", "hydra_app"]

#: Hydra's flags that run the application (every other flag is for Hydra alone to handle)
_RUN_FLAGS = {"-r", "--run"}
_MULTIRUN_FLAGS = {"-m", "--multirun"}


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Check ``argv`` (Hydra overrides and flags) against ``hdreg/configs/<config_name>.yaml``;
    a bad override exits with one error line (``SystemExit(2)``)."""
    from hydra.core.global_hydra import GlobalHydra

    flags = {a for a in argv if a.startswith("-")}
    if flags - _RUN_FLAGS - _MULTIRUN_FLAGS or GlobalHydra.instance().is_initialized():
        return
    overrides = [a for a in argv if not a.startswith("-")]
    with user_errors(program_name(config_name)):  # HDREG_DEBUG=1: the traceback instead
        check_overrides(config_name, overrides, multirun=bool(flags & _MULTIRUN_FLAGS))


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """Decorate the job of the application configured by ``hdreg/configs/<config_name>.yaml``
    (also its name in error lines: ``hdreg train``, ``train.py``)."""

    def decorate(job: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        @functools.wraps(job)
        def checked_job(cfg: DictConfig) -> Any:
            with user_errors(program_name(config_name)):
                check_values(cfg, config_name)
            return job(cfg)

        run = hydra.main(
            version_base="1.3", config_path="pkg://hdreg.configs", config_name=config_name
        )(checked_job)

        @functools.wraps(job)
        def main(cfg: DictConfig | None = None) -> Any:
            if cfg is None:  # from the command line, not from code with a composed config
                check_command_line(config_name, sys.argv[1:])
            return run(cfg)

        return main

    return decorate
