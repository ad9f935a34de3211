"""The real train/evaluate configs, shrunk to CPU and a temporary folder, run end to end.

Training runs in this process (``run_train``: the composed config handed to the job behind
``train.py``); only the DDP runs start ``train.py`` itself, as a user does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import open_dict

from hdreg.apps.evaluate import evaluate_from_config
from hdreg.models.base import build_module
from hdreg.models.checkpoint import load_module, save_weights
from hdreg.training.job import train_from_config

from .conftest import REPO
from .warm_python import run_python

CONFIGS = str(REPO / "hdreg" / "configs")
# A tiny network and tiny fixed sets: the pipeline, not the accuracy, is under test.
TINY = [
    "model.net.width=0.125",
    "model.net.input_size=32",
    "data.batch_size=8",
    "data.val_pairs=16",
    "data.test_pairs=16",
    "data.eval_batch_size=16",
    "data.num_workers=0",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]


def compose_train(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        return compose("train", overrides=overrides, return_hydra_config=False)


def _run_job(config: str, overrides: list[str], out_dir: Path, job) -> tuple[object, str]:
    """Compose ``config`` as ``train.py``/``evaluate.py`` would, with ``out_dir`` as the run
    directory, and run ``job`` on it in this process; returns its result and its stdout."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.name = config
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = job(cfg)
    return result, out.getvalue()


def run_train(overrides: list[str], out_dir: Path) -> tuple[object, str]:
    return _run_job("train", overrides, out_dir, train_from_config)


