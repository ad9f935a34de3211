"""The defaults of hdreg live in one place, the Hydra configs in ``hdreg/configs/``; Python code
and the ``hdreg`` command read them from there, never from copies.

The configs are package data: a clone, an editable install and a wheel all carry them, and the
Hydra applications (``hdreg train``, ``hdreg evaluate``, ``train.py``, ``evaluate.py``) find
them on Hydra's package search path (``pkg://hdreg.configs``).

    >>> compose_config("protocol/detone").rho
    32.0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["compose_config", "config_dir", "method_estimator", "method_names"]


def config_dir() -> Path:
    """The ``configs/`` folder inside the imported ``hdreg`` package."""
    path = Path(__file__).resolve().parent / "configs"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"hdreg's configs (the source of every default) are not at {path}: the installation "
            "is incomplete; reinstall hdreg"
        )
    return path


def method_names() -> list[str]:
    """Every method name: the configs of ``hdreg/configs/method/`` (the one registry that
    ``train.py``, ``evaluate.py``, ``hdreg align`` and :func:`hdreg.estimate` read)."""
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``hdreg/configs/<name>.yaml`` (with its defaults list) and return its content, e.g.
    ``compose_config("method/sift")`` or ``compose_config("benchmark/synthetic")``.

    Inside a running Hydra application (``train.py``, ``evaluate.py``), whose search path is this
    same folder, the application's Hydra is used; elsewhere a temporary one.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    *group, _ = name.split("/")
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides))
    for key in group:  # a config of group g/h is composed under the keys g.h
        cfg = cfg[key]
    return cfg


def method_estimator(method: str, /, **overrides: Any):
    """The estimator of ``hdreg/configs/method/<method>.yaml``, with ``overrides`` replacing
    parameters (``method_estimator("sift", ratio=0.8, name="sift-0.8")``). Errors of the
    estimator's own argument checks (``ValueError``) come through as they are."""
    known = method_names()
    if method not in known:
        raise ValueError(f"unknown method {method!r}: valid methods are {', '.join(known)}")
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    config = compose_config(f"method/{method}")
    params: dict[str, Any] = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    cls = get_class(params.pop("_target_"))
    params.update(overrides)
    return cls(**params)
