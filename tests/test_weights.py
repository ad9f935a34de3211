"""The trained weights that ship inside the package: listed, loadable by name, and accurate."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from hdreg.apps.cli import main as hdreg_main
from hdreg.apps.protocols import detone_protocol
from hdreg.data.benchmarks.synthetic import make_synthetic_benchmark
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.data.splits import split_by_image
from hdreg.estimators.learned import load_checkpoint_estimator
from hdreg.geometry import patch_corners, transform_points
from hdreg.models.checkpoint import export_weights, load_module, resolve_checkpoint
from hdreg.weights import shipped, shipped_weights

SHIPPED = ["dense-matcher", "homographynet", "iterative", "unsupervised", "wide"]


@pytest.fixture(scope="module")
def held_out_pairs():
    """64 DeTone pairs of the sample photos' test split (images no shipped model trained on)."""
    images = load_images(sample_source())
    _, _, test = split_by_image(images.groups, (0.7, 0.15, 0.15), 0)
    return make_synthetic_benchmark(images.subset(test), 64, 123, detone_protocol())


def corner_errors(H_a_from_b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    corners = patch_corners(torch.zeros(len(offsets), 2, dtype=torch.float64), 128)
    mapped = transform_points(torch.from_numpy(H_a_from_b), corners)
    return (mapped - corners - torch.from_numpy(offsets).double()).norm(dim=-1).mean(-1).numpy()


def test_every_shipped_file_is_listed():
    assert sorted(shipped_weights()) == SHIPPED
    for w in shipped_weights().values():
        assert w.path.is_file() and w.path.stat().st_size < 5e6  # weights only: a few MB
        trained_by = "python -m hdreg.training." if w.part_of else "python train.py"
        assert trained_by in w.command and w.data


def test_the_shipped_lookup_imports_nothing_else_of_hdreg():
    # hdreg.weights is data and a lookup at the bottom of the layers: reading index.json must not
    # load the model code (nor torch) that sits above it
    code = (
        "import sys, hdreg.weights as w; w.shipped('iterative'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hdreg', 'torch')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['hdreg', 'hdreg.weights']"


@pytest.mark.parametrize(
    ("name", "max_share"), [("homographynet", 0.6), ("iterative", 0.15), ("unsupervised", 0.15)]
)
def test_loads_by_name_and_beats_the_identity(name, max_share, held_out_pairs):
    bench = held_out_pairs
    estimator = load_checkpoint_estimator(name, device="cpu")
    est = estimator.estimate(list(bench.patch_a), list(bench.patch_b))
    assert not est.failed.any()
    mace = corner_errors(est.H_a_from_b, bench.offsets).mean()
    identity = np.linalg.norm(bench.offsets, axis=-1).mean()
    assert mace < max_share * identity, (name, mace, identity)


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("iterative") == shipped("iterative").path
    (tmp_path / "iterative").write_bytes(b"not a checkpoint")
    assert resolve_checkpoint("iterative").resolve() == tmp_path / "iterative"
    assert resolve_checkpoint("no-such-model").resolve() == tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_module("no-such-model")
    with pytest.raises(KeyError, match="available: dense-matcher, homographynet, iterative"):
        shipped("no-such-model")


def test_export_keeps_only_the_weights(tmp_path):
    out = export_weights(shipped("iterative").path, tmp_path / "copy.pt")
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved) == {"hdreg_model", "state_dict", "val_mace_best", "tensors_sha256"}
    original = load_module("iterative").state_dict()
    assert all(torch.equal(v, original[k]) for k, v in load_module(out).state_dict().items())


def test_cli_lists_and_exports(tmp_path, capsys):
    assert hdreg_main(["weights"]) == 0
    listing = capsys.readouterr().out
    assert all(f"\n{name}: " in f"\n{listing}" for name in SHIPPED if name != "dense-matcher")
    assert "\ndense-matcher (a part of wide, not a method of its own): " in listing
    assert "experiment=iterative_cpu" in listing
    assert hdreg_main(["weights", "export", "homographynet", str(tmp_path / "h.pt")]) == 0
    assert (tmp_path / "h.pt").is_file()
    assert hdreg_main(["weights", "export"]) == 2  # names what is missing, no traceback
    assert "usage: hdreg weights export" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_listing_quietly():
    """``hdreg weights | head -1``: the reader gone before the listing is written is no error
    to report (no traceback), and the status is a shell's for SIGPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdreg.apps.cli", "weights"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()  # before the listing is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_a_broken_pipe_that_is_not_stdout_is_reported(monkeypatch):
    import hdreg.apps.cli as cli

    def fails(args):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a socket, with stdout still open

    monkeypatch.setattr(cli, "_cmd_weights", fails)
    with pytest.raises(BrokenPipeError):
        hdreg_main(["weights"])


def test_export_sets_the_inference_iterations_of_an_iterative_network(tmp_path):
    from hdreg.models.checkpoint import load_net

    out = export_weights("iterative", tmp_path / "it6.pt", iterations=6, fine_iterations=2)
    net, trained = load_net(out), load_net("iterative")
    assert (net.iterations, net.fine_iterations) == (6, 2)
    assert (trained.iterations, trained.fine_iterations) == (4, 3)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in net.state_dict().items())
    a, b = torch.rand(2, 1, 1, 128, 128).unbind(0)
    with torch.no_grad():
        assert net(a, b)["offsets_all"].shape[0] == 8
        assert torch.equal(net(a, b)["offsets"], trained(a, b, 6, 2)["offsets"])
    with pytest.raises(ValueError, match="applies to an iterative network"):
        export_weights("homographynet", tmp_path / "h.pt", iterations=6)
    with pytest.raises(ValueError, match="iterations must be a whole number >= 1"):
        export_weights("iterative", tmp_path / "x.pt", iterations=0)
    assert not (tmp_path / "h.pt").exists() and not (tmp_path / "x.pt").exists()
