"""Model files in one place: reading, checking, saving and exporting hdreg checkpoints,
without running code: an allow-list of classes, plain arguments.

A checkpoint (``train.py``'s ``.ckpt`` or a weights-only ``.pt``) carries its model's config
under ``"hdreg_model"``: the LightningModule's class, its ``net`` and ``loss`` (each a class
and its keyword arguments) and a few plain settings. This module is the only reader of that
config. It never hands it to Hydra: every class must be one of the names in :data:`NETS`,
:data:`LOSSES` or :data:`MODULES` (looked up in those tables, never imported by a name taken
from the file), and every argument must be a plain value (``None``, bool, int, float, str, or a
list of those). Anything else — an unknown class, a nested ``_target_``, ``_partial_`` or
``_args_``, a mapping where a value belongs — is refused with a ``ValueError`` naming the file
before any object is built. ``torch.load(weights_only=True)`` refuses pickled code in the file
itself (:mod:`hdreg.models.file_format`).

:func:`load_net` builds the plain network (no PyTorch Lightning, no Hydra: fast to import);
:func:`load_module` the LightningModule around it (for training and export);
:func:`save_weights` and :func:`export_weights` write the weights-only files both read.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hdreg.device import resolve_device
from hdreg.files import atomic_write
from hdreg.models.file_format import (
    MODEL_FILE,
    file_sha256,
    load_torch_file,
    non_pytorch_format,
    tensors_sha256,
)
from hdreg.weights import estimator_config, shipped_for_path, shipped_weights

__all__ = [
    "ESTIMATORS",
    "LOSSES",
    "MODULES",
    "NETS",
    "Checkpoint",
    "build_net",
    "check_estimator_config",
    "check_model_config",
    "check_output_is_not_input",
    "export_weights",
    "is_network_only",
    "load_module",
    "load_net",
    "load_torch_file",
    "non_pytorch_format",
    "read_checkpoint",
    "register",
    "require_pair_net",
    "resolve_checkpoint",
    "save_net",
    "save_weights",
    "tensors_sha256",
]

#: networks a checkpoint may name: ``_target_`` → (module, class)
NETS: dict[str, tuple[str, str]] = {
    "hdreg.models.homographynet.HomographyNet": ("hdreg.models.homographynet", "HomographyNet"),
    "hdreg.models.iterative.IterativeHomographyNet": (
        "hdreg.models.iterative",
        "IterativeHomographyNet",
    ),
    "hdreg.models.similarity.SimilarityNet": ("hdreg.models.similarity", "SimilarityNet"),
    "hdreg.models.dense_matcher.DenseMatcher": ("hdreg.models.dense_matcher", "DenseMatcher"),
}
#: losses a checkpoint may name
LOSSES: dict[str, tuple[str, str]] = {
    f"hdreg.models.losses.{name}": ("hdreg.models.losses", name)
    for name in (
        "OffsetMSE",
        "BinCrossEntropy",
        "PhotometricL1",
        "SequenceL1",
        "SequencePhotometric",
    )
}
LOSSES["hdreg.models.similarity.SimilarityCrossEntropy"] = (
    "hdreg.models.similarity",
    "SimilarityCrossEntropy",
)
#: LightningModules a checkpoint may name
MODULES: dict[str, tuple[str, str]] = {
    "hdreg.models.supervised.SupervisedHomography": (
        "hdreg.models.supervised",
        "SupervisedHomography",
    ),
    "hdreg.models.unsupervised.UnsupervisedHomography": (
        "hdreg.models.unsupervised",
        "UnsupervisedHomography",
    ),
}

#: whole-image estimators a checkpoint may wrap its network in (``"hdreg_estimator"``)
ESTIMATORS: dict[str, tuple[str, str]] = {
    "coarse_to_fine": ("hdreg.estimators.coarse_to_fine", "CoarseToFineEstimator"),
}

_PLAIN = (type(None), bool, int, float, str)


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value)


def _check_part(node: Any, where: str, allowed: dict[str, tuple[str, str]]) -> None:
    """A ``{_target_: <allowed>, arg: plain, ...}`` mapping, or ``ValueError``."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be a mapping with a _target_, got {type(node).__name__}")
    target = node["_target_"]
    if target not in allowed:
        raise ValueError(
            f"{where} names {target!r}, which is not one of hdreg's classes "
            f"({', '.join(sorted(allowed))})"
        )
    for key, value in node.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise ValueError(f"{where} has the key {key!r}: only plain keyword arguments allowed")
        if not _is_plain(value):
            raise ValueError(
                f"{where}.{key} must be a plain value (number, string, bool, None or a list of "
                f"those), got {type(value).__name__}"
            )


