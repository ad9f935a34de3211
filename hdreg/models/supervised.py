"""Supervised HomographyNet (DeTone et al. 2016): trained on the four-point labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hdreg.models.base import HomographyModule, OptimizerFactory, SchedulerFactory, corner_distance
from hdreg.models.homographynet import Head, HomographyNet, offsets_to_bins

__all__ = ["SupervisedHomography"]


class SupervisedHomography(HomographyModule):
    """HomographyNet with its paper's losses.

    * regression head: mean squared error between predicted and true offsets, both divided by ρ
      (DeTone et al.'s Euclidean loss, on targets scaled to [−1, 1]);
    * classification head: cross-entropy of the 8 coordinates over ``num_bins`` bins.

    The network's arguments are this module's hyperparameters (``save_hyperparameters``), so
    ``SupervisedHomography.load_from_checkpoint(path)`` rebuilds the trained model alone.
    """

    display_name = "homographynet"

    def __init__(
        self,
        head: Head = "regression",
        width: float = 1.0,
        input_size: int = 128,
        patch_size: int = 128,
        rho: float = 32.0,
        num_bins: int = 21,
        dropout: float = 0.5,
        normalize: bool = True,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        panel_pairs: int = 4,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        net = HomographyNet(head, width, input_size, patch_size, rho, num_bins, dropout, normalize)
        super().__init__(
            net, optimizer, scheduler, scheduler_interval, panel_pairs, channels_last, compile
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.display_name = f"homographynet-{'cls' if head == 'classification' else 'reg'}"

    def loss(self, out: dict[str, Tensor], offsets_true: Tensor) -> Tensor:
        net = self.net
        if net.head == "regression":
            return F.mse_loss(out["offsets"] / net.rho, offsets_true / net.rho)
        target = offsets_to_bins(offsets_true, net.rho, net.num_bins)
        return F.cross_entropy(out["logits"].reshape(-1, net.num_bins), target.reshape(-1))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        batch = self.to_float(batch)
        out = self(batch["patch_a"], batch["patch_b"])
        loss = self.loss(out, batch["offsets"])
        mace = corner_distance(out["offsets"].detach().float(), batch["offsets"]).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mace", mace)
        return loss
