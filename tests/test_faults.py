"""Faults and bad input: a kill during a checkpoint save, a kill and a resume, a diverging run,
bad image folders and bad options. Each ends in the right result or one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf.errors import MissingMandatoryValue

from hdreg.data.benchmarks.synthetic import read_synthetic_benchmark
from hdreg.data.decoding import load_images, min_source_side
from hdreg.data.sources import folder_source
from hdreg.data.splits import split_by_image
from hdreg.errors import TrainingDiverged, user_error_message
from hdreg.training.callbacks import NonFiniteLossStop
from hdreg.training.checkpointing import (
    AtomicCheckpointIO,
    FiniteModelCheckpoint,
    check_checkpoint,
    staged_checkpoints,
)
from hdreg.training.schedules import one_cycle

from .conftest import REPO, textured_image
from .test_train_pipeline import TINY as PIPELINE_TINY
from .warm_python import run_python

# The pipeline tests' tiny network and sets, no worker processes: the run's logic is under test.
TINY = [*PIPELINE_TINY, "evaluate_test=false"]
# Two 2-step epochs of the default recipe (AdamW, one-cycle LR) with dropout, so that a resume
# must restore the random state too; logger=none also covers the LR monitor without a logger.
RESUME = [*TINY, "logger=none", "data.steps_per_epoch=2", "model.net.dropout=0.5"]
KILL_AT_2 = ["+callbacks.kill._target_=tests.fault_callbacks.KillAtStep", "+callbacks.kill.step=2"]


def train(args: list[str], run_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` as a user runs it (no debug variables), in a process of its own
    forked from a warm interpreter (tests/warm_python.py): its imports are paid once."""
    env = {k: v for k, v in os.environ.items() if k not in ("HDREG_DEBUG", "HYDRA_FULL_ERROR")}
    env["PYTHONWARNINGS"] = "ignore"
    return run_python(
        [REPO / "train.py", *args, f"hydra.run.dir={run_dir}"], env=env, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The error line of a run that must end with exactly one ``train.py: error:`` line."""
    assert proc.returncode == code, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    return errors[0]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def compose_train(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "hdreg" / "configs")):
        return compose("train", overrides=overrides)


# -- checkpoints ---------------------------------------------------------------------------------
KILL_DURING_SAVE = """
import os, signal, sys, torch
from hdreg.training.checkpointing import atomic_torch_save

path = sys.argv[1]
lightning = {"epoch": 0, "pytorch-lightning_version": "2.0.0", "optimizer_states": []}
atomic_torch_save({"state_dict": {"w": torch.zeros(4)}, "global_step": 1, **lightning}, path)

def killed(fd):  # the new checkpoint's bytes are written; the kill lands before the rename
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = killed
atomic_torch_save({"state_dict": {"w": torch.ones(4_000_000)}, "global_step": 2, **lightning}, path)
"""


class TestAtomicCheckpoint:
    def test_kill_during_save_keeps_the_previous_checkpoint(self, tmp_path):
        path = tmp_path / "checkpoints" / "last.ckpt"
        script = tmp_path / "kill_during_save.py"
        script.write_text(KILL_DURING_SAVE)
        proc = run_python([script, path], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
        assert load(path)["global_step"] == 1  # the old checkpoint, whole
        (staged,) = staged_checkpoints(path)
        assert staged.parent == path.parent and staged.stat().st_size > 8_000_000
        assert check_checkpoint(path) == path  # resuming from it works ...
        assert not staged.exists()  # ... and clears the orphaned partial file

    def test_staged_beside_the_destination(self, tmp_path, monkeypatch):
        renames = []
        real_replace = os.replace
        monkeypatch.setattr(
            os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b))
        )
        path = tmp_path / "run" / "best.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 3}, path)
        assert [(Path(a).parent, Path(b)) for a, b in renames] == [(path.parent, path)]
        assert load(path)["global_step"] == 3 and list(path.parent.iterdir()) == [path]

    def test_corrupt_checkpoints_named_in_one_line(self, tmp_path):
        good = tmp_path / "good.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 1}, good)
        (tmp_path / "half.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        (tmp_path / "empty.ckpt").write_bytes(b"")
        torch.save({"weights": 1}, tmp_path / "other.ckpt")
        for name, expected in [("half", "corrupt or truncated"), ("empty", r"empty file \(0 bytes\)"),
                               ("other", "not a training checkpoint"), ("none", "no such checkpoint")]:  # fmt: skip
            with pytest.raises((ValueError, FileNotFoundError), match=expected) as info:
                check_checkpoint(tmp_path / f"{name}.ckpt")
            message = user_error_message(info.value)
            assert message.startswith("ckpt_path=") and "\n" not in message

    def test_nonfinite_model_is_never_saved(self):
        callback = FiniteModelCheckpoint(monitor="val/mace", mode="min")
        assert not callback.check_monitor_top_k(None, torch.tensor(float("nan")))
        net = torch.nn.Linear(2, 2)
        with torch.no_grad():
            net.weight[0, 0] = float("inf")
        trainer = type("T", (), {"lightning_module": net})()
        assert not callback.check_monitor_top_k(trainer, torch.tensor(1.0))


# -- resume --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A 4-step run SIGKILLed when it is about to take step 3 (after the epoch-1 checkpoint)."""
    run = tmp_path_factory.mktemp("killed")
    proc = train([*RESUME, "trainer.max_steps=4", *KILL_AT_2], run)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    return run


def test_kill_and_resume_gives_the_uninterrupted_weights(killed_run, tmp_path):
    """N steps uninterrupted == N/2 steps, SIGKILL, resume to N: bit for bit, with dropout on."""
    ok(train([*RESUME, "trainer.max_steps=4"], tmp_path / "whole"))
    ok(train([*RESUME, "trainer.max_steps=4",
              f"ckpt_path={killed_run / 'checkpoints' / 'last.ckpt'}"], tmp_path / "resumed"))  # fmt: skip
    whole = load(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    resumed = load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert whole["global_step"] == resumed["global_step"] == 4
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    lr = [c["optimizer_states"][0]["param_groups"][0]["lr"] for c in (whole, resumed)]
    assert lr[0] == lr[1]
    for name in ("whole", "resumed"):  # atomic saves leave no partial file behind
        assert not list((tmp_path / name / "checkpoints").glob(".*"))


def test_resume_with_more_steps_rebuilds_the_schedule(killed_run, tmp_path):
    """Raising trainer.max_steps on resume: the one-cycle schedule is rebuilt for the new length
    (it used to fail with 'Tried to step 5 times. The specified number of total steps is 4')."""
    run = tmp_path / "longer"
    proc = ok(train([*RESUME, "trainer.max_steps=6",
                     f"ckpt_path={killed_run / 'checkpoints' / 'last.ckpt'}"], run))  # fmt: skip
    log_text = (run / "train.log").read_text() + proc.stdout + proc.stderr
    assert "rebuilt for 6 total steps (the checkpoint's schedule had 4)" in log_text
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    # The LR after 6 steps is that of a fresh 6-step schedule, not of the restarted 4-step one.
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.002)
    schedule = one_cycle(opt, max_lr=0.002, total_steps=6, pct_start=0.1)
    for _ in range(6):
        opt.step()
        schedule.step()
    got = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert got == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)


