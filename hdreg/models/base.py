"""What every hdreg LightningModule shares: a network and a loss built by Hydra, the training
step, validation metrics, the image panel, optimizers from config, and the model config that
every checkpoint carries (:func:`build_module`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MinMetric

from hdreg.geometry import (
    corner_distance,  # the one corner error (MACE), re-exported for the models
    inside_mask,
    offsets_to_homography,
    patch_corners,
    sample_at,
    warp_grid,
)
from hdreg.models.checkpoint import check_model_config, load_module
from hdreg.models.panel import pair_panel

__all__ = ["HomographyModule", "build_module", "corner_distance"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
LossFn = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor | dict[str, Tensor]]


class HomographyModule(pl.LightningModule):
    """A homography network trained on synthetic pairs, composed from objects built by Hydra.

    Args:
        net: the network, an ``nn.Module`` whose ``forward(patch_a, patch_b)`` takes ``(B, 1, P,
            P)`` patches in [0, 1] and returns a dict with at least ``offsets (B, 4, 2)`` (where
            patch B's corners lie in patch A's frame minus the corners, in pixels of
            ``patch_size``×``patch_size`` patches), and which has the attributes ``patch_size``
            (the side the offsets refer to) and ``rho`` (the data's perturbation range).
        loss: ``loss(out, batch)`` → a scalar, or a dict with ``"loss"`` and further scalars
            to log (:mod:`hdreg.models.losses`); called in float32, outside autocast.
        name: the model's name in evaluation tables.
        optimizer, scheduler: factories (Hydra ``_partial_``) completed in
            :meth:`configure_optimizers`.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        panel_pairs: pairs in the TensorBoard image panel.
        channels_last: run the network in NHWC memory format (the net's ``use_channels_last``).
        compile: compile the network with ``torch.compile``.

    Under mixed precision (``trainer.precision=bf16-mixed``) only the network runs in bfloat16
    autocast; the loss, the DLT and the sampling grids stay float32. The validation metrics are
    ``val/mace`` (torchmetrics running mean of the corner error over the fixed validation
    pairs) and ``val/mace_best``; a validation batch without ``offsets`` (real pairs of
    ``data=unlabeled``) logs the loss itself as ``val/photometric``. A module built by
    :func:`build_module` (as ``train.py`` does) records its own config, without optimizer and
    scheduler, as :attr:`hdreg_model`; every checkpoint stores it, and
    :func:`hdreg.models.checkpoint.load_module` rebuilds the module from it.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: LossFn,
        name: str = "model",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        panel_pairs: int = 4,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        missing = [a for a in ("patch_size", "rho") if not hasattr(net, a)]
        if missing or not isinstance(net, nn.Module):
            raise TypeError(
                f"net must be an nn.Module with the attributes patch_size and rho, got "
                f"{type(net).__name__}" + (f" without {', '.join(missing)}" if missing else "")
            )
        if not callable(loss):
            raise TypeError(f"loss must be callable as loss(out, batch), got {type(loss).__name__}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        if channels_last:
            if not hasattr(net, "use_channels_last"):
                raise ValueError(
                    f"channels_last=True: {type(net).__name__} has no use_channels_last"
                )
            net.use_channels_last(True)
        self.net = net
        self.loss = loss
        self.name = str(name)
        self.compile_net = compile
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.panel_pairs = panel_pairs
        # a NaN error (a broken prediction) makes val/mace NaN instead of being left out
        self.val_mace = MeanMetric(nan_strategy="disable")
        self.val_mace_best = MinMetric()
        #: the instantiate-config this module was built from (set by :func:`build_module`)
        self.hdreg_model: dict[str, Any] | None = None

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
        return offsets_to_homography(offsets, patch_a.shape[-1])

    # -- training ------------------------------------------------------------------------------
    def loss_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The part of the batch the loss sees (all of it; an unsupervised module drops the
        labels)."""
        return batch

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        batch = self.to_float(batch)
        out = self(batch["patch_a"], batch["patch_b"])
        # The loss (and any DLT or sampling grid in it) stays in float32 under mixed precision.
        with torch.autocast(device_type=self.device.type, enabled=False):
            result = self.loss(out, self.loss_inputs(batch))
        terms = dict(result) if isinstance(result, dict) else {"loss": result}
        if "loss" not in terms:
            raise KeyError(f"{type(self.loss).__name__} returned a dict without 'loss'")
        loss = terms.pop("loss")
        self.log("train/loss", loss, prog_bar=True)
        for key, value in terms.items():
            self.log(f"train/{key}", value)
        if "offsets" in batch:  # monitoring only: an unsupervised loss never sees the labels
            with torch.no_grad():
                mace = corner_distance(out["offsets"].detach().float(), batch["offsets"]).mean()
            self.log("train/mace", mace)
        return loss

    # -- validation ----------------------------------------------------------------------------
    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        batch = self.to_float(batch)
        out = self(batch["patch_a"], batch["patch_b"])
        if "offsets" not in batch:  # real pairs without labels (data=unlabeled): the loss only
            with torch.autocast(device_type=self.device.type, enabled=False):
                result = self.loss(out, self.loss_inputs(batch))
            loss = result["loss"] if isinstance(result, dict) else result
            self.log(
                "val/photometric", loss, batch_size=batch["patch_b"].shape[0],
                add_dataloader_idx=False, sync_dist=True,
            )  # fmt: skip
            return
        err = corner_distance(out["offsets"].float(), batch["offsets"])
        # Metric states stay ordinary tensors: a state created under inference mode (e.g. by a
        # trainer.validate() before fit) could not be updated in place by fit's validation.
        with torch.inference_mode(False):
            self.val_mace.update(err.clone())
        if batch_idx == 0:
            self._log_panel(batch, out["offsets"].float())

    def on_validation_epoch_end(self) -> None:
        if not self.val_mace.update_called:
            return
        # Every process scores the same fixed pairs: the synced mean equals each one's mean.
        with torch.inference_mode(False):
            mace = self.val_mace.compute()
            self.val_mace.reset()
            if self.trainer.sanity_checking:
                return
            self.val_mace_best.update(mace)
            best = self.val_mace_best.compute()
        self.log("val/mace", mace, prog_bar=True, sync_dist=False)
        self.log("val/mace_best", best, sync_dist=False)

    def _log_panel(self, batch: dict[str, Tensor], offsets_pred: Tensor) -> None:
        """TensorBoard image: per pair, A with the true (green) and predicted (red) positions of
        B's corners, B, and |A warped by the prediction − B|."""
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image") or self.trainer.sanity_checking:
            return
        k = min(self.panel_pairs, batch["patch_a"].shape[0])
        pa, pb = batch["patch_a"][:k].float(), batch["patch_b"][:k].float()
        p = pa.shape[-1]
        corners = patch_corners(pa.new_zeros(k, 2), p)
        H, _ = offsets_to_homography(offsets_pred[:k], p)
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
                "no optimizer: pass optimizer=<factory> "
                "(hdreg/configs/model/optimizer/*.yaml, _partial_)"
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

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hdreg_model is None:
            rank_zero_warn(
                "this module was not built by hdreg.models.base.build_module, so its checkpoint "
                "has no 'hdreg_model' config and load_module cannot rebuild it"
            )
        else:
            checkpoint["hdreg_model"] = self.hdreg_model
        best = float(self.val_mace_best.min_value)  # local state: no collective call here
        checkpoint["val_mace_best"] = best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_mace_best.reset()
        best = float(checkpoint.get("val_mace_best", math.inf))
        if math.isfinite(best):
            self.val_mace_best.update(torch.tensor(best))

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> HomographyModule:
        """The same as :func:`hdreg.models.checkpoint.load_module` (the model is rebuilt from
        the checkpoint's ``hdreg_model`` config), checked to be a ``cls``."""
        if kwargs:
            raise TypeError(f"unsupported arguments {sorted(kwargs)}: the config is in the file")
        module = load_module(checkpoint_path, device=map_location or "cpu")
        if not isinstance(module, cls):
            raise TypeError(
                f"{checkpoint_path} holds a {type(module).__name__}, not a {cls.__name__}"
            )
        return module


def build_module(config: Mapping[str, Any] | DictConfig) -> HomographyModule:
    """Instantiate a model config (``hdreg/configs/model/*.yaml``: the module with its ``net`` and
    ``loss``, optionally ``optimizer`` and ``scheduler`` factories) and record the config,
    resolved and without optimizer and scheduler, as the module's :attr:`hdreg_model`.
    """
    if isinstance(config, DictConfig):
        plain = OmegaConf.to_container(config, resolve=True)
    else:
        plain = copy.deepcopy(dict(config))
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise ValueError(f"a model config is a mapping with a _target_, got {plain!r}")
    model = {k: v for k, v in plain.items() if k not in ("optimizer", "scheduler")}
    # A checkpoint is rebuilt only from the allow-list of hdreg.models.checkpoint: say so early
    # when a config names a class of its own (it trains; its files load once it is registered).
    try:
        check_model_config(model)
    except ValueError as exc:
        rank_zero_warn(
            f"{exc}: its checkpoints will load only after hdreg.models.checkpoint.register(...) "
            "of that class"
        )
    module = instantiate(plain, _convert_="all")
    if not isinstance(module, HomographyModule):
        raise TypeError(f"{plain['_target_']} is not a HomographyModule")
    module.hdreg_model = model
    return module