def check_model_config(config: Any) -> None:
    """Check an ``hdreg_model`` config against the allow-list; ``ValueError`` saying what is
    wrong (nothing is imported or built here)."""
    if not isinstance(config, dict):
        raise ValueError(f"'hdreg_model' must be a mapping, got {type(config).__name__}")
    if is_network_only(config):  # a network trained outside a LightningModule (save_net)
        unknown = sorted(set(config) - {"name", "net"})
        if unknown or not isinstance(config.get("name", ""), str):
            raise ValueError(
                f"hdreg_model of a network-only file has only 'name' and 'net', got {unknown}"
            )
        _check_part(config.get("net"), "hdreg_model.net", NETS)
        return
    top = {k: v for k, v in config.items() if k not in ("net", "loss")}
    _check_part(top, "hdreg_model", MODULES)
    _check_part(config.get("net"), "hdreg_model.net", NETS)
    _check_part(config.get("loss"), "hdreg_model.loss", LOSSES)


def is_network_only(config: dict[str, Any]) -> bool:
    """Whether an ``hdreg_model`` config is a network's alone (``{"name", "net"}``, written by
    :func:`save_net`), with no LightningModule or loss to rebuild."""
    return "_target_" not in config and "loss" not in config


def check_estimator_config(config: Any) -> None:
    """Check a checkpoint's ``hdreg_estimator``: ``{"kind": <ESTIMATORS>, "refine": <shipped
    name or None>, arg: plain, ...}``; ``ValueError`` saying what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"'hdreg_estimator' must be a mapping, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in ESTIMATORS:
        raise ValueError(
            f"hdreg_estimator.kind is {kind!r}, not one of {', '.join(sorted(ESTIMATORS))}"
        )
    for key, value in config.items():
        if not isinstance(key, str) or key.startswith("_") or not _is_plain(value):
            raise ValueError(f"hdreg_estimator.{key} must be a plain keyword argument")
    shipped_keys = (("refine", ()), ("dense", ()), ("proposal", ("global-encoder", "scale-search")))
    for key, also in shipped_keys:
        name = config.get(key)
        if name is not None and name not in shipped_weights() and name not in also:
            raise ValueError(
                f"hdreg_estimator.{key} names {name!r}, which is not "
                + " or ".join(["a shipped model", *(repr(a) for a in also)])
            )


def register(kind: str, cls: type) -> None:
    """Allow checkpoints to name a class of your own (``kind``: ``"net"``, ``"loss"`` or
    ``"module"``), e.g. ``register("net", MyNet)`` before loading files that use ``MyNet``.
    Registration is done by code you run; a file can never add to the allow-list."""
    tables = {"net": NETS, "loss": LOSSES, "module": MODULES}
    if kind not in tables or not isinstance(cls, type):
        raise ValueError(f"register(kind, cls): kind is one of {', '.join(tables)}, cls a class")
    tables[kind][f"{cls.__module__}.{cls.__qualname__}"] = (cls.__module__, cls.__qualname__)


def _class(target: str, table: dict[str, tuple[str, str]]) -> type:
    module, name = table[target]
    return getattr(importlib.import_module(module), name)


def _kwargs(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "_target_"}


def build_net(config: dict[str, Any]) -> nn.Module:
    """The network of a checked ``hdreg_model`` config (plain ``nn.Module``, random weights)."""
    check_model_config(config)
    return _class(config["net"]["_target_"], NETS)(**_kwargs(config["net"]))


def build_module_from_config(config: dict[str, Any]) -> Any:
    """The LightningModule of a checked ``hdreg_model`` config (no optimizer; random weights),
    with ``hdreg_model`` recorded on it."""
    check_model_config(config)
    net = build_net(config)
    loss = _class(config["loss"]["_target_"], LOSSES)(**_kwargs(config["loss"]))
    top = {k: v for k, v in config.items() if k not in ("_target_", "net", "loss")}
    module = _class(config["_target_"], MODULES)(net=net, loss=loss, **top)
    module.hdreg_model = dict(config)
    return module


def resolve_checkpoint(spec: str | Path) -> Path:
    """The checkpoint file a user's ``spec`` names: an existing file at that path (``~``
    expanded), else the weights shipped with hdreg under that name (``hdreg weights``), else
    the path itself (the loader then reports that it does not exist). A directory is never a
    checkpoint, so a folder named like a shipped model does not hide it."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    found = shipped_weights().get(str(spec))
    return found.path if found else path


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint: its file, model config (allow-listed), weights and metadata."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config.get("name", "model"))


