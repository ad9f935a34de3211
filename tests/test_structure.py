"""The package's import structure: the layers contract of ``pyproject.toml`` (``lint-imports``)
holds, and it covers every module of hdreg (docs/contributing.md)."""

from __future__ import annotations

import pkgutil
import re

import hdreg

from .conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter (the dev extra) depends on tomli there
    import tomli as tomllib


def layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_the_layers_contract_is_kept(capsys):
    """Every import runs downwards (apps → ... → errors / config); a broken contract lists the
    imports that break it, with the line of each."""
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    report = out[out.find("Broken contracts") :] if "Broken contracts" in out else out
    assert code == 0, (
        f"imports that break the layers (fix them, see docs/contributing.md):\n{report}"
    )


def test_every_module_of_hdreg_is_in_a_layer():
    """A new module outside the contract would escape the check: it must be placed in a layer."""
    named = {m for layer in layers() for m in re.findall(r"hdreg\.\w+", layer)}
    modules = {f"hdreg.{m.name}" for m in pkgutil.iter_modules(hdreg.__path__)}
    assert sorted(modules - named) == [], "add these to a layer in pyproject.toml"
    assert sorted(named - modules) == [], "these layers name no module of hdreg"
