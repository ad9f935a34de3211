"""What a file a user names as a model is, read without running code.

:func:`load_torch_file` is ``torch.load(weights_only=True)`` with one-line errors that say what a
file is when it is not a PyTorch file (an image, an ONNX model, a text file, ...), or what it
holds when torch refuses it; :func:`tensors_sha256` and :func:`file_sha256` are the checksums
that :mod:`hdreg.models.checkpoint` records and verifies.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from hdreg.files import file_sha256

__all__ = [
    "MODEL_FILE",
    "file_sha256",
    "load_torch_file",
    "non_pytorch_format",
    "tensors_sha256",
]


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by
    name): what ``hdreg weights export`` records and loading verifies."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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