def read_checkpoint(spec: str | Path) -> Checkpoint:
    """Read and check an hdreg checkpoint (a path, or the name of shipped weights).

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a folder, and
    ``ValueError`` naming the file for one that is not a readable hdreg checkpoint: not a
    PyTorch file (:func:`load_torch_file` says what it is), pickled objects (refused by
    ``weights_only``), a model config outside the allow-list, non-finite weights, or weights
    whose checksum (shipped files: ``index.json``; exported files: ``tensors_sha256``) does not
    match. Nothing in the file is ever executed or resolved to code.
    """
    path = resolve_checkpoint(spec)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder: expected {MODEL_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    known = shipped_for_path(path)
    if known is not None and known.sha256 and file_sha256(path) != known.sha256:
        raise ValueError(
            f"{path}: the shipped weights file is corrupt (its SHA-256 differs from the one in "
            "index.json); reinstall hdreg"
        )
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hdreg_model" not in ckpt:
        older = isinstance(ckpt, dict) and "hdreg_module" in ckpt
        raise ValueError(
            f"{path} is not {MODEL_FILE}: it has no 'hdreg_model' config and 'state_dict' "
            "weights"
            + (" (it was written by an older hdreg; retrain it with train.py)" if older else "")
        )
    try:
        check_model_config(ckpt["hdreg_model"])
    except ValueError as exc:  # loading a file must never build or run anything else
        raise ValueError(f"{path}: refused, {exc}") from None
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: 'state_dict' must map names to tensors")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: the weight {key} has non-finite values (corrupt file)")
    expected = ckpt.get("tensors_sha256")
    if expected is not None and tensors_sha256(state) != expected:
        raise ValueError(f"{path}: the weights do not match their recorded checksum (corrupt file)")
    if "hdreg_estimator" in ckpt:
        try:
            check_estimator_config(ckpt["hdreg_estimator"])
        except ValueError as exc:
            raise ValueError(f"{path}: refused, {exc}") from None
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "hdreg_model")}
    return Checkpoint(path, ckpt["hdreg_model"], state, meta)


def _load_state(target: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"the weights in {path} do not fit its model config: {first}") from None


def net_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """The network of a read checkpoint, weights loaded, in eval mode (on the CPU)."""
    net = build_net(ckpt.config)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)}
    _load_state(net, state, ckpt.path)
    net.hdreg_name = ckpt.name  # the model's name in evaluation tables
    return net.eval()


