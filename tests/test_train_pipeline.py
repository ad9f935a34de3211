"""The real train/evaluate configs, shrunk to CPU and a temporary folder, run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from .conftest import REPO

CONFIGS = str(REPO / "configs")
# A tiny network and tiny fixed sets: the pipeline, not the accuracy, is under test.
TINY = [
    "model.width=0.125",
    "model.input_size=32",
    "data.batch_size=8",
    "data.val_pairs=16",
    "data.test_pairs=16",
    "data.eval_batch_size=16",
    "data.num_workers=0",
    "trainer.log_every_n_steps=1",
]


def compose_train(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        return compose("train", overrides=overrides, return_hydra_config=False)


def run_script(script: str, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


class TestConfigsCompose:
    @pytest.mark.parametrize(
        "experiment",
        ["cpu_quick", "detone2016", "detone2016_fast", "nguyen2018", "unsupervised_cpu_quick"],
    )
    def test_experiments(self, experiment):
        cfg = compose_train([f"experiment={experiment}", "data.source=samples"])
        model = instantiate(cfg.model)
        assert model.hparams.patch_size == cfg.data.patch_size
        instantiate(cfg.data)
        assert cfg.trainer.max_steps > 0

    def test_nguyen2018_is_the_official_recipe(self):
        cfg = compose_train(["experiment=nguyen2018"])
        assert cfg.model._target_ == "hdreg.models.unsupervised.UnsupervisedHomography"
        assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-4
        assert cfg.data.batch_size == 128 and cfg.data.rho == 45 and cfg.data.with_full_image
        assert cfg.model.scheduler.gamma == 0.96 and cfg.trainer.max_steps == 150000

    def test_detone2016_is_the_paper_recipe(self):
        cfg = compose_train(["experiment=detone2016"])
        opt = cfg.model.optimizer
        assert opt._target_ == "torch.optim.SGD" and opt.lr == 0.005 and opt.momentum == 0.9
        assert cfg.model.scheduler.step_size == 30000 and cfg.model.scheduler.gamma == 0.1
        assert cfg.trainer.max_steps == 90000 and cfg.data.batch_size == 64 and cfg.data.rho == 32
        assert cfg.model.width == 1.0 and cfg.model.input_size == 128

    @pytest.mark.parametrize(
        "model", ["homographynet_regression", "homographynet_classification", "unsupervised"]
    )
    @pytest.mark.parametrize("data", ["samples", "folder", "coco"])
    def test_model_and_data_groups(self, model, data, tmp_path):
        cfg = compose_train([f"model={model}", f"data={data}", f"data.source={tmp_path}"])
        module = instantiate(cfg.model)
        assert module.net.head == cfg.model.get("head", "regression")
        dm = instantiate(cfg.data)
        assert dm.batch_size == cfg.data.batch_size

    @pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
    @pytest.mark.parametrize("logger", ["tensorboard", "none"])
    def test_trainer_and_logger_groups(self, trainer, logger, tmp_path):
        cfg = compose_train([f"trainer={trainer}", f"logger={logger}", "trainer.accelerator=cpu",
                             "trainer.devices=1", "paths.output_dir=" + str(tmp_path)])  # fmt: skip
        if trainer == "ddp":
            assert cfg.trainer.strategy == "ddp"
            return  # instantiating DDP would start processes
        tr = instantiate(
            cfg.trainer, logger=[instantiate(c) for c in (cfg.logger or {}).values()] or False
        )
        assert tr.max_steps == cfg.trainer.max_steps

    def test_optimizer_and_scheduler_groups(self):
        for opt in ("sgd", "adam", "adamw"):
            for sched in ("step", "onecycle", "exponential_staircase"):
                cfg = compose_train([f"model/optimizer={opt}", f"model/scheduler={sched}"])
                module = instantiate(cfg.model)
                optim = module.optimizer_factory(params=module.parameters())
                module.scheduler_factory(optimizer=optim)
        cfg = compose_train(["~model/scheduler"])  # no scheduler: a constant learning rate
        assert "scheduler" not in cfg.model

    def test_evaluate_config(self):
        with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
            for bench in ("synthetic", "pairs"):
                cfg = compose("evaluate", overrides=[f"benchmark={bench}"])
                assert cfg.methods
            for name, params in cfg.method_params.items():
                assert instantiate(params).name == name


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Four training steps in two epochs through train.py, with TensorBoard and checkpoints."""
    run = tmp_path_factory.mktemp("run")
    proc = run_script("train.py", [*TINY, "trainer.max_steps=4", "data.steps_per_epoch=2",
                                   f"hydra.run.dir={run}"])  # fmt: skip
    return run, proc


