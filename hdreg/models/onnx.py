"""ONNX export of hdreg's networks (``hdreg export onnx NAME_OR_PATH OUT.onnx``; the network
comes from :func:`hdreg.models.checkpoint.load_net`).

The exported graph takes ``patch_a`` and ``patch_b``, ``(B, 1, P, P)`` float32 in [0, 1] with
``P`` the network's ``patch_size`` and a dynamic batch axis ``B``, and returns ``offsets
(B, 4, 2)``: where patch B's corners lie in patch A, minus the corners, in pixels (the four-point
label of docs/conventions.md; ``H_a_from_b = DLT(corners, corners + offsets)``).

ONNX has no matrix solve or inverse, so while exporting the iterative network computes its DLT
in closed form (:func:`hdreg.geometry.four_point_to_homography_closed`); everywhere else it keeps
the LU solve, so PyTorch's results are unchanged. ``grid_sample`` needs opset 16 or later.
Needs the optional dependencies ``pip install 'hdreg[onnx]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hdreg.files import atomic_write

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "OffsetsOnly",
    "OnnxCheck",
    "check_onnx",
    "export_onnx",
    "max_opset",
    "onnx_offsets",
    "require_onnx",
]

#: the first opset with GridSample (the iterative network's correlation lookup and warp)
MIN_OPSET = 16
DEFAULT_OPSET = 17


def max_opset() -> int:
    """The highest opset the installed torch's TorchScript exporter writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET))


def require_onnx() -> None:
    """Raise ``ModuleNotFoundError`` with the install command unless onnx and onnxruntime
    import."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'hdreg[onnx]' "
            "(or pip install onnx onnxruntime)"
        )


class OffsetsOnly(nn.Module):
    """Wraps a network so that it returns the final ``offsets (B, 4, 2)`` alone (float32)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> Tensor:
        return self.net(patch_a, patch_b)["offsets"].float()


def _check_out(out: Path) -> None:
    """One-line ``ValueError`` unless ``out`` can be written (its folder is created)."""
    if out.is_dir():
        raise ValueError(f"output {out} is a directory; give the .onnx file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder of {out}: {exc.strerror or exc}") from exc
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"cannot write {out}: permission denied")


def export_onnx(
    net: nn.Module, out: str | Path, *, opset: int = DEFAULT_OPSET, batch: int = 2
) -> Path:
    """Write ``net`` (a :class:`HomographyNet` or :class:`IterativeHomographyNet`) as ONNX.

    Inputs ``patch_a``, ``patch_b`` ``(B, 1, P, P)`` float32, output ``offsets (B, 4, 2)``,
    ``B`` dynamic. Traced (TorchScript exporter) on ``batch`` random pairs, with ``net`` moved to
    the CPU in eval mode; written atomically. Returns ``out``.
    """
    require_onnx()
    if not MIN_OPSET <= opset <= max_opset():
        raise ValueError(
            f"--opset must be in [{MIN_OPSET}, {max_opset()}] ({MIN_OPSET}: GridSample; "
            f"{max_opset()}: the newest this torch exports), got {opset}"
        )
    out = Path(out).expanduser()
    _check_out(out)
    p = int(net.patch_size)
    model = OffsetsOnly(net.cpu().eval()).eval()
    g = torch.Generator().manual_seed(0)
    example = (torch.rand(batch, 1, p, p, generator=g), torch.rand(batch, 1, p, p, generator=g))
    # staged under a name of its own, then renamed over out
    with atomic_write(out) as tmp, warnings.catch_warnings(), torch.no_grad():
        # the tracer's notes on Python ints: the shapes they concern are fixed (P, cells)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # constant folding skips strided slices (the corner reorder): nothing to act on
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=["patch_a", "patch_b"],
            output_names=["offsets"],
            dynamic_axes={"patch_a": {0: "batch"}, "patch_b": {0: "batch"},
                          "offsets": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )  # fmt: skip
    return out


def onnx_offsets(path: str | Path, patch_a: np.ndarray, patch_b: np.ndarray) -> np.ndarray:
    """Run an exported file with onnxruntime (CPU): ``offsets (B, 4, 2)`` float32."""
    require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"patch_a": np.asarray(patch_a, np.float32), "patch_b": np.asarray(patch_b, np.float32)}
    return session.run(["offsets"], feeds)[0]


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same pairs: corner differences in pixels."""

    pairs: int
    max_px: float
    mean_px: float


def check_onnx(net: nn.Module, path: str | Path, pairs: int = 8, seed: int = 0) -> OnnxCheck:
    """Run ``pairs`` synthetic pairs (a patch and a shifted, perturbed copy of random smooth
    texture) through PyTorch and onnxruntime; the largest and mean corner difference."""
    import onnx

    onnx.checker.check_model(str(path))
    p = int(net.patch_size)
    a, b = _check_pairs(pairs, p, seed)
    with torch.no_grad():
        ref = net.cpu().eval()(torch.from_numpy(a), torch.from_numpy(b))["offsets"].float().numpy()
    got = onnx_offsets(path, a, b)
    dist = np.linalg.norm(got - ref, axis=-1)
    return OnnxCheck(pairs, float(dist.max()), float(dist.mean()))


def _check_pairs(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs ``(n, 1, p, p)`` float32: smooth random texture and a copy shifted by a few
    pixels with noise (enough structure for the networks' iterations to move)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 1, p // 8 + 2, p // 8 + 2)).astype(np.float32)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(coarse), scale_factor=8, mode="bilinear", align_corners=False
    ).numpy()
    a = big[:, :, :p, :p]
    shift = rng.integers(1, 8, size=n)
    b = np.stack([big[i, :, s : s + p, s : s + p] for i, s in enumerate(shift)])
    b = np.clip(b + rng.normal(0, 0.02, b.shape).astype(np.float32), 0, 1)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)
