"""Reading a checkpoint never runs code, never loads corrupt weights silently, and every place
that takes a checkpoint answers a bad one with one line (hdreg.models.checkpoint)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hdreg.models.checkpoint import (
    export_weights,
    load_module,
    load_net,
    read_checkpoint,
    resolve_checkpoint,
)
from hdreg.models.iterative import IterativeHomographyNet
from hdreg.weights import shipped

from .warm_python import run_python

ROOT = Path(__file__).resolve().parents[1]


def _malicious_config(payload: Path, marker: Path) -> dict:
    """The exploit: Hydra would follow attributes from an allowed prefix to torch.load and
    Path.write_text, writing a pickle and executing it."""
    return {
        "_target_": "hdreg.estimators.learned.torch.load",
        "f": str(payload),
        "weights_only": False,
        "map_location": {
            "_target_": "hdreg.models.base.Path.write_text",
            "self": str(marker),
            "data": "owned",
        },
    }


def _write(path: Path, config: dict, state: dict | None = None) -> Path:
    torch.save({"hdreg_model": config, "state_dict": state or {}}, path)
    return path


def _iterative_config() -> dict:
    return dict(torch.load(shipped("iterative").path, weights_only=True)["hdreg_model"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: _malicious_config(Path("/nonexistent"), Path("/nonexistent")),
        lambda c: {**c, "net": {**c["net"], "_target_": "hdreg.models.iterative.torch.load"}},
        lambda c: {**c, "_target_": "hdreg.models.base.Path.write_text"},
        lambda c: {**c, "loss": {"_target_": "builtins.eval", "source": "1"}},
        lambda c: {**c, "net": {**c["net"], "width": {"_target_": "builtins.print"}}},
        lambda c: {**c, "net": {**c["net"], "_partial_": True}},
        lambda c: {**c, "name": {"_target_": "hdreg.models.base.Path.write_text"}},
    ],
    ids=[
        "exploit",
        "net-attr-chain",
        "module-attr-chain",
        "loss-eval",
        "nested-target",
        "partial",
        "nested-in-plain-key",
    ],
)
def test_config_outside_the_allow_list_is_refused(tmp_path, mutate):
    path = _write(tmp_path / "bad.pt", mutate(_iterative_config()))
    with pytest.raises(ValueError, match=r"bad\.pt: refused"):
        read_checkpoint(path)


def test_the_exploit_creates_no_file_through_any_loader(tmp_path):
    marker = tmp_path / "owned.txt"
    path = _write(tmp_path / "evil.ckpt", _malicious_config(tmp_path / "payload.pkl", marker))
    for load in (
        read_checkpoint,
        load_net,
        load_module,
        lambda p: export_weights(p, tmp_path / "o.pt"),
    ):
        with pytest.raises(ValueError, match=r"evil\.ckpt"):
            load(path)
    assert not marker.exists() and not (tmp_path / "payload.pkl").exists()
    assert not (tmp_path / "o.pt").exists()


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    from skimage import data

    img = cv2.resize(data.camera(), (320, 240))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), img)
    cv2.imwrite(str(b), np.roll(img, 3, axis=1))
    return a, b


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdreg.apps.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_exploit_through_the_commands_is_one_error_line(tmp_path):
    marker = tmp_path / "owned.txt"
    evil = _malicious_config(tmp_path / "payload.pkl", marker)
    a, b = _pair(tmp_path)
    # a file in the working directory named like a shipped model, and an explicit path
    _write(tmp_path / "iterative", evil)
    _write(tmp_path / "evil.ckpt", evil)
    runs = [
        _cli(
            ["align", str(a), str(b), "--checkpoint", "iterative", "--out", str(tmp_path / "o1")],
            tmp_path,
        ),
        _cli(
            ["align", str(a), str(b), "--checkpoint", "evil.ckpt", "--out", str(tmp_path / "o2")],
            tmp_path,
        ),
        _cli(["weights", "export", "evil.ckpt", str(tmp_path / "w.pt")], tmp_path),
        run_python(  # python evaluate.py ..., forked from a warm interpreter
            [
                ROOT / "evaluate.py",
                "benchmark=synthetic",
                "benchmark.source=samples",
                "benchmark.n=4",
                "methods=[identity]",
                f"checkpoints=[{tmp_path / 'evil.ckpt'}]",
                f"hydra.run.dir={tmp_path / 'ev'}",
            ],
            cwd=tmp_path,
            timeout=180,
        ),
    ]
    for run in runs:
        assert run.returncode == 2, run.stderr
        lines = [x for x in run.stderr.strip().splitlines() if x]
        assert len(lines) == 1 and "error:" in lines[0], run.stderr
        assert "refused" in lines[0], run.stderr
    assert not marker.exists() and not (tmp_path / "payload.pkl").exists()


def test_a_corrupt_shipped_file_is_refused(tmp_path, monkeypatch):
    import hdreg.weights as weights

    copy_dir = tmp_path / "weights"
    shutil.copytree(Path(weights.__file__).parent, copy_dir)
    blob = bytearray((copy_dir / "iterative.pt").read_bytes())
    blob[-2000:-1996] = b"\xff\xff\xff\x7f"  # 4 bytes of a tensor overwritten
    (copy_dir / "iterative.pt").write_bytes(bytes(blob))
    monkeypatch.setattr(weights, "_DIR", copy_dir)
    with pytest.raises(ValueError, match="corrupt"):
        load_net("iterative")


def test_non_finite_weights_are_refused_in_one_line(tmp_path):
    ckpt = torch.load(shipped("iterative").path, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone()
    ckpt["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=f"nan.pt: the weight {key} has non-finite values"):
        load_net(tmp_path / "nan.pt")


def test_exported_weights_carry_a_checksum_that_loading_verifies(tmp_path):
    out = export_weights("iterative", tmp_path / "w.pt")
    assert load_net(out) is not None
    ckpt = torch.load(out, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1.001  # finite, but not what was exported
    torch.save(ckpt, tmp_path / "w2.pt")
    with pytest.raises(ValueError, match="checksum"):
        load_net(tmp_path / "w2.pt")


def test_export_to_a_directory_or_under_a_file_leaves_nothing(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        export_weights("iterative", tmp_path / "dir")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="cannot write"):
        export_weights("iterative", tmp_path / "afile" / "w.pt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "dir"]


def test_a_directory_does_not_hide_a_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iterative").mkdir()
    assert resolve_checkpoint("iterative") == shipped("iterative").path
    assert load_net("iterative").patch_size == 128


# A fresh interpreter (slow): test_api's quick import check loads through load_net too.
@pytest.mark.slow
def test_load_net_needs_neither_lightning_nor_hydra():
    code = (
        "import sys, hdreg.models.checkpoint as c; c.load_net('iterative'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'hydra')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


class MyNet(IterativeHomographyNet):
    """A network of a user's own (here: the iterative network under another name)."""


def test_a_registered_class_of_ones_own_loads(tmp_path):
    from hdreg.models import checkpoint

    config = _iterative_config()
    target = f"{MyNet.__module__}.{MyNet.__qualname__}"
    config["net"] = {**config["net"], "_target_": target}
    state = torch.load(shipped("iterative").path, weights_only=True)["state_dict"]
    path = _write(tmp_path / "mine.pt", config, state)
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(path)
    try:
        checkpoint.register("net", MyNet)
        assert isinstance(load_net(path), MyNet)
    finally:
        checkpoint.NETS.pop(target, None)
