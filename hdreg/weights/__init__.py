"""Trained weights that ship inside the package, by name.

Every place that takes a checkpoint path also takes one of these names
(``evaluate.py 'checkpoints=[iterative]'``, ``hdreg align A B --checkpoint iterative``), through
:func:`hdreg.estimators.learned.resolve_checkpoint`.
A shipped file holds the model's construction config and its weights, no optimizer state
(see :func:`export_weights`); ``index.json`` beside it records how it was trained and what it
scored. ``hdreg weights`` lists them; docs/results.md has the commands that made and scored them.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Shipped",
    "check_output_is_not_input",
    "export_weights",
    "shipped",
    "shipped_for_path",
    "shipped_weights",
]

_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Shipped:
    """One shipped model: its name, file, and the record of how it was made and what it scored."""

    name: str
    path: Path
    description: str
    command: str
    data: str
    results: dict[str, Any]
    sha256: str | None = None  # of the file, checked whenever it is loaded


def shipped_weights() -> dict[str, Shipped]:
    """Every shipped model, by name (from ``index.json``; files that are absent are left out)."""
    index = json.loads((_DIR / "index.json").read_text())
    out = {}
    for name, entry in index.items():
        path = _DIR / entry["file"]
        if path.is_file():
            out[name] = Shipped(
                name, path, entry["description"], entry["command"], entry["data"],
                entry.get("results", {}), entry.get("sha256"),
            )  # fmt: skip
    return out


def shipped(name: str) -> Shipped:
    """The shipped model called ``name``; ``KeyError`` naming the available ones otherwise."""
    available = shipped_weights()
    if name not in available:
        raise KeyError(
            f"no shipped weights called {name!r}; available: {', '.join(sorted(available))}"
        )
    return available[name]


def shipped_for_path(path: str | Path) -> Shipped | None:
    """The shipped model whose file ``path`` is (``None`` for any other file)."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    if resolved.parent != _DIR:
        return None
    return next((w for w in shipped_weights().values() if w.path == resolved), None)


def estimator_config(name: str) -> dict[str, Any]:
    """The whole-image estimator settings ``hdreg/configs/estimator/<name>.yaml`` (plain)."""
    path = _DIR.parent / "configs" / "estimator" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown estimator {name!r}: choose one of {', '.join(known)}")
    import yaml

    return dict(yaml.safe_load(path.read_text()))


def _input_file(spec: str | Path) -> Path | None:
    """The file a checkpoint spec names (a path, else a shipped name), if there is one."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    found = shipped_weights().get(str(spec))
    return found.path if found else None


def check_output_is_not_input(
    out: str | Path, source: str | Path, what: str = "checkpoint"
) -> None:
    """``ValueError`` when ``out`` is the very file ``source`` names (a path or a shipped name):
    the same resolved path, or the same file under another name (a link).

    >>> check_output_is_not_input("copy.pt", "iterative")  # another file: nothing to say
    >>> try:
    ...     check_output_is_not_input(shipped("iterative").path, "iterative")
    ... except ValueError:
    ...     print("refused")
    refused
    """
    src = _input_file(source)
    if src is None:
        return
    out = Path(out).expanduser()
    same = out.resolve() == src.resolve()
    if not same and out.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(out, src)
    if same:
        named = "" if str(out) == str(source) else f" ({source}, the same file)"
        raise ValueError(
            f"output {out} is the {what} it is exported from{named}: give another output file "
            f"(writing it would replace the {what})"
        )


def export_weights(
    checkpoint: str | Path,
    out: str | Path,
    estimator: str | None = None,
    *,
    iterations: int | None = None,
    fine_iterations: int | None = None,
) -> Path:
    """Write the weights-only copy of an hdreg checkpoint (its model config, weights and
    ``val_mace_best``; no optimizer, scheduler or loop state), atomically. Returns ``out``.
    ``estimator``: also record the whole-image estimator the file stands for
    (``hdreg/configs/estimator/<estimator>.yaml``, e.g. ``wide``). ``iterations``,
    ``fine_iterations``: the iteration counts an iterative network runs at inference (its
    update is weight-tied, so any count runs; ``None``: as trained), written into the file's
    network config."""
    from hdreg.estimators.learned import load_module, save_weights

    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"{out} is a directory: give the weights file to write, e.g. {out}/w.pt")
    check_output_is_not_input(out, checkpoint)
    module = load_module(checkpoint)
    counts = {"iterations": iterations, "fine_iterations": fine_iterations}
    counts = {k: v for k, v in counts.items() if v is not None}
    if counts:
        net_config = module.hdreg_model.get("net", {})
        for key, value in counts.items():
            if key not in net_config:
                raise ValueError(
                    f"{checkpoint}: --{key.replace('_', '-')} applies to an iterative network; "
                    f"this one is {net_config.get('_target_', 'unknown')}"
                )
            least = 1 if key == "iterations" else int(net_config[key] > 0)
            if isinstance(value, bool) or int(value) != value or value < least:
                raise ValueError(f"{key} must be a whole number >= {least}, got {value!r}")
            net_config[key] = int(value)  # the file's config; its weights are the same
    extra = {"hdreg_estimator": estimator_config(estimator)} if estimator else {}
    if extra:
        from hdreg.models.checkpoint import check_estimator_config

        check_estimator_config(extra["hdreg_estimator"])
    from hdreg.files import atomic_write

    try:
        with atomic_write(out) as tmp:  # staged under a name of its own, then renamed
            save_weights(module, tmp, extra)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot write {out}: {reason}") from None
    return out