# -- divergence ----------------------------------------------------------------------------------
def test_diverging_run_stops_with_one_line_and_no_nonfinite_checkpoint(tmp_path):
    """model.optimizer.lr=1e6 used to log NaN at every step, exit 0 and save a NaN best.ckpt."""
    run = tmp_path / "diverged"
    proc = train([*TINY, "logger=none", "model.optimizer.lr=1e6", "data.steps_per_epoch=1",
                  "trainer.max_steps=40"], run)  # fmt: skip
    line = one_line_error(proc, code=1)
    assert "training diverged" in line and "callbacks.nonfinite_loss.patience" in line
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = load(ckpt)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values()), ckpt.name
        for cb_state in state.get("callbacks", {}).values():
            score = cb_state.get("best_model_score")
            assert score is None or torch.isfinite(torch.as_tensor(score)), ckpt.name


def test_nonfinite_loss_stop_counts_consecutive_steps():
    stop = NonFiniteLossStop(patience=2)
    trainer = type("T", (), {"global_step": 7})()
    nan, one = {"loss": torch.tensor(float("nan"))}, {"loss": torch.tensor(1.0)}
    for outputs in (nan, one, nan):  # a single bad batch is tolerated
        stop.on_train_batch_end(trainer, None, outputs, None, 0)
    with pytest.raises(TrainingDiverged, match="2 consecutive steps"):
        stop.on_train_batch_end(trainer, None, nan, None, 0)
    with pytest.raises(ValueError, match="patience"):
        NonFiniteLossStop(patience=0)


# -- schedule length -----------------------------------------------------------------------------
@pytest.mark.parametrize("pct_start", [0.1, 0.3])
def test_one_cycle_any_length(pct_start):
    """A 10-step smoke run of the default recipe died with ZeroDivisionError inside OneCycleLR."""
    for total in range(1, 41):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = one_cycle(opt, max_lr=1.0, total_steps=total, pct_start=pct_start)
        lrs = []
        for _ in range(total):
            opt.step()
            schedule.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert all(np.isfinite(lrs)), total
        if total >= 3:
            assert max(lrs) > 0.5, total  # the warm-up reaches (about) max_lr
    with pytest.raises(ValueError, match=r"trainer\.max_steps"):
        one_cycle(opt, max_lr=1.0, total_steps=0)


# -- bad input through train.py ------------------------------------------------------------------
def test_bad_run_options_end_in_one_line(tmp_path):
    cases = [
        (["trainer.max_steps=0"], "trainer.max_steps must be a positive number"),
        (["data=coco"], "missing mandatory value data.source"),
        ([f"ckpt_path={tmp_path / 'missing.ckpt'}"], "ckpt_path="),
    ]
    for i, (args, expected) in enumerate(cases):
        run = tmp_path / f"run{i}"
        line = one_line_error(train([*TINY, *args], run))
        assert expected in line, line
        assert not (run / "tensorboard").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("content", ["empty", "unreadable"])
