"""Bad input ends in one ``error:`` line naming it, never in a traceback: a file that is not a
model given as a checkpoint, command-line overrides of the wrong type or with a typo, a folder
given as ``benchmark.path`` and a split without images."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

import hdreg
from hdreg.apps.cli import main
from hdreg.config import check_overrides, compose_config, config_dir
from hdreg.data.decoding import load_images
from hdreg.data.sources import folder_source
from hdreg.data.splits import images_of_split
from hdreg.errors import user_error_message
from hdreg.evaluation.benchmarks import synthetic_pairs
from hdreg.models.checkpoint import load_torch_file, non_pytorch_format
from hdreg.training.checkpointing import check_checkpoint

from .conftest import textured_image

# The first bytes of an ONNX file as torch.onnx.export writes it: ir_version 9, producer "pytorch".
ONNX_HEAD = b"\x08\x09\x12\x07pytorch\x1a\x052.6.0:\x10\n\x05input"


def _one_error_line(err: str, program: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
    assert "weights_only" not in err and "Traceback" not in err, err
    return lines[0]


# -- files that are not models, given as a checkpoint --------------------------------------------
@pytest.fixture
def not_models(tmp_path: Path) -> dict[str, Path]:
    """Files people hand over as a checkpoint by mistake: name -> path."""
    files = {
        "text": tmp_path / "notes.ckpt",
        "png": tmp_path / "photo.png",
        "onnx": tmp_path / "model.onnx",
        "onnx-renamed": tmp_path / "model.pt",
        "npz": tmp_path / "bench.npz",
        "pickled-object": tmp_path / "object.pt",
        "empty": tmp_path / "empty.ckpt",
    }
    files["text"].write_text("hello world\n")  # torch.load raised KeyError on it
    cv2.imwrite(str(files["png"]), textured_image(64, 64))
    files["onnx"].write_bytes(ONNX_HEAD)
    files["onnx-renamed"].write_bytes(ONNX_HEAD)
    np.savez(files["npz"], patch_a=np.zeros((1, 8, 8), np.uint8))
    torch.save({"state_dict": argparse.Namespace(w=1)}, files["pickled-object"])
    files["empty"].write_bytes(b"")
    return files


EXPECTED = {
    "text": "(it is a text file)",
    "png": "(it is a PNG image)",
    "onnx": "(it is an ONNX model)",
    "onnx-renamed": "(it is an ONNX model)",
    "npz": "(it is a NumPy .npz archive)",
    "pickled-object": "it holds pickled Python objects (argparse.Namespace), which hdreg never",
    "empty": "is an empty file (0 bytes)",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_file_that_is_not_a_model_is_named_with_what_it_is(not_models, kind):
    path = not_models[kind]
    with pytest.raises(ValueError) as info:
        load_torch_file(path)
    message = user_error_message(info.value)
    assert message.startswith(str(path)) and EXPECTED[kind] in message, message
    assert "weights_only" not in message and "\n" not in message
    with pytest.raises(ValueError, match=r"not an hdreg checkpoint or weights file|empty file"):
        hdreg.load(str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_pytorch_files_are_recognised(tmp_path):
    new, old = tmp_path / "new.pt", tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, new)
    torch.save({"w": torch.ones(2)}, old, _use_new_zipfile_serialization=False)
    assert non_pytorch_format(new) is None and non_pytorch_format(old) is None
    assert load_torch_file(old, mmap=True)["w"].tolist() == [1.0, 1.0]  # older format: no mmap
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    assert "TorchScript" in non_pytorch_format(script)
    half = tmp_path / "half.pt"
    half.write_bytes(new.read_bytes()[: new.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"half.pt is a corrupt or truncated PyTorch file") as info:
        load_torch_file(half)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder: expected an hdreg checkpoint"):
        hdreg.load(str(tmp_path))


@pytest.mark.parametrize("kind", ["text", "png", "onnx"])
@pytest.mark.parametrize("command", ["align", "weights export", "export onnx"])
def test_every_command_taking_a_checkpoint_says_what_the_file_is(
    not_models, tmp_path, capsys, kind, command
):
    if command == "export onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    path = not_models[kind]
    out = tmp_path / "out"
    argv = {
        "align": ["align", str(not_models["png"]), str(not_models["png"]), "--checkpoint",
                  str(path), "--out", str(out)],
        "weights export": ["weights", "export", str(path), str(out / "w.pt")],
        "export onnx": ["export", "onnx", str(path), str(out / "m.onnx")],
    }[command]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, f"hdreg {command.split()[0]}")
    assert f"{path} is not an hdreg checkpoint or weights file {EXPECTED[kind]}" in line
    assert not out.exists() or not any(out.iterdir())


def _evaluate(overrides: list[str], out_dir: Path) -> None:
    """``evaluate.py OVERRIDES`` in this process, with ``out_dir`` as the run directory."""
    from hdreg.apps.evaluate import main as evaluate_main

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.name = "evaluate"
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate_main(cfg)


@pytest.mark.parametrize("kind", ["text", "png", "onnx"])
def test_evaluate_checkpoints_says_what_the_file_is(
    not_models, tmp_path, capsys, monkeypatch, kind
):
    monkeypatch.setattr(sys, "argv", ["evaluate.py"])  # as the script is run
    path = not_models[kind]
    overrides = ["benchmark.n=2", "methods=[identity]", f"checkpoints=[{path}]", "num_workers=1"]
    with pytest.raises(SystemExit) as info:
        _evaluate(overrides, tmp_path / "run")
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, "evaluate.py")
    assert f"{path} is not an hdreg checkpoint or weights file {EXPECTED[kind]}" in line


def test_ckpt_path_says_what_the_file_is(not_models):
    with pytest.raises(ValueError) as info:
        check_checkpoint(not_models["text"])  # torch.load's KeyError escaped here
    assert user_error_message(info.value) == (
        f"ckpt_path={not_models['text']} is not an hdreg checkpoint or weights file "
        "(it is a text file)"
    )


# -- command-line overrides ----------------------------------------------------------------------
BAD_OVERRIDES = [
    ("trainer.max_steps=five", "trainer.max_steps=five: expected an integer"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: expected an integer"),
    ("model.optimizer.lr=abc", "model.optimizer.lr=abc: expected a number >= 0"),
    ("data.batch_size=abc", "data.batch_size=abc: expected an integer >= 1"),
    ("seed=abc", "seed=abc: expected an integer"),
    ("batch_size=abc", "has no key 'batch_size'; did you mean data.batch_size?"),
    ("trainer.max_step=5", "trainer has no key 'max_step'; did you mean trainer.max_steps"),
    ("model=iterativ", "there is no model config 'iterativ' (did you mean iterative?); the "
     "options are homographynet_classification, homographynet_regression, iterative,"),
    ("trainer.max_steps==2", "cannot parse the override 'trainer.max_steps==2'"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "expected"), BAD_OVERRIDES)
def test_bad_overrides_end_in_one_line_before_any_run_folder(tmp_path, capsys, override, expected):
    run = tmp_path / "run"
    assert main(["train", override, f"hydra.run.dir={run}"]) == 2
    line = _one_error_line(capsys.readouterr().err, "hdreg train")
    assert line.startswith(f"hdreg train: error: {override}") or "parse" in expected, line
    assert expected in line, line
    assert not run.exists()


def test_a_bad_value_reaching_a_job_stops_it_before_training(capsys, monkeypatch):
    """A sweep's later jobs, or a config handed to ``main`` by code, are checked in the job."""
    from hdreg.apps.train import main as train_main

    monkeypatch.setattr(sys, "argv", ["train.py"])  # as the script is run
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["trainer.max_steps=five"])
    with pytest.raises(SystemExit) as info:
        train_main(cfg)
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, "train.py")
    assert line.endswith("trainer.max_steps=five: expected an integer")


