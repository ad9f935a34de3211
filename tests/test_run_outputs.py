"""Runs and outputs never overwrite each other, and an output that cannot be written says so in
one line: run folders of train/evaluate, checkpoint staging names, an export onto its own input,
``hdreg align --out``, ``hdreg make-benchmark --out``, and Ctrl-C in ``hdreg evaluate``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from hdreg.apps.cli import main as hdreg
from hdreg.apps.run_dir import LOCK_FILE, claim_run_dir, release_run_dirs
from hdreg.training.checkpointing import atomic_torch_save, check_checkpoint, staged_checkpoints

from .conftest import REPO, textured_image

# identity on 8 synthetic pairs of the sample photos, in this process: about a second
EVALUATE = ["benchmark.source=samples", "benchmark.n=8", "methods=[identity]", "progress=false",
            "num_workers=1"]  # fmt: skip
REPORT = {"results.md", "results.csv", "pairs.csv", "results.json", "corner_error_cdf.png"}


def evaluate(args: list[str], capsys) -> tuple[int, str, str]:
    code = hdreg(["evaluate", *EVALUATE, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, program: str) -> str:
    """The one line of a command that must print exactly ``<program>: error: ...``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{program}: error: "), err
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def write_lock(folder: Path, pid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


# -- run folders ---------------------------------------------------------------------------------
class TestRunFolders:
    def test_runs_started_together_get_folders_of_their_own(self, tmp_path):
        """The default outputs/<task>/<second> folder was shared by runs started in one second."""
        base = tmp_path / "outputs" / "evaluate" / "2026-01-01_00-00-00"
        claimed: list[Path] = []
        barrier = threading.Barrier(6)

        def claim() -> None:
            barrier.wait()
            claimed.append(claim_run_dir(base, "evaluate", new=True))

        threads = [threading.Thread(target=claim) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        release_run_dirs()
        assert sorted(p.name for p in claimed) == sorted(
            [base.name] + [f"{base.name}_{i}" for i in range(2, 7)]
        )

    def test_time_stamped_folder_of_an_earlier_run_is_not_reused(self, tmp_path, capsys):
        run_dir = f"{tmp_path}/run-${{now:%Y}}"  # the same name for both runs
        assert evaluate([f"hydra.run.dir={run_dir}"], capsys)[0] == 0
        code, out, err = evaluate([f"hydra.run.dir={run_dir}", "methods=[sift]"], capsys)
        assert code == 0, err
        first, second = sorted(tmp_path.iterdir())
        assert second.name == f"{first.name}_2" and f"report written to {second}" in out
        for folder, method in ((first, "identity"), (second, "sift")):
            assert list(json.loads((folder / "results.json").read_text())) == [method]
            config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
            assert config["methods"] == [method]
            assert not (folder / LOCK_FILE).exists()

    def test_a_folder_holding_results_is_refused(self, tmp_path, capsys):
        """A second run into the same hydra.run.dir exited 0 and replaced the first's results
        under its own config."""
        run = tmp_path / "run"
        assert evaluate([f"hydra.run.dir={run}"], capsys)[0] == 0
        before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
        code, _, err = evaluate([f"hydra.run.dir={run}", "methods=[sift]"], capsys)
        assert code == 2
        line = error_line(err, "hdreg evaluate")
        assert f"hydra.run.dir={run} holds the results of an evaluation" in line
        assert "overwrite=true" in line
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert after == before  # config, log and results: all still the first run's

    def test_overwrite_removes_the_earlier_results_before_the_run(self, tmp_path, capsys):
        """An interrupted rerun left its own .hydra/ beside the earlier run's results.json."""
        run = tmp_path / "run"
        assert evaluate([f"hydra.run.dir={run}"], capsys)[0] == 0
        claim_run_dir(run, "evaluate", overwrite=True)  # what a rerun does before Hydra writes
        release_run_dirs()
        assert not REPORT & {p.name for p in run.iterdir()}
        code, _, err = evaluate([f"hydra.run.dir={run}", "methods=[sift]", "overwrite=true"],
                                capsys)  # fmt: skip
        assert code == 0, err
        assert list(json.loads((run / "results.json").read_text())) == ["sift"]

    def test_a_folder_in_use_is_refused_and_a_dead_runs_lock_taken_over(self, tmp_path, capsys):
        run = tmp_path / "run"
        write_lock(run, os.getppid())  # a live process
        code, _, err = evaluate([f"hydra.run.dir={run}"], capsys)
        assert code == 2
        line = error_line(err, "hdreg evaluate")
        assert f"hydra.run.dir={run} is in use by another run (process {os.getppid()}" in line
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no .hydra/ written
        write_lock(run, dead_pid())
        code, _, err = evaluate([f"hydra.run.dir={run}"], capsys)
        assert code == 0, err
        assert {p.name for p in run.iterdir()} >= REPORT and not (run / LOCK_FILE).exists()

    def test_training_folders_refused_except_to_resume_there(self, tmp_path):
        run = tmp_path / "run"
        last = run / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"weights")
        with pytest.raises(ValueError, match=r"holds the results of a training run \(checkpoints/\)"
                           r".*continue that run with ckpt_path="):  # fmt: skip
            claim_run_dir(run, "train")
        with pytest.raises(ValueError, match="holds the results of a training run"):
            claim_run_dir(run, "evaluate", overwrite=True)  # never over a training run
        other = tmp_path / "other.ckpt"
        with pytest.raises(ValueError, match="holds the results of a training run"):
            claim_run_dir(run, "train", resume_from=other)
        assert claim_run_dir(run, "train", resume_from=last) == run  # resumed in place
        release_run_dirs()
        assert last.read_bytes() == b"weights" and not (run / LOCK_FILE).exists()

    def test_a_distributed_runs_other_processes_use_the_claimed_folder(self, tmp_path):
        from hdreg.apps.run_dir import RunDirectory, _secondary_process

        assert _secondary_process({"LOCAL_RANK": "1"}.items())
        assert not _secondary_process({"LOCAL_RANK": "0", "RANK": "0"}.items())
        assert not _secondary_process({}.items())
        assert RunDirectory("train").task == "train"

    @pytest.mark.parametrize("where", ["file", "under_file"])
    def test_a_run_folder_that_cannot_be_created_is_named(self, tmp_path, capsys, where):
        blocker = tmp_path / "notes.txt"
        blocker.write_text("mine")
        run = blocker if where == "file" else blocker / "run"
        code, _, err = evaluate([f"hydra.run.dir={run}"], capsys)
        assert code == 2
        line = error_line(err, "hdreg evaluate")
        expected = "is a file, not a folder" if where == "file" else f"{blocker} is a file"
        assert line.startswith(f"hdreg evaluate: error: hydra.run.dir={run}") and expected in line
        assert blocker.read_text() == "mine"

    def test_a_folder_the_os_refuses_is_named(self, tmp_path, monkeypatch):
        """(What a read-only folder does for a user who is not root.)"""
        run = tmp_path / "run"

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        with monkeypatch.context() as m:
            m.setattr(Path, "mkdir", denied)
            with pytest.raises(ValueError) as info:
                claim_run_dir(run, "evaluate")
        assert (
            str(info.value) == f"hydra.run.dir={run}: cannot create the folder: Permission denied"
        )
        run.mkdir()
        monkeypatch.setattr(os, "open", denied)
        with pytest.raises(ValueError) as info:
            claim_run_dir(run, "evaluate")
        assert str(info.value) == (
            f"hydra.run.dir={run}: cannot write into the folder: Permission denied"
        )

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
    def test_a_read_only_run_folder_is_named(self, tmp_path, capsys):
        run = tmp_path / "run"
        run.mkdir()
        run.chmod(0o500)
        try:
            code, _, err = evaluate([f"hydra.run.dir={run}"], capsys)
        finally:
            run.chmod(0o700)
        assert code == 2
        line = error_line(err, "hdreg evaluate")
        assert f"hydra.run.dir={run}: cannot write into the folder: Permission denied" in line


# -- checkpoint staging --------------------------------------------------------------------------
class TestCheckpointStaging:
    def test_two_saves_of_one_checkpoint_never_share_a_staging_file(self, tmp_path, monkeypatch):
        staged: list[str] = []
        real_save = torch.save
        monkeypatch.setattr(
            torch, "save", lambda obj, f: (staged.append(f.name), real_save(obj, f))
        )
        path = tmp_path / "checkpoints" / "last.ckpt"
        atomic_torch_save({"global_step": 1}, path)
        atomic_torch_save({"global_step": 2}, path)
        assert len(set(staged)) == 2, staged
        assert all(Path(s).parent == path.parent and f".{os.getpid()}-" in s for s in staged)
        assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]

    def test_resume_removes_only_staging_files_of_ended_writers(self, tmp_path):
        lightning = {"epoch": 0, "pytorch-lightning_version": "2.0.0", "optimizer_states": []}
        path = atomic_torch_save({"state_dict": {}, "global_step": 1, **lightning},
                                 tmp_path / "last.ckpt")  # fmt: skip
        live = tmp_path / f".last.{os.getppid()}-0a1b2c3d.partial.ckpt"  # a save in progress
        dead = tmp_path / f".last.{dead_pid()}-0a1b2c3d.partial.ckpt"
        old = tmp_path / ".last.ckpt.partial"  # an older version's name
        for p in (live, dead, old):
            p.write_bytes(b"half")
        assert staged_checkpoints(path) == [*sorted([live, dead]), old]
        assert check_checkpoint(path) == path
        assert staged_checkpoints(path) == [live]


