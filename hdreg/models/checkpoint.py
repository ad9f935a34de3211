"""Reading hdreg checkpoints without running code: an allow-list of classes, plain arguments.

A checkpoint (``train.py``'s ``.ckpt`` or a weights-only ``.pt``) carries its model's config
under ``"hdreg_model"``: the LightningModule's class, its ``net`` and ``loss`` (each a class
and its keyword arguments) and a few plain settings. This module is the only reader of that
config. It never hands it to Hydra: every class must be one of the names in :data:`NETS`,
:data:`LOSSES` or :data:`MODULES` (looked up in those tables, never imported by a name taken
from the file), and every argument must be a plain value (``None``, bool, int, float, str, or a
list of those). Anything else — an unknown class, a nested ``_target_``, ``_partial_`` or
``_args_``, a mapping where a value belongs — is refused with a ``ValueError`` naming the file
before any object is built. ``torch.load(weights_only=True)`` refuses pickled code in the file
itself.

:func:`load_net` builds the plain network (no PyTorch Lightning, no Hydra: fast to import);
:func:`load_module` the LightningModule around it (for training and export).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOSSES",
    "MODULES",
    "NETS",
    "Checkpoint",
    "check_model_config",
    "load_net",
    "load_torch_file",
    "non_pytorch_format",
    "read_checkpoint",
    "register",
    "resolve_checkpoint",
    "tensors_sha256",
]

#: networks a checkpoint may name: ``_target_`` → (module, class)
NETS: dict[str, tuple[str, str]] = {
    "hdreg.models.homographynet.HomographyNet": ("hdreg.models.homographynet", "HomographyNet"),
    "hdreg.models.iterative.IterativeHomographyNet": (
        "hdreg.models.iterative",
        "IterativeHomographyNet",
    ),
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
    top = {k: v for k, v in config.items() if k not in ("net", "loss")}
    _check_part(top, "hdreg_model", MODULES)
    _check_part(config.get("net"), "hdreg_model.net", NETS)
    _check_part(config.get("loss"), "hdreg_model.loss", LOSSES)


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
    refine = config.get("refine")
    if refine is not None:
        from hdreg.weights import shipped_weights

        if refine not in shipped_weights():
            raise ValueError(
                f"hdreg_estimator.refine names {refine!r}, which is not a shipped model"
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


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by
    name): what ``hdreg weights export`` records and loading verifies."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(spec: str | Path) -> Path:
    """The checkpoint file a user's ``spec`` names: an existing file at that path (``~``
    expanded), else the weights shipped with hdreg under that name (``hdreg weights``), else
    the path itself (the loader then reports that it does not exist). A directory is never a
    checkpoint, so a folder named like a shipped model does not hide it."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from hdreg.weights import shipped_weights

    found = shipped_weights().get(str(spec))
    return found.path if found else path


#: what a file a user hands us as a model must be
MODEL_FILE = "an hdreg checkpoint or weights file"
#: the pickled magic number that opens a file of ``torch.save(..., _use_new_zipfile_serialization
#: =False)``, after the pickle's protocol header
_LEGACY_TORCH_MAGIC = bytes.fromhex("8a0a6cfc9c46f9206aa85019")
#: an ONNX ModelProto (protobuf): ir_version (field 1), then one of the fields 2-8
_ONNX_HEAD = re.compile(rb"\x08[\x01-\x7f][\x12\x1a\x22\x28\x32:B]")
#: leading bytes of formats people hand us by mistake
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF-", "a PDF document"),
)


def _zip_format(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None  # a damaged archive: torch.load says what is wrong with it
    if any(n.endswith("constants.pkl") for n in names):
        return "a TorchScript archive, written by torch.jit.save"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return None
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive"
    return "a zip archive"


def _text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a character cut at the end of the bytes read
    return True


def non_pytorch_format(path: str | Path) -> str | None:
    """What the file at ``path`` is when it is not a file ``torch.load`` reads (a zip archive
    with ``data.pkl``, or the older pickle format): ``"a PNG image"``, ``"an ONNX model"``,
    ``"a text file"``, ``"an empty file"``, ... or ``"not a PyTorch file"``; ``None`` for a
    PyTorch file. Only the first bytes (and a zip archive's list of names) are read.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "model.ckpt").write_text("hello")
    ...     non_pytorch_format(Path(d) / "model.ckpt")
    'a text file'
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)
    if head.startswith(b"\x80") and _LEGACY_TORCH_MAGIC in head[:32]:
        return None
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if re.match(rb"P[1-7]\s", head):
        return "a PNM image (PBM/PGM/PPM)"
    if head[:2] == b"BM" and int.from_bytes(head[2:6], "little") == path.stat().st_size:
        return "a BMP image"
    if path.suffix.lower() == ".onnx" or _ONNX_HEAD.match(head):
        return "an ONNX model"
    if head.startswith(b"\x80"):
        return "a Python pickle, not a PyTorch file"
    if _text(head):
        return "a text file"
    return "not a PyTorch file"


def _refused_content(exc: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused to unpickle in a file it could parse
    (``None`` when it could not parse the file). Torch's own message advises to retry with
    ``weights_only=False``, which would run whatever code the file holds: it is never shown."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"pickled Python objects ({found.group(1)})"
    if "weights_only" in text or "WeightsUnpickler" in text:
        return "pickled data other than tensors and plain values"
    return None


def load_torch_file(path: str | Path, label: str | None = None, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, for a file a user named as a model.

    Anything else is refused with a one-line ``ValueError`` naming the file (``label``, default
    the path) and saying what it is: an empty file, another format (an image, an ONNX model, a
    text file, ...), a corrupt or truncated PyTorch file, or one that holds pickled objects.
    ``mmap`` maps the tensors of a zip-format file instead of reading them.
    """
    path = Path(path)
    label = label or str(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{label} is an empty file (0 bytes), not {MODEL_FILE}")
    kind = non_pytorch_format(path)
    if kind is not None:
        raise ValueError(f"{label} is not {MODEL_FILE} (it is {kind})")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # the older format cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as exc:  # whatever torch fails on, the file is at fault, not the program
        refused = _refused_content(exc)
        if refused:
            raise ValueError(
                f"{label} is not {MODEL_FILE}: it holds {refused}, which hdreg never loads"
            ) from exc
        text = str(exc).strip()
        first = re.split(r"(?<=\.)\s", text.splitlines()[0])[0] if text else type(exc).__name__
        raise ValueError(
            f"{label} is a corrupt or truncated PyTorch file ({size} bytes): {first.rstrip('.')}"
        ) from exc


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
    from hdreg.weights import shipped_for_path

    shipped = shipped_for_path(path)
    if shipped is not None and shipped.sha256 and file_sha256(path) != shipped.sha256:
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


def load_module_checked(spec: str | Path, device: str | torch.device = "cpu") -> Any:
    """The LightningModule saved in an hdreg checkpoint, weights loaded, in eval mode."""
    ckpt = read_checkpoint(spec)
    module = build_module_from_config(ckpt.config)
    _load_state(module, ckpt.state_dict, ckpt.path)
    best = float(ckpt.meta.get("val_mace_best", math.inf))
    module.on_load_checkpoint({"val_mace_best": best})
    return module.to(device).eval()
