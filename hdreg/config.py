"""The defaults of hdreg live in one place, the Hydra configs in ``hdreg/configs/``; Python code
and the ``hdreg`` command read them from there, never from copies.

The configs are package data: a clone, an editable install and a wheel all carry them, and the
Hydra applications (``hdreg train``, ``hdreg evaluate``, ``train.py``, ``evaluate.py``) find
them on Hydra's package search path (``pkg://hdreg.configs``).

    >>> compose_config("protocol/detone").rho
    32.0
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "VALUE_TYPES",
    "Number",
    "check_overrides",
    "check_values",
    "compose_config",
    "config_dir",
    "method_estimator",
    "method_names",
]


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


# -- the command line of train.py and evaluate.py ------------------------------------------------
@dataclass(frozen=True)
class Number:
    """What a config value must be: an integer (or any number when ``integer`` is false), at
    least ``minimum``; ``null`` too when ``optional``, and the ``words`` (e.g. ``auto``).

    >>> Number(minimum=1).accepts(2.5), Number(integer=False).accepts(2), str(Number(minimum=1))
    (False, True, 'an integer >= 1')
    """

    integer: bool = True
    minimum: float | None = None
    optional: bool = False
    words: tuple[str, ...] = ()

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        return self.minimum is None or value >= self.minimum  # NaN is refused too

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.minimum is not None:
            kind += f" >= {self.minimum:g}"
        return " or ".join([kind, *self.words])


#: the numbers people set on the command line of each application (``train``, ``evaluate``):
#: checked on the composed config before anything is built; a key the config lacks is skipped
VALUE_TYPES: dict[str, dict[str, Number]] = {
    "train": {
        "seed": Number(),
        "trainer.max_steps": Number(optional=True),
        "trainer.max_epochs": Number(optional=True),
        "trainer.log_every_n_steps": Number(minimum=1),
        "data.batch_size": Number(minimum=1),
        "data.steps_per_epoch": Number(minimum=1),
        "data.val_pairs": Number(minimum=0),
        "data.test_pairs": Number(minimum=0),
        "data.eval_batch_size": Number(minimum=1),
        "data.num_workers": Number(minimum=0),
        "data.split_seed": Number(),
        "data.patch_size": Number(minimum=1),
        "data.rho": Number(integer=False, minimum=0),
        "model.optimizer.lr": Number(integer=False, minimum=0),
        "model.optimizer.weight_decay": Number(integer=False, minimum=0),
        "model.net.input_size": Number(minimum=1),
        "model.net.iterations": Number(minimum=1),
        "model.net.fine_iterations": Number(minimum=0),
        "callbacks.nonfinite_loss.patience": Number(minimum=1),
    },
    "evaluate": {
        "batch_size": Number(minimum=1),
        "num_workers": Number(minimum=1, words=("auto",)),
        "benchmark.n": Number(minimum=1),
        "benchmark.seed": Number(),
    },
}


def _as_typed(value: Any) -> str:
    """``value`` as it is written in an override (``null``, ``true``, ``abc``)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_values(cfg: DictConfig, app: str) -> None:
    """``ValueError`` naming the key, its value and what it takes for the first value of ``cfg``
    that :data:`VALUE_TYPES` ``[app]`` refuses (``trainer.max_steps=five: expected an
    integer``). Values still unset (``???``) or whose interpolation fails are left to the code that
    reads them."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    absent = object()
    for key, expected in VALUE_TYPES.get(app, {}).items():
        try:
            value = OmegaConf.select(cfg, key, default=absent, throw_on_missing=False)
        except OmegaConfBaseException:
            continue
        if value is not absent and not expected.accepts(value):
            raise ValueError(f"{key}={_as_typed(value)}: expected {expected}")


def _key_paths(node: Any, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every key path of a plain nested dict, and whether it holds a group of keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, isinstance(value, dict)
            yield from _key_paths(value, path)


def _compose_app(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


def _one_line(text: str) -> str:
    return " ".join(text.split("\nConfig search path")[0].split())


def _unknown_key(config_name: str, given: str, key: str, overrides: Sequence[str]) -> str:
    """The message for an override of a key the config lacks, with the nearest keys."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    try:  # the config without the bad override, for its key names
        cfg = _compose_app(config_name, [o for o in overrides if o != given])
        tree = OmegaConf.to_container(cfg, resolve=False)
    except HydraException:  # another bad override: no suggestions
        tree = {}
    is_group = {
        path: group
        for path, group in _key_paths(tree)
        if key.startswith("hydra.") or not path.startswith("hydra")
    }
    where = parent or f"the {config_name} config"
    if is_group.get(parent) is False:
        return f"{given}: {parent} is a value, not a group of keys; set it with {parent}=..."
    siblings = [p.rpartition(".")[2] for p in is_group if p.rpartition(".")[0] == parent]
    near = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(leaf, siblings)]
    near += [p for p in is_group if p.rpartition(".")[2] == leaf]  # the same name elsewhere
    others = [p for p in is_group if not key.startswith(f"{p}.")]  # not the key's own groups
    near += difflib.get_close_matches(key, others, n=3, cutoff=0.8)
    near = list(dict.fromkeys(near))[:3]
    if near:
        hint = f"; did you mean {' or '.join(near)}?"
    elif siblings:
        hint = f"; its keys are {', '.join(siblings)}"
    else:
        hint = ""
    if not key.startswith("hydra."):  # Hydra's own settings take no new keys
        hint += f" (+{given.lstrip('+~')} adds a new key)"
    return f"{given}: {where} has no key {leaf!r}{hint}"