def run_script(script: str, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in a process of its own, forked from a warm interpreter
    (tests/warm_python.py); the processes it starts (DDP's other ranks) start cold."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    proc = run_python([REPO / script, *args], env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def initial_state(overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights a run with these overrides starts from (train.py seeds, then builds)."""
    cfg = compose_train(overrides)
    pl.seed_everything(cfg.seed)
    return build_module(cfg.model).state_dict()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


MODEL_CONFIGS = sorted(p.stem for p in (REPO / "hdreg" / "configs" / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_every_model_config_trains_alone(model, tmp_path):
    """``python train.py model=<name>``: composed with the default train config (and its default
    experiment), the module builds and takes one optimizer step."""
    cfg = compose_train([f"model={model}"])
    module = build_module(cfg.model)
    assert module.net.patch_size == instantiate(cfg.data).protocol.patch_size
    one_step = [f"model={model}", "data.batch_size=2", "data.val_pairs=2", "data.test_pairs=2",
                "data.eval_batch_size=2", "data.num_workers=0", "trainer.max_steps=1",
                "data.steps_per_epoch=1", "evaluate_test=false", "logger=none",
                "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip
    run_train(one_step, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1 and ckpt["hdreg_model"]["name"] == cfg.model.name


class TestConfigsCompose:
    @pytest.mark.parametrize(
        "experiment",
        [
            "cpu_quick", "detone2016", "detone2016_fast", "nguyen2018", "unsupervised_cpu_quick",
            "iterative_cpu", "iterative_gpu", "iterative_unsupervised_cpu",
        ],
    )  # fmt: skip
    def test_experiments(self, experiment):
        cfg = compose_train([f"experiment={experiment}", "data.source=samples"])
        module = build_module(cfg.model)
        dm = instantiate(cfg.data)
        assert module.net.patch_size == dm.protocol.patch_size
        assert module.net.rho == dm.protocol.rho
        assert dm.with_full_image == getattr(module.loss, "needs_full_image", False)
        assert cfg.trainer.max_steps > 0

    def test_nguyen2018_learning_rate_ends_at_0_92e_4(self):
        """The recipe's comment: exponential decay 0.96, staircase, lr ends at ~0.92e-4."""
        cfg = compose_train(["experiment=nguyen2018"])
        module = build_module(cfg.model)
        scheduler = module.scheduler_factory(module.optimizer_factory(module.parameters()))
        scheduler.last_epoch = cfg.trainer.max_steps
        assert scheduler._get_closed_form_lr()[0] == pytest.approx(0.9216e-4)
        assert module.loss.max_offset == 2 * 45.0  # rho = 45 reaches the loss's clamp

    def test_detone2016_divides_the_rate_by_10_every_30k_steps(self):
        cfg = compose_train(["experiment=detone2016"])
        module = build_module(cfg.model)
        scheduler = module.scheduler_factory(module.optimizer_factory(module.parameters()))
        rates = []
        for step in (0, 29_999, 30_000, 60_000, cfg.trainer.max_steps - 1):
            scheduler.last_epoch = step
            rates.append(scheduler._get_closed_form_lr()[0])
        assert rates == pytest.approx([5e-3, 5e-3, 5e-4, 5e-5, 5e-5])

    @pytest.mark.parametrize(
        "model", ["homographynet_regression", "homographynet_classification", "unsupervised"]
    )
    @pytest.mark.parametrize("data", ["samples", "folder", "coco"])
    def test_model_and_data_groups(self, model, data, tmp_path):
        cfg = compose_train([f"model={model}", f"data={data}", f"data.source={tmp_path}"])
        module = build_module(cfg.model)
        assert module.net.head == ("classification" if "classification" in model else "regression")
        dm = instantiate(cfg.data)
        # the unsupervised loss warps full images: its model config asks the data for them
        assert dm.with_full_image == (model == "unsupervised")
        assert module.hdreg_model["net"]["rho"] == dm.protocol.rho

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
                module = build_module(cfg.model)
                optim = module.optimizer_factory(params=module.parameters())
                module.scheduler_factory(optimizer=optim)
        cfg = compose_train(["~model/scheduler"])  # no scheduler: a constant learning rate
        assert "scheduler" not in cfg.model

    def test_evaluate_config(self):
        with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
            for bench in ("synthetic", "pairs"):
                cfg = compose("evaluate", overrides=[f"benchmark={bench}"])
                assert cfg.methods
            kornia = importlib.util.find_spec("kornia") is not None
            for key, params in cfg.method_params.items():
                if not kornia and params["_target_"].endswith(".MatcherEstimator"):
                    # without hdreg[matchers] (the README's set-up): refused, naming the extra
                    with pytest.raises(InstantiationException, match=r"hdreg\[matchers\]"):
                        instantiate(params)
                    continue
                # Hydra's keys spell a matcher's '+' as '_' (method_params.disk_lightglue)
                assert instantiate(params).name.replace("+", "_") == key


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Four training steps in two epochs, with TensorBoard, checkpoints and the test table."""
    run = tmp_path_factory.mktemp("run")
    overrides = [*TINY, "trainer.max_steps=4", "data.steps_per_epoch=2"]
    best_score, stdout = run_train(overrides, run)
    return run, stdout, best_score, overrides


def _steps(out_dir: Path, overrides: list[str], steps: int = 2) -> list[str]:
    return [*TINY, *overrides, f"trainer.max_steps={steps}", f"data.steps_per_epoch={steps}",
            "evaluate_test=false", "logger=none"]  # fmt: skip


class TestTraining:
    @pytest.mark.parametrize(
        "overrides",
        [
            [],
            ["model=homographynet_classification"],
            # the acceptance command's shape: the model alone, no experiment, asks for full images
            ["model=unsupervised"],
            # the GPU-rate path on the CPU: batches generated on the device, bf16 autocast,
            # channels-last, and the image cache
            ["data.generator=torch", "trainer.precision=bf16-mixed", "model.channels_last=true"],
            [
                "experiment=unsupervised_cpu_quick",
                "data.generator=torch",
                "trainer.precision=bf16-mixed",
                "model.channels_last=true",
            ],
        ],
        ids=[
            "regression",
            "classification",
            "unsupervised",
            "torch-bf16",
            "unsupervised-torch-bf16",
        ],
    )
    def test_two_steps_train_and_save_a_rebuildable_model(self, overrides, tmp_path):
        args = _steps(tmp_path, [*overrides, f"data.cache_dir={tmp_path / 'cache'}"])
        before = initial_state(args)
        run_train(args, tmp_path)
        last = tmp_path / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 2
        assert math.isfinite(ckpt["val_mace_best"])
        module = load_module(last)
        after = module.state_dict()
        # both optimizer steps reached the first convolution and the output layer
        assert {"net.features.0.weight", "net.regressor.5.weight"} <= changed(before, after)
        assert module.hdreg_model == ckpt["hdreg_model"] and "optimizer" not in ckpt["hdreg_model"]
        assert list((tmp_path / "cache").glob("*.npy"))

    def test_outputs_and_test_table(self, trained_run):
        run, stdout, best_score, _ = trained_run
        assert (run / "checkpoints" / "last.ckpt").is_file()
        best = run / "checkpoints" / "best.ckpt"
        results = json.loads((run / "test" / "results.json").read_text())
        assert list(results) == ["identity", "sift", "homographynet-reg"]
        assert all(r["n"] == 16 for r in results.values())
        assert "| homographynet-reg |" in stdout and f"scoring {best}" in stdout
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        assert best_score == pytest.approx(ckpt["val_mace_best"])

    def test_checkpoint_rebuilds_model_alone(self, trained_run, tmp_path):
        from hdreg.models.supervised import SupervisedHomography
        from hdreg.models.unsupervised import UnsupervisedHomography

        run, *_ = trained_run
        best = run / "checkpoints" / "best.ckpt"
        module = load_module(best)
        assert isinstance(module, SupervisedHomography) and module.name == "homographynet-reg"
        assert module.net.input_size == 32 and module.net.features[0].out_channels == 8
        # Lightning's way goes through the same loader, and checks the class
        same = SupervisedHomography.load_from_checkpoint(best)
        for k, v in module.state_dict().items():
            assert torch.equal(v, same.state_dict()[k]), k
        with pytest.raises(TypeError, match="not a UnsupervisedHomography"):
            UnsupervisedHomography.load_from_checkpoint(best)
        # a weights-only file answers exactly as the training checkpoint
        light = save_weights(module, tmp_path / "weights.pt")
        assert set(torch.load(light, weights_only=True)) == {
            "hdreg_model",
            "state_dict",
            "val_mace_best",
            "tensors_sha256",
        }
        again = load_module(light)
        x = torch.rand(3, 1, 128, 128), torch.rand(3, 1, 128, 128)
        assert torch.equal(module(*x)["offsets"], again(*x)["offsets"])
        assert again.val_mace_best.min_value == module.val_mace_best.min_value

    def test_tensorboard_scalars_and_panel(self, trained_run):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        run, *_ = trained_run
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 10})
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert {
            "train/loss",
            "train/mace",
            "val/mace",
            "val/mace_best",
            "train/lr",
            "test/mace",
        } <= scalars
        assert "val/panel" in acc.Tags()["images"]
        maces = [e.value for e in acc.Scalars("val/mace")]
        assert [e.step for e in acc.Scalars("val/mace")] == [1, 3]  # end of each 2-step epoch
        assert [e.value for e in acc.Scalars("val/mace_best")] == pytest.approx(
            [maces[0], min(maces)]
        )

    def test_evaluate_loads_the_checkpoint(self, trained_run, tmp_path):
        run, *_ = trained_run
        ckpt = run / "checkpoints" / "best.ckpt"
        _, stdout = _run_job(
            "evaluate",
            ["benchmark.source=samples", "benchmark.n=8", "methods=[identity]",
             f"checkpoints=[{ckpt}]", "progress=false", "num_workers=1"],  # no process pool
            tmp_path, evaluate_from_config,
        )  # fmt: skip
        results = json.loads((tmp_path / "results.json").read_text())
        assert list(results) == ["identity", "homographynet-reg"]
        assert "| homographynet-reg |" in stdout

    def test_resume_from_last(self, tmp_path):
        """Interrupted at step 4 of 6, resumed from last.ckpt: it goes on at step 4, with the
        optimizer state, the LR schedule and val/mace_best where they were (StepLR halving
        every 3 steps)."""
        schedule = [*TINY, "model/optimizer=sgd", "model/scheduler=step", "model.optimizer.lr=0.01",
                    "model.scheduler.step_size=3", "model.scheduler.gamma=0.5",
                    "data.steps_per_epoch=2", "evaluate_test=false"]  # fmt: skip
        first, second = tmp_path / "first", tmp_path / "second"
        run_train([*schedule, "trainer.max_steps=4"], first)
        last = first / "checkpoints" / "last.ckpt"
        before = torch.load(last, map_location="cpu", weights_only=True)
        assert before["global_step"] == 4 and before["epoch"] == 1
        run_train([*schedule, "trainer.max_steps=6", f"ckpt_path={last}"], second)
        after = torch.load(
            second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        assert after["global_step"] == 6 and after["epoch"] == 2
        assert (
            after["lr_schedulers"][0]["_step_count"]
            == before["lr_schedulers"][0]["_step_count"] + 2
        )
        assert after["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**2)
        assert after["val_mace_best"] <= before["val_mace_best"]
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(second / "tensorboard"))
        acc.Reload()
        lrs = {e.step: e.value for e in acc.Scalars("train/lr")}
        assert min(lrs) >= 4  # steps 0..3 are not replayed
        assert lrs[min(lrs)] == pytest.approx(0.005)  # not the restarted schedule's 0.01
        # the best so far carried over: the resumed epoch's val/mace_best is no worse
        best = acc.Scalars("val/mace_best")[-1].value
        assert best == pytest.approx(
            min(before["val_mace_best"], acc.Scalars("val/mace")[-1].value)
        )


class TestCheckpointErrors:
    def test_resume_from_a_file_without_training_state_or_of_another_model(self, tmp_path):
        from hdreg.errors import user_error_message

        bare = tmp_path / "bare.ckpt"
        torch.save({"state_dict": {}, "global_step": 3}, bare)  # a torch file, no Lightning keys
        with pytest.raises(ValueError, match=r"bare.ckpt is not a training checkpoint") as info:
            run_train(_steps(tmp_path / "a", [f"ckpt_path={bare}"], steps=1), tmp_path / "a")
        assert "pytorch-lightning_version" in str(info.value)
        assert "\n" not in user_error_message(info.value)
        run_train(_steps(tmp_path / "b", [], steps=1), tmp_path / "b")
        last = tmp_path / "b" / "checkpoints" / "last.ckpt"
        other = _steps(tmp_path / "c", ["model.net.width=0.25", f"ckpt_path={last}"], steps=2)
        with pytest.raises(ValueError, match=r"last.ckpt holds a different model") as info:
            run_train(other, tmp_path / "c")
        message = user_error_message(info.value)
        assert f"ckpt_path={last}" in message and "\n" not in message

    def test_missing_corrupt_foreign_and_old_files_are_named(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"nothing.ckpt does not exist"):
            load_module(tmp_path / "nothing.ckpt")
        corrupt = tmp_path / "corrupt.ckpt"
        corrupt.write_bytes(b"not a checkpoint")
        with pytest.raises(ValueError, match=r"corrupt.ckpt is not an hdreg .*text file"):
            load_module(corrupt)
        foreign = tmp_path / "foreign.ckpt"
        torch.save({"state_dict": {}}, foreign)
        with pytest.raises(ValueError, match=r"foreign.ckpt is not an hdreg checkpoint"):
            load_module(foreign)
        old = tmp_path / "old.ckpt"
        torch.save({"state_dict": {}, "hdreg_module": "hdreg.models.supervised.X"}, old)
        with pytest.raises(ValueError, match=r"old.ckpt .* older hdreg"):
            load_module(old)

    def test_a_file_may_only_build_hdreg_models(self, tmp_path):
        from .conftest import tiny_model_config

        config = tiny_model_config()
        config["loss"] = {"_target_": "os.system", "_args_": ["echo owned"]}
        path = tmp_path / "evil.ckpt"
        torch.save({"hdreg_model": config, "state_dict": {}}, path)
        with pytest.raises(
            ValueError, match=r"evil.ckpt: refused, .*'os.system', which is not one of hdreg's"
        ):
            load_module(path)

    def test_weights_that_do_not_fit_the_config(self, tmp_path):
        from .conftest import tiny_model_config, tiny_module

        path = save_weights(tiny_module(), tmp_path / "w.pt")
        ckpt = torch.load(path, weights_only=True)
        ckpt["hdreg_model"] = tiny_model_config(width=0.25)
        del ckpt["tensors_sha256"]
        torch.save(ckpt, path)
        with pytest.raises(ValueError, match=r"w.pt do not fit its model config"):
            load_module(path)


def _ddp(tmp_path: Path, overrides: list[str]) -> dict:
    run_script("train.py", [*TINY, *overrides, "trainer=ddp", "trainer.accelerator=cpu",
                            "trainer.devices=2", "trainer.max_steps=3", "data.steps_per_epoch=3",
                            "evaluate_test=false", f"hydra.run.dir={tmp_path}"],
               timeout=600)  # fmt: skip
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Lightning DDP with 2 CPU processes (gloo) through train.py and the real config."""
    assert _ddp(tmp_path, [])["global_step"] == 3


@pytest.mark.slow
def test_ddp_two_cpu_processes_unsupervised(tmp_path):
    """The unsupervised model under DDP with every training prediction degenerate (the
    photometric loss masks all of them): every process takes every step; none returns None."""
    ckpt = _ddp(
        tmp_path,
        [
            "experiment=unsupervised_cpu_quick",
            "model.net._target_=tests.nets.CollapsingWhileTraining",
        ],
    )
    assert ckpt["global_step"] == 3


class TestMethodRegistry:
    def test_every_method_config_is_a_valid_test_method(self):
        from hdreg.config import method_names
        from hdreg.estimators.registry import check_method_specs

        specs = check_method_specs(["identity", "orb", "sift+ecc"], {})
        assert [s.method for s in specs] == ["identity", "orb", "sift"]
        assert {"orb", "akaze", "brisk", "ecc", "sift"} <= set(method_names())

    def test_an_unknown_test_method_is_refused_in_one_line_before_training(self, tmp_path):
        # a cold start, as a user's: the one train.py run of the quick tests that is not forked
        # from the warm interpreter (whatever the imports print would show here)
        proc = run_python(
            [REPO / "train.py", "test_methods=[identity,nosuch]", f"hydra.run.dir={tmp_path}"],
            fresh=True,
        )
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("train.py: error: unknown method 'nosuch'")
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tensorboard").exists()
