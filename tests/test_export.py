"""ONNX export: onnxruntime against PyTorch on DeTone pairs, dynamic batch, the CLI's errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hdreg.apps.cli import main
from hdreg.apps.protocols import detone_protocol
from hdreg.data.benchmarks.synthetic import make_synthetic_benchmark
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.models.checkpoint import load_net
from hdreg.models.onnx import MIN_OPSET, export_onnx, onnx_offsets, require_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    """16 DeTone pairs (128×128, ρ = 32) of scikit-image's photos: ``(16, 1, 128, 128)`` float32."""
    bench = make_synthetic_benchmark(
        load_images(sample_source(), warn=False), 16, 0, detone_protocol()
    )
    a = bench.patch_a[:, None].astype(np.float32) / 255
    b = bench.patch_b[:, None].astype(np.float32) / 255
    return a, b


def _torch_offsets(net: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(a), torch.from_numpy(b))["offsets"].float().numpy()


def _check_parity(name: str, pairs, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.onnx"
    assert main(["export", "onnx", name, str(out)]) == 0
    net = load_net(name)
    a, b = pairs
    ref = _torch_offsets(net, a, b)
    got = onnx_offsets(out, a, b)
    assert got.shape == (16, 4, 2) and got.dtype == np.float32
    corner_px = np.linalg.norm(got - ref, axis=-1)
    assert corner_px.max() < 1e-2, f"{name}: onnxruntime differs by {corner_px.max():.3g} px"
    # the offsets are real estimates, not all zero
    assert np.abs(ref).mean() > 1.0
    # dynamic batch: one pair and five pairs through the same file (traced at batch 2)
    one = onnx_offsets(out, a[3:4], b[3:4])
    five = onnx_offsets(out, a[5:10], b[5:10])
    assert one.shape == (1, 4, 2) and five.shape == (5, 4, 2)
    assert np.abs(one - ref[3:4]).max() < 1e-2
    assert np.abs(five - ref[5:10]).max() < 1e-2


def test_homographynet_parity_and_dynamic_batch(pairs, tmp_path):
    _check_parity("homographynet", pairs, tmp_path)


@pytest.mark.slow  # the traced graph unrolls 7 iterations: ~30 s to export on one core
def test_iterative_parity_and_dynamic_batch(pairs, tmp_path):
    _check_parity("iterative", pairs, tmp_path)


def test_check_flag_prints_difference(tmp_path, capsys):
    out = tmp_path / "sub" / "net.onnx"  # the folder is created
    assert main(["export", "onnx", "homographynet", str(out), "--opset", "18", "--check"]) == 0
    text = capsys.readouterr().out
    assert "opset 18" in text and "onnxruntime vs PyTorch on 8 pairs" in text
    import onnx

    model = onnx.load(str(out))
    assert model.opset_import[0].version == 18
    assert [i.name for i in model.graph.input] == ["patch_a", "patch_b"]
    assert [o.name for o in model.graph.output] == ["offsets"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_model", "{tmp}/x.onnx"], "checkpoint no_such_model does not exist"),
        (["{tmp}/bad.ckpt", "{tmp}/x.onnx"], "bad.ckpt is not an hdreg checkpoint"),
        (["homographynet", "{tmp}"], "is a directory; give the .onnx file to write"),
        (["homographynet", "{tmp}/file.txt/x.onnx"], "cannot create the folder of"),
        (["homographynet", "{tmp}/x.onnx", "--opset", "13"], f"--opset must be in [{MIN_OPSET}, "),
    ],
)
def test_errors_are_one_line(args, message, tmp_path, capsys):
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    (tmp_path / "file.txt").write_text("a file, not a folder")
    argv = ["export", "onnx", *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hdreg export: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnxruntime_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hdreg\[onnx\]'"):
        require_onnx()
    assert main(["export", "onnx", "homographynet", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "hdreg export: error: ONNX export needs onnxruntime: pip install 'hdreg[onnx]' "
        "(or pip install onnx onnxruntime)"
    )


def test_export_api_returns_path(tmp_path):
    net = load_net("homographynet")
    path = export_onnx(net, tmp_path / "h.onnx", opset=MIN_OPSET)
    assert path == tmp_path / "h.onnx" and path.stat().st_size > 1e6
    assert not list(tmp_path.glob(".*.tmp"))


def test_pytorch_keeps_the_lu_solve():
    """Outside an export the iterative network's DLT is the LU solve, bit for bit (its scores in
    docs/ stand); the closed form serves only the exported graph."""
    from hdreg.geometry import four_point_to_homography_ex, patch_corners
    from hdreg.models.iterative import _dlt

    corners = patch_corners(torch.zeros(8, 2), 128)
    offsets = (torch.rand(8, 4, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 32
    H, valid = _dlt(corners, corners + offsets)
    H_ex, valid_ex = four_point_to_homography_ex(corners, corners + offsets)
    assert torch.equal(H, H_ex) and torch.equal(valid, valid_ex)


@pytest.mark.parametrize("kind", ["classification", "unsupervised"])
def test_checkpoint_file_of_any_head(kind, tmp_path):
    """A weights file of another head or module (here untrained, tiny) exports by its path and
    runs in onnxruntime as in PyTorch."""
    from hdreg.models.checkpoint import save_weights

    from .conftest import tiny_module

    ckpt = save_weights(tiny_module(kind), tmp_path / f"{kind}.pt")
    out = tmp_path / f"{kind}.onnx"
    assert main(["export", "onnx", str(ckpt), str(out)]) == 0
    net = load_net(ckpt)
    g = np.random.default_rng(0)
    a = g.random((3, 1, 128, 128), dtype=np.float32)
    b = g.random((3, 1, 128, 128), dtype=np.float32)
    assert np.abs(onnx_offsets(out, a, b) - _torch_offsets(net, a, b)).max() < 1e-3