def load_net(spec: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network saved in an hdreg checkpoint (a path or a shipped name), weights loaded,
    in eval mode — without PyTorch Lightning or Hydra.

    >>> net = load_net("iterative")
    >>> out = net(torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128))
    >>> tuple(out["offsets"].shape)
    (2, 4, 2)
    """
    return net_from_checkpoint(read_checkpoint(spec)).to(device)


def require_pair_net(net: nn.Module, spec: str | Path) -> nn.Module:
    """``net`` if it estimates a homography from a pair of patches (it has a ``patch_size``);
    ``ValueError`` for a network that is a part of an estimator (a dense matcher)."""
    if not hasattr(net, "patch_size"):
        raise ValueError(
            f"{spec} holds {type(net).__name__}, a part of a whole-image estimator (e.g. wide's "
            "refinement), not a network that estimates a homography from a pair of patches"
        )
    return net


def load_module(spec: str | Path, device: str | torch.device = "cpu") -> Any:
    """Rebuild the LightningModule saved in an hdreg checkpoint, weights loaded, in eval mode.

    Any file with the model's config under ``"hdreg_model"`` and its weights under
    ``"state_dict"`` is read: a checkpoint written by ``train.py``, or a weights-only file (as
    :func:`save_weights` writes). The config is checked against the allow-list of classes and
    plain arguments before anything is built (reading a file never runs code). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that is
    not such a checkpoint. ``spec`` may also name weights shipped with hdreg (``hdreg weights``).
    """
    device = resolve_device(device)
    ckpt = read_checkpoint(spec)
    if is_network_only(ckpt.config):
        raise ValueError(
            f"{ckpt.path} holds a network only ({ckpt.config['net']['_target_']}), no training "
            "module to rebuild: load it with hdreg.models.checkpoint.load_net"
        )
    module = build_module_from_config(ckpt.config)
    _load_state(module, ckpt.state_dict, ckpt.path)
    best = float(ckpt.meta.get("val_mace_best", math.inf))
    module.on_load_checkpoint({"val_mace_best": best})
    return module.to(device).eval()


def save_weights(module: Any, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the weights-only file :func:`load_module` reads: ``hdreg_model``, ``state_dict``
    and ``val_mace_best`` (no optimizer state; a fraction of a training checkpoint's size)."""
    if module.hdreg_model is None:
        raise ValueError("the module has no hdreg_model config: build it with build_module")
    path = Path(path).expanduser()
    state = module.state_dict()
    checkpoint: dict[str, Any] = {"state_dict": state, "tensors_sha256": tensors_sha256(state)}
    module.on_save_checkpoint(checkpoint)  # adds hdreg_model and val_mace_best
    checkpoint.update(extra or {})
    torch.save(checkpoint, path)
    return path


def save_net(net: nn.Module, net_config: dict[str, Any], path: str | Path, name: str) -> Path:
    """Write a network trained outside a LightningModule as a file :func:`load_net` reads
    (atomically): ``hdreg_model`` ``{"name": name, "net": net_config}`` (``net_config``: its
    allow-listed ``_target_`` and plain constructor arguments), its weights and their checksum.
    """
    config = {"name": name, "net": dict(net_config)}
    check_model_config(config)
    state = {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}
    path = Path(path).expanduser()
    with atomic_write(path) as tmp:
        torch.save({"hdreg_model": config, "state_dict": state,
                    "tensors_sha256": tensors_sha256(state)}, tmp)  # fmt: skip
    return path


def check_output_is_not_input(
    out: str | Path, source: str | Path, what: str = "checkpoint"
) -> None:
    """``ValueError`` when ``out`` is the very file ``source`` names (a path or a shipped name):
    the same resolved path, or the same file under another name (a link).

    >>> from hdreg.weights import shipped
    >>> check_output_is_not_input("copy.pt", "iterative")  # another file: nothing to say
    >>> try:
    ...     check_output_is_not_input(shipped("iterative").path, "iterative")
    ... except ValueError:
    ...     print("refused")
    refused
    """
    src = resolve_checkpoint(source)
    if not src.is_file():
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
        check_estimator_config(extra["hdreg_estimator"])
    try:
        with atomic_write(out) as tmp:  # staged under a name of its own, then renamed
            save_weights(module, tmp, extra)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot write {out}: {reason}") from None
    return out
