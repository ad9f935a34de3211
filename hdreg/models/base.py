"""What every hdreg LightningModule shares: batches, validation metrics, the image panel,
optimizers from config, and the link from a checkpoint to the estimator interface."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from hdreg.geometry import (
    four_point_to_homography_ex,
    inside_mask,
    patch_corners,
    sample_at,
    warp_grid,
)
from hdreg.models.homographynet import HomographyNet

__all__ = ["HomographyModule", "corner_distance"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def corner_distance(offsets_pred: Tensor, offsets_true: Tensor) -> Tensor:
    """Per pair, the mean over the four corners of ``‖offsets_pred − offsets_true‖₂`` ``(B,)``:
    DESIGN.md's corner error on synthetic patches (its mean over pairs is the MACE)."""
    return (offsets_pred - offsets_true).norm(dim=-1).mean(dim=-1)


class HomographyModule(pl.LightningModule):
    """Base class: a :class:`HomographyNet` trained on synthetic pairs.

    Subclasses implement :meth:`training_step` (their loss). ``channels_last`` runs the network
    in NHWC memory format and ``compile`` compiles it with ``torch.compile`` (both speed options,
    for GPUs); under mixed precision (``trainer.precision=bf16-mixed``) only the network's
    convolutions and hidden layer run in bfloat16: its output layer, the DLT, sampling grids and
    losses stay float32. The optimizer and scheduler are
    factories (Hydra ``_partial_``) completed in :meth:`configure_optimizers`; they are not
    hyperparameters of the model, so a checkpoint rebuilds the network from its hyperparameters
    alone (``Module.load_from_checkpoint(path)``).
    """

    #: name of the model in evaluation tables (a subclass sets its own)
    display_name = "homographynet"

    def __init__(
        self,
        net: HomographyNet,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        panel_pairs: int = 4,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.net = net.use_channels_last(channels_last)
        self.compile_net = compile
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        self.scheduler_interval = scheduler_interval
        self.panel_pairs = panel_pairs
        self.val_mace_best = math.inf
        self._val_errors: list[Tensor] = []

    def configure_model(self) -> None:
        """``compile=True``: compile the network in place (``nn.Module.compile``), so that the
        state dict, and hence checkpoints, keep their plain parameter names."""
        if self.compile_net and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    # -- data ----------------------------------------------------------------------------------
    @staticmethod
    def to_float(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Images travel as uint8 (4× less to copy) and become float in [0, 1] on the device."""
        out = dict(batch)
        for key in ("patch_a", "patch_b", "image_a"):
            if key in out and out[key].dtype == torch.uint8:
                out[key] = out[key].float().div_(255.0)
        return out

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> dict[str, Tensor]:
        return self.net(patch_a, patch_b)

    def predict_homography(self, patch_a: Tensor, patch_b: Tensor) -> tuple[Tensor, Tensor]:
        """``H_a_from_b (B, 3, 3)`` float32 in the patch frame, and ``valid (B,)``."""
        offsets = self(patch_a, patch_b)["offsets"].float()
        corners = patch_corners(offsets.new_zeros(offsets.shape[0], 2), patch_a.shape[-1])
        return four_point_to_homography_ex(corners, corners + offsets)

    # -- validation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        batch = self.to_float(batch)
        out = self(batch["patch_a"], batch["patch_b"])
        err = corner_distance(out["offsets"].float(), batch["offsets"])
        self._val_errors.append(err.detach())
        if batch_idx == 0:
            self._log_panel(batch, out["offsets"].float())

    def on_validation_epoch_start(self) -> None:
        self._val_errors = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_errors:
            return
        mace = torch.cat(self._val_errors).mean()
        mace = self.all_gather(mace).mean()  # identical sets on every rank; mean is a no-op then
        self._val_errors = []
        if self.trainer.sanity_checking:
            return
        value = float(mace)
        self.val_mace_best = min(self.val_mace_best, value)
        self.log("val/mace", value, prog_bar=True, sync_dist=False)
        self.log("val/mace_best", self.val_mace_best, prog_bar=False, sync_dist=False)

    def _log_panel(self, batch: dict[str, Tensor], offsets_pred: Tensor) -> None:
        """TensorBoard image: per pair, A with the true (green) and predicted (red) positions of
        B's corners, B, and |A warped by the prediction − B|."""
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image") or self.trainer.sanity_checking:
            return
        from hdreg.visualize import pair_panel

        k = min(self.panel_pairs, batch["patch_a"].shape[0])
        pa, pb = batch["patch_a"][:k].float(), batch["patch_b"][:k].float()
        p = pa.shape[-1]
        corners = patch_corners(pa.new_zeros(k, 2), p)
        H, _ = four_point_to_homography_ex(corners, corners + offsets_pred[:k])
        grid = warp_grid(H, (p, p))
        warped = sample_at(pa, grid)
        inside = inside_mask(grid, (p, p))[:, 0].bool().cpu().numpy()
        to_u8 = lambda t: (t.clamp(0, 1) * 255).round().byte().cpu().numpy()  # noqa: E731
        rows = [
            pair_panel(
                to_u8(pa[i, 0]), to_u8(pb[i, 0]), corners[i].cpu().numpy(),
                batch["offsets"][i].cpu().numpy(), offsets_pred[i].detach().cpu().numpy(),
                to_u8(warped[i, 0]), inside[i], margin=math.ceil(self.net.rho) + 8,
            )
            for i in range(k)
        ]  # fmt: skip
        gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
        panel = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
        experiment.add_image("val/panel", panel, self.global_step, dataformats="HWC")

    # -- optimization --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError(
                "no optimizer: pass optimizer=<factory> (configs/model/optimizer/*.yaml, _partial_)"
            )
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "name": "train/lr",
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which class to rebuild, so that evaluate.py and `hdreg align` load any hdreg checkpoint.
        checkpoint["hdreg_module"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["val_mace_best"] = self.val_mace_best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_mace_best = float(checkpoint.get("val_mace_best", math.inf))