# -- exports onto their input --------------------------------------------------------------------
class TestExportOntoInput:
    @pytest.mark.parametrize("command", [["weights", "export"], ["export", "onnx"]])
    def test_output_that_is_the_input_is_refused(self, tmp_path, capsys, monkeypatch, command):
        """`hdreg weights export X X` replaced a training checkpoint by a weights-only file."""
        from hdreg.weights import shipped

        monkeypatch.chdir(tmp_path)
        source = tmp_path / "model.pt"
        source.write_bytes(shipped("homographynet").path.read_bytes())
        (tmp_path / "link.pt").symlink_to(source)
        before = source.read_bytes()
        program = f"hdreg {command[0]}"
        for out in ("model.pt", str(source), "./model.pt", "link.pt"):
            assert hdreg([*command, "model.pt", out]) == 2, out
            line = error_line(capsys.readouterr().err, program)
            assert "is the checkpoint it is exported from" in line, line
        # a shipped name and its file
        shipped_file = str(shipped("homographynet").path)
        assert hdreg([*command, "homographynet", shipped_file]) == 2
        assert "(homographynet, the same file)" in error_line(capsys.readouterr().err, program)
        assert source.read_bytes() == before and sorted(os.listdir(tmp_path)) == [
            "link.pt",
            "model.pt",
        ]