class TestTraining:
    def test_fast_dev_run(self, tmp_path):
        run_script("train.py", [*TINY, "+trainer.fast_dev_run=true", "evaluate_test=false",
                                f"hydra.run.dir={tmp_path}"])  # fmt: skip

    def test_fast_dev_run_unsupervised(self, tmp_path):
        run_script("train.py", ["experiment=unsupervised_cpu_quick", *TINY, "+trainer.fast_dev_run=true",
                                "evaluate_test=false", f"hydra.run.dir={tmp_path}"])  # fmt: skip

    @pytest.mark.parametrize("experiment", ["cpu_quick", "unsupervised_cpu_quick"])
    def test_fast_dev_run_on_device_generation_bf16(self, experiment, tmp_path):
        """The GPU-rate path on the CPU: batches generated on the device, bf16 autocast,
        channels-last, and the image cache."""
        run_script("train.py", [f"experiment={experiment}", *TINY, "+trainer.fast_dev_run=true",
                                "data.generator=torch", "trainer.precision=bf16-mixed",
                                "model.channels_last=true", f"data.cache_dir={tmp_path / 'cache'}",
                                "evaluate_test=false", f"hydra.run.dir={tmp_path}"])  # fmt: skip
        assert list((tmp_path / "cache").glob("*.npy"))

    def test_outputs_and_test_table(self, trained_run):
        run, proc = trained_run
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "checkpoints" / "best.ckpt").is_file()
        results = json.loads((run / "test" / "results.json").read_text())
        assert list(results) == ["identity", "sift", "homographynet-reg"]
        assert all(r["n"] == 16 for r in results.values())
        assert "| homographynet-reg |" in proc.stdout

    def test_checkpoint_rebuilds_model_alone(self, trained_run):
        from hdreg.models.supervised import SupervisedHomography

        run, _ = trained_run
        module = SupervisedHomography.load_from_checkpoint(
            run / "checkpoints" / "best.ckpt", map_location="cpu"
        )
        assert module.hparams.width == 0.125 and module.net.input_size == 32

    def test_tensorboard_scalars_and_panel(self, trained_run):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        run, _ = trained_run
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 10})
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert {"train/loss", "val/mace", "val/mace_best", "train/lr", "test/mace"} <= scalars
        assert "val/panel" in acc.Tags()["images"]
        assert [e.step for e in acc.Scalars("val/mace")] == [1, 3]  # end of each 2-step epoch

    def test_evaluate_loads_the_checkpoint(self, trained_run, tmp_path):
        run, _ = trained_run
        ckpt = run / "checkpoints" / "best.ckpt"
        proc = run_script("evaluate.py", ["benchmark.source=samples", "benchmark.n=8", "methods=[identity]",
                                          f"checkpoints=[{ckpt}]", "progress=false",
                                          f"hydra.run.dir={tmp_path}"])  # fmt: skip
        results = json.loads((tmp_path / "results.json").read_text())
        assert list(results) == ["identity", "homographynet-reg"]
        assert "| homographynet-reg |" in proc.stdout

    def test_resume_from_last(self, tmp_path):
        """Interrupted at step 4 of 6, resumed from last.ckpt: it goes on at step 4, with the
        optimizer state and the LR schedule where they were (StepLR halving every 3 steps)."""
        schedule = ["model/optimizer=sgd", "model/scheduler=step", "model.optimizer.lr=0.01",
                    "model.scheduler.step_size=3", "model.scheduler.gamma=0.5",
                    "data.steps_per_epoch=2", "evaluate_test=false"]  # fmt: skip
        first, second = tmp_path / "first", tmp_path / "second"
        run_script("train.py", [*TINY, *schedule, "trainer.max_steps=4", f"hydra.run.dir={first}"])
        last = first / "checkpoints" / "last.ckpt"
        before = torch.load(last, map_location="cpu", weights_only=True)
        assert before["global_step"] == 4 and before["epoch"] == 1
        run_script("train.py", [*TINY, *schedule, "trainer.max_steps=6", f"ckpt_path={last}",
                                f"hydra.run.dir={second}"])  # fmt: skip
        after = torch.load(
            second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        assert after["global_step"] == 6 and after["epoch"] == 2
        assert (
            after["lr_schedulers"][0]["_step_count"]
            == before["lr_schedulers"][0]["_step_count"] + 2
        )
        assert after["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**2)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(second / "tensorboard"))
        acc.Reload()
        lrs = {e.step: e.value for e in acc.Scalars("train/lr")}
        assert min(lrs) >= 4  # steps 0..3 are not replayed
        assert lrs[min(lrs)] == pytest.approx(0.005)  # not the restarted schedule's 0.01


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Lightning DDP with 2 CPU processes (gloo) through the real config."""
    run_script("train.py", [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                            "trainer.max_steps=3", "data.steps_per_epoch=3", "evaluate_test=false",
                            f"hydra.run.dir={tmp_path}"], timeout=600)  # fmt: skip
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3


def test_readme_train_command_is_the_default(tmp_path):
    """The README's main job is `python train.py`: the default config is the CPU quick recipe."""
    cfg = compose_train([])
    assert cfg.trainer.accelerator == "cpu" and cfg.data.source == "samples"
    assert Path(REPO / "README.md").read_text().count("python train.py") >= 1
