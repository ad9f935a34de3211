"""Trained weights that ship inside the package, by name.

Every place that takes a checkpoint path also takes one of these names
(``evaluate.py 'checkpoints=[iterative]'``, ``hdreg align A B --checkpoint iterative``), through
:func:`hdreg.models.checkpoint.resolve_checkpoint`.
A shipped file holds the model's construction config and its weights, no optimizer state
(see :func:`hdreg.models.checkpoint.export_weights`); ``index.json`` beside it records how it
was trained and what it scored. ``hdreg weights`` lists them; docs/results.md has the commands
that made and scored them. This package is data and a lookup: it imports nothing from hdreg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Shipped", "estimator_config", "shipped", "shipped_for_path", "shipped_weights"]

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
    part_of: str | None = None  # a network that is a part of another model's estimator only


def shipped_weights() -> dict[str, Shipped]:
    """Every shipped model, by name (from ``index.json``; files that are absent are left out)."""
    index = json.loads((_DIR / "index.json").read_text())
    out = {}
    for name, entry in index.items():
        path = _DIR / entry["file"]
        if path.is_file():
            out[name] = Shipped(
                name, path, entry["description"], entry["command"], entry["data"],
                entry.get("results", {}), entry.get("sha256"), entry.get("part_of"),
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