def check_overrides(
    config_name: str, overrides: Sequence[str], *, multirun: bool = False
) -> DictConfig | None:
    """Compose ``hdreg/configs/<config_name>.yaml`` with a command line's ``overrides`` as its
    Hydra application will, and :func:`check_values` it; Hydra's errors become one
    ``ValueError`` line naming the override and what is valid: a key the config lacks (with the
    nearest keys), a config option that does not exist (with the options), an override that
    does not parse. With ``multirun``, the first job of the sweep is checked (``None`` when the
    sweep has no first job: a sweeper's own syntax)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        lines = [line for line in str(exc).splitlines() if not line.startswith("See https")]
        detail = lines[-1].split(" expecting ")[0] if lines else "not key=value"
        raise ValueError(
            f"cannot parse the override {exc.override!r}: {detail}; write key=value "
            "(https://hydra.cc/docs/advanced/override_grammar/basic/)"
        ) from exc
    job = []
    for o in parsed:
        if multirun and o.is_sweep_override():
            if not o.is_discrete_sweep():
                return None
            job.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            job.append(o.input_line)
    try:
        cfg = _compose_app(config_name, job)
    except MissingConfigException as exc:
        group, _, name = (exc.missing_cfg_file or "").rpartition("/")
        given = next((o.input_line for o in parsed if o.key_or_group == group), None)
        options = list(exc.options or [])
        if not options or given is None:
            raise ValueError(_one_line(str(exc))) from exc
        near = difflib.get_close_matches(name, options, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        where = "" if group.startswith("hydra") else f" (hdreg/configs/{group}/)"
        raise ValueError(
            f"{given}: there is no {group} config {name!r}{hint}; the options are "
            f"{', '.join(options)}{where}"
        ) from exc
    except ConfigCompositionException as exc:
        key = getattr(exc.__cause__, "full_key", None)
        if key and isinstance(exc.__cause__, ConfigAttributeError | ConfigKeyError):
            given = next(  # the override of that key, or of a key below it
                (
                    o
                    for o, p in zip(job, parsed, strict=True)
                    if f"{p.key_or_group}.".startswith(f"{key}.")
                ),
                None,
            )
            if given is not None:
                raise ValueError(_unknown_key(config_name, given, key, job)) from exc
        raise ValueError(_one_line(str(exc))) from exc
    check_values(cfg, config_name)
    return cfg