def test_evaluate_overrides_are_checked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["evaluate", "num_workers=0", f"hydra.run.dir={run}"]) == 2
    line = _one_error_line(capsys.readouterr().err, "hdreg evaluate")
    assert line.endswith("num_workers=0: expected an integer >= 1 or auto")
    assert main(["evaluate", "methds=[sift]", f"hydra.run.dir={run}"]) == 2
    assert "has no key 'methds'; did you mean methods" in capsys.readouterr().err
    assert not run.exists()


def test_the_shipped_configs_and_sweeps_pass_the_checks():
    experiments = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    for experiment in experiments:
        assert check_overrides("train", [f"experiment={experiment}"]) is not None, experiment
    assert check_overrides("evaluate", ["num_workers=auto", "batch_size=8"]) is not None
    cfg = check_overrides("train", ["trainer.max_steps=4,8"], multirun=True)  # its first job
    assert cfg.trainer.max_steps == 4
    with pytest.raises(ValueError, match=r"trainer.max_steps=five: expected an integer"):
        check_overrides("train", ["trainer.max_steps=five,4"], multirun=True)


def test_hydra_help_still_works(capsys):
    assert main(["train", "--help"]) == 0
    assert "== Configuration groups ==" in capsys.readouterr().out


# -- benchmarks ----------------------------------------------------------------------------------
def _synthetic_benchmark(path: str):
    """``benchmark=synthetic benchmark.path=PATH``, as evaluate.py builds it."""
    params = OmegaConf.to_container(compose_config("benchmark/synthetic"), resolve=True)
    params.pop("_target_")
    return synthetic_pairs(**{**params, "path": path})


def test_a_folder_given_as_benchmark_path_is_called_a_folder(tmp_path):
    """It was reported as 'does not exist'."""
    with pytest.raises(IsADirectoryError) as info:
        _synthetic_benchmark(path=str(tmp_path))
    message = user_error_message(info.value)
    assert message.startswith(f"benchmark.path={tmp_path} is a folder: expected an .npz")
    assert f"benchmark=pairs benchmark.root={tmp_path}" in message
    (tmp_path / "photos-00000.npz").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=r"holds 1 \.npz file\(s\): name one"):
        _synthetic_benchmark(path=str(tmp_path))


def test_a_split_with_fraction_zero_is_named(tmp_path, capsys):
    """``--split test --split-fractions 1 0 0`` blamed an empty images array."""
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"photo{i}.png"), textured_image(seed=i))
    argv = ["make-benchmark", "--source", str(tmp_path), "--split", "test", "--split-fractions",
            "1", "0", "0", "--n", "2", "--out", str(tmp_path / "b.npz")]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "hdreg make-benchmark")
    assert "split 'test' has fraction 0 in --split-fractions 1 0 0" in line
    assert "give test a positive share there, or choose another --split" in line
    assert not (tmp_path / "b.npz").exists()

    images = load_images(folder_source(tmp_path), (320, 240))
    options = ("benchmark.split", "benchmark.split_fractions")
    with pytest.raises(ValueError, match=r"benchmark.split_fractions=\[0.5, 0, 0.5\]"):
        images_of_split(images, "val", (0.5, 0, 0.5), 0, options=options)
    assert len(images_of_split(images, "test", (0.5, 0, 0.5), 0)) > 0
