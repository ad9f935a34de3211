"""docs/contributing.md's walk-through "Adding a network", followed with a toy network: its
class (here, instead of a module under ``hdreg/models/``), its model config (in a config folder
of its own, instead of ``hdreg/configs/model/``) and its allow-list entry (``register``, as code
outside hdreg does, instead of a line in ``hdreg/models/checkpoint.py``'s ``NETS``). It trains
with ``python train.py``'s job and its checkpoint loads back through ``hdreg.load``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import Tensor, nn

import hdreg
from hdreg.models import checkpoint
from hdreg.training.job import train_from_config

from .conftest import REPO

TOY_CONFIG = """\
# A toy network: one convolution, global pooling, eight numbers.
defaults:
  - optimizer: sgd
  - scheduler: step
  - _self_

_target_: hdreg.models.supervised.SupervisedHomography
name: toy
net:
  _target_: tests.test_contributing.ToyNet
  channels: 4
  patch_size: ${data.patch_size}
  rho: ${data.rho}
loss:
  _target_: hdreg.models.losses.OffsetMSE
  rho: ${model.net.rho}
"""


class ToyNet(nn.Module):
    """The smallest network the models take: ``forward(patch_a, patch_b)`` on ``(B, 1, P, P)``
    patches in [0, 1] returns ``offsets (B, 4, 2)`` in pixels; ``patch_size`` and ``rho`` say
    which patches and perturbation range it was built for."""

    def __init__(self, channels: int = 4, patch_size: int = 128, rho: float = 32.0) -> None:
        super().__init__()
        self.patch_size, self.rho = patch_size, rho
        self.features = nn.Sequential(nn.Conv2d(2, channels, 3, stride=4), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(channels, 8)

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> dict[str, Tensor]:
        x = self.features(torch.cat([patch_a, patch_b], dim=1)).flatten(1)
        return {"offsets": self.head(x).view(-1, 4, 2) * self.rho}


def train(overrides: list[str], config_dir: Path, out_dir: Path) -> str:
    """``python train.py OVERRIDES`` with ``config_dir`` on Hydra's search path, run in this
    process into ``out_dir``; returns its stdout."""
    search = f"hydra.searchpath=[file://{config_dir}]"
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "hdreg" / "configs")):
        cfg = compose("train", overrides=[search, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.name = "train"
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_from_config(cfg)
    return out.getvalue()


def test_a_new_network_trains_and_loads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "NETS", dict(checkpoint.NETS))  # the entry ends with the test
    checkpoint.register("net", ToyNet)  # the allow-list entry
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "toy.yaml").write_text(TOY_CONFIG)
    run = tmp_path / "run"
    train(
        ["model=toy", "trainer.max_steps=2", "data.steps_per_epoch=2", "data.batch_size=4",
         "data.val_pairs=4", "data.test_pairs=4", "data.eval_batch_size=4", "data.num_workers=0",
         "evaluate_test=false", "logger=none", "callbacks.progress_bar.refresh_rate=0"],
        tmp_path / "configs",
        run,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert saved["hdreg_model"]["net"]["_target_"] == "tests.test_contributing.ToyNet"

    net = hdreg.load(last)
    assert isinstance(net, ToyNet) and not net.training
    trained = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
    assert net.state_dict().keys() == trained.keys()
    for key, value in net.state_dict().items():
        assert torch.equal(value, trained[key]), key
    fresh = ToyNet(4, net.patch_size, net.rho).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in trained.items())  # the steps changed it
    patches = torch.rand(2, 1, net.patch_size, net.patch_size)
    assert net(patches, patches)["offsets"].shape == (2, 4, 2)