# -- hdreg align --out ---------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = textured_image(240, 320, seed=7)
    b = cv2.warpAffine(a, np.float32([[1, 0, -3], [0, 1, -2]]), (320, 240))
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    return tmp_path / "a.png", tmp_path / "b.png"


def align(pair, method: str, out, capsys) -> tuple[int, str]:
    code = hdreg(["align", *map(str, pair), "--method", method, "--out", str(out)])
    return code, capsys.readouterr().err


class TestAlignOut:
    def test_empty_out_is_refused(self, pair, tmp_path, capsys, monkeypatch):
        """`--out ""` wrote into the current folder and deleted its matches.png."""
        work = tmp_path / "work"
        work.mkdir()
        (work / "matches.png").write_bytes(b"mine")
        (work / "overlay.png").write_bytes(b"mine too")
        monkeypatch.chdir(work)
        for out in ("", "  "):
            code, err = align(pair, "ecc", out, capsys)
            assert code == 2
            assert error_line(err, "hdreg align") == (
                "hdreg align: error: --out is empty: give the folder to write the alignment into"
            )
        assert {p.name: p.read_bytes() for p in work.iterdir()} == {
            "matches.png": b"mine",
            "overlay.png": b"mine too",
        }

    def test_files_hdreg_did_not_write_are_never_deleted(self, pair, tmp_path, capsys):
        out = tmp_path / "out"
        out.mkdir()
        (out / "matches.png").write_bytes(b"mine")
        assert align(pair, "ecc", out, capsys)[0] == 0  # writes no matches.png
        assert (out / "matches.png").read_bytes() == b"mine"
        # hdreg's own stale matches.png goes: a folder shows one result ...
        assert align(pair, "sift", out, capsys)[0] == 0
        assert align(pair, "ecc", out, capsys)[0] == 0
        assert not (out / "matches.png").exists()
        # ... unless someone changed it since hdreg wrote it
        assert align(pair, "sift", out, capsys)[0] == 0
        (out / "matches.png").write_bytes(b"edited")
        assert align(pair, "ecc", out, capsys)[0] == 0
        assert (out / "matches.png").read_bytes() == b"edited"
        assert {"homography.json", "overlay.png", "b_warped_to_a.png"} <= {
            p.name for p in out.iterdir()
        }