def test_bad_image_folder_ends_in_one_line(tmp_path, content):
    """An empty or all-bad folder gave a 40-line traceback and a stray TensorBoard file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    if content == "unreadable":
        for name in ("a.jpg", "b.png"):
            (folder / name).write_text("not an image")
    run = tmp_path / "run"
    line = one_line_error(train([*TINY, "data=folder", f"data.source={folder}"], run))
    assert str(folder) in line
    assert ("no image files" if content == "empty" else "no usable image") in line
    assert not (run / "tensorboard").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("data", ["coco", "folder"])
def test_data_source_is_mandatory(data):
    """data=coco / data=folder without data.source trained on the sample photos."""
    cfg = compose_train([f"data={data}"])
    with pytest.raises(MissingMandatoryValue) as info:
        _ = cfg.data.source
    assert user_error_message(info.value).startswith("missing mandatory value data.source")
    assert compose_train([]).data.source == "samples"


# -- image folders -------------------------------------------------------------------------------
def test_camera_names_are_independent_photos(tmp_path):
    """IMG_0001.jpg ... IMG_0013.jpg were one group: 'cannot split 1 image group(s)'."""
    for i in range(1, 14):
        cv2.imwrite(str(tmp_path / f"IMG_{i:04d}.jpg"), textured_image(seed=i))
    source = folder_source(tmp_path)
    groups = [source.group_of(i) for i in range(len(source.files))]
    assert len(set(groups)) == 13
    train_idx, val_idx, test_idx = split_by_image(groups, (0.7, 0.15, 0.15), seed=0)
    assert train_idx and val_idx and test_idx

    from hdreg.apps.cli import main

    out = tmp_path / "test.npz"
    assert main(["make-benchmark", "--source", str(tmp_path), "--split", "test", "--n", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    assert len(read_synthetic_benchmark(out)) == 4


def test_frames_grouped_only_where_names_say_so(tmp_path):
    names = ["seq1/frame_0001.png", "seq1/frame_0002.png", "scene7_frame-000100.jpg",
             "scene7_frame-000250.jpg", "DSC01234.JPG", "DSC01235.JPG", "sky.png"]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    source = folder_source(tmp_path)
    group = {f: source.group_of(i) for i, f in enumerate(source.files)}
    assert group["seq1/frame_0001.png"] == group["seq1/frame_0002.png"] == "seq1"
    assert group["scene7_frame-000100.jpg"] == group["scene7_frame-000250.jpg"] == "scene7"
    assert len({group["DSC01234.JPG"], group["DSC01235.JPG"], group["sky.png"]}) == 3


def test_tiny_images_are_skipped_and_counted(tmp_path):
    """10x10 images were upscaled into the pairs (and the test split) without a word."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"photo{i}.png"), textured_image(seed=i))
    cv2.imwrite(str(tmp_path / "icon.png"), np.full((10, 10), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "thumb.png"), textured_image(100, 150, seed=9))
    (tmp_path / "broken.jpg").write_text("not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = load_images(folder_source(tmp_path), min_side=min_source_side(128, 32))
    assert sorted(images.names) == ["photo0.png", "photo1.png", "photo2.png"]
    message = str(caught[0].message)
    assert "skipped 3 of 6 files" in message
    assert "icon.png" in message and "10x10: too small" in message and "broken.jpg" in message
    assert min_source_side(128, 32) == 160


def test_benchmark_offsets_beyond_rho_are_refused(tmp_path):
    """A .npz whose offsets exceed its rho was scored without a word."""
    rng = np.random.default_rng(0)
    n, p = 4, 32
    path = tmp_path / "bench.npz"
    np.savez(
        path, patch_a=rng.integers(0, 255, (n, p, p), dtype=np.uint8),
        patch_b=rng.integers(0, 255, (n, p, p), dtype=np.uint8),
        offsets=rng.uniform(-20, 20, (n, 4, 2)).astype(np.float32),
        corners=np.zeros((n, 4, 2), np.float32), sources=np.array(["x"] * n),
        rho=np.float64(8.0), patch_size=np.int64(p), seed=np.int64(0), version=np.int64(1),
        image_size=np.array([320, 240]),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"'offsets' reach 1\d\.\d+ px, beyond its rho = 8"):
        read_synthetic_benchmark(path)


def test_user_errors_one_line_unless_debugging(monkeypatch, capsys):
    from hdreg.errors import user_errors

    monkeypatch.delenv("HDREG_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info, user_errors("train.py"):
        raise ValueError("data.rho must be >= 0,\n got -1")
    assert info.value.code == 2
    assert capsys.readouterr().err == "train.py: error: data.rho must be >= 0, got -1\n"
    with pytest.raises(KeyError), user_errors("train.py"):  # a bug keeps its traceback
        raise KeyError("x")
    for variable in ("HDREG_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.setenv(variable, "1")
        with pytest.raises(ValueError), user_errors("train.py"):
            raise ValueError("shown with its traceback")
        monkeypatch.delenv(variable)