# -- hdreg make-benchmark --out ------------------------------------------------------------------
class TestMakeBenchmarkOut:
    def test_out_under_a_file_is_named(self, tmp_path, capsys):
        blocker = tmp_path / "notes.txt"
        blocker.write_text("mine")
        out = blocker / "bench.npz"
        assert hdreg(["make-benchmark", "--n", "2", "--out", str(out)]) == 2
        line = error_line(capsys.readouterr().err, "hdreg make-benchmark")
        assert line == (
            f"hdreg make-benchmark: error: cannot write benchmark {out}: {blocker} is a file, "
            "not a folder"
        )
        assert hdreg(["make-benchmark", "--protocol", "wide", "--n", "1",
                      "--out", str(blocker / "wide")]) == 2  # fmt: skip
        line = error_line(capsys.readouterr().err, "hdreg make-benchmark")
        assert f"cannot write benchmark folder {blocker / 'wide'}: {blocker} is a file" in line
        assert blocker.read_text() == "mine"

    def test_wide_into_an_earlier_benchmark_is_one_line(self, tmp_path, capsys):
        out = tmp_path / "wide"
        args = ["make-benchmark", "--protocol", "wide", "--n", "1", "--view-size", "64", "48",
                "--out", str(out)]  # fmt: skip
        assert hdreg(args) == 0
        capsys.readouterr()
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert hdreg(args) == 2
        line = error_line(capsys.readouterr().err, "hdreg make-benchmark")
        assert f"{out} holds an earlier benchmark (manifest.json): pass --overwrite" in line
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# -- Ctrl-C in hdreg evaluate --------------------------------------------------------------------
class TestInterrupt:
    def test_ctrl_c_is_one_line_and_exit_130(self, tmp_path, capsys, monkeypatch):
        import hdreg.apps.evaluate as app

        def interrupted(cfg):
            raise KeyboardInterrupt

        monkeypatch.setattr(app, "evaluate_from_config", interrupted)
        run = tmp_path / "run"
        code, _, err = evaluate([f"hydra.run.dir={run}"], capsys)
        assert code == 130
        assert [line for line in err.splitlines() if line.strip()] == [
            "hdreg evaluate: interrupted"
        ]
        assert not (run / LOCK_FILE).exists()

    def test_an_interrupted_report_is_not_half_written(self, tmp_path, monkeypatch):
        import hdreg.apps.evaluate as app

        def write_then_interrupt(result, out_dir):
            (Path(out_dir) / "results.md").write_text("| half")
            raise KeyboardInterrupt

        monkeypatch.setattr(app, "write_report", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            app.write_report_whole(None, tmp_path)
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.slow  # a cold evaluate.py and two spawned workers: about 10 s on two cores
    def test_ctrl_c_with_worker_processes(self, tmp_path):
        """Ctrl-C printed one to three KeyboardInterrupt tracebacks (the workers' too)."""
        started, run = tmp_path / "started", tmp_path / "run"
        args = [sys.executable, str(REPO / "evaluate.py"), "benchmark.source=samples",
                "benchmark.n=16", "methods=[slow]", "num_workers=2", "batch_size=1",
                "progress=false", "+method_params.slow._target_=tests.slow_estimator.SlowIdentity",
                "+method_params.slow.seconds=4", f"+method_params.slow.marker={started}",
                f"hydra.run.dir={run}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("HDREG_DEBUG", "HYDRA_FULL_ERROR")}
        proc = subprocess.Popen(args, cwd=REPO, env=env, text=True, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # one worker on the slow first pair, the other done and idle
            assert proc.poll() is None, proc.communicate()
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 130, err
        assert [line for line in err.splitlines() if line.strip()] == [
            "evaluate.py: interrupted"
        ], err
        assert sorted(p.name for p in run.iterdir()) == [".hydra", "evaluate.log"]
