"""Unsupervised deep homography (Nguyen et al. 2018, "Unsupervised Deep Homography: A Fast and
Robust Homography Estimation Model", RA-L): no labels, only photometric alignment.

Forward model, per pair (``H_a_from_b`` maps pixels of B into A, DESIGN.md)::

    offsets  = HomographyNet(patch A, patch B)                 # four-point, patch frame
    H_a_from_b = TensorDLT(corners, corners + offsets)         # full-image pixel coordinates
    B̂(p) = A(H_a_from_b · p)  for p on patch B's pixel grid   # spatial transformer, full image A
    loss  = mean |B̂ − B| over the pixels whose sample lies inside A

The spatial transformer samples the *full* 320×240 image A (as the official implementation
does), so content from outside patch A fills the window. The ground-truth offsets never enter
the loss; validation and test use them only to score (``val/mace``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdreg.geometry import four_point_to_homography_ex, inside_mask, sample_at, warp_grid
from hdreg.models.base import HomographyModule, OptimizerFactory, SchedulerFactory, corner_distance
from hdreg.models.homographynet import HomographyNet

__all__ = ["UnsupervisedHomography", "photometric_loss"]


def photometric_loss(
    image_a: Tensor,
    patch_b: Tensor,
    corners: Tensor,
    offsets: Tensor,
    top_left: Tensor,
    *,
    max_offset: float,
    stride: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair L1 photometric error of the homography given by four-point ``offsets``.

    All geometry runs in float32 (or float64 for gradcheck), outside any autocast region.

    Args:
        image_a: ``(B, 1, H, W)`` full image A in [0, 1].
        patch_b: ``(B, 1, P, P)`` patch B in [0, 1].
        corners: ``(B, 4, 2)`` patch corners in the full image.
        offsets: ``(B, 4, 2)`` predicted four-point offsets (where B's corners lie in A).
        top_left: ``(B, 2)`` ``(x0, y0)`` of the patch window.
        max_offset: predictions are clamped to ``[−max_offset, max_offset]`` before the DLT: a
            wild early prediction cannot build an arbitrarily ill-conditioned system.
        stride: evaluate the loss on every ``stride``-th pixel of patch B in x and y (1: every
            pixel, as the paper; 2 samples a quarter of them: an unbiased, 4× cheaper estimate
            of the same mean, for CPU training).

    Returns:
        ``loss (B,)`` (mean absolute error over the pixels that sample inside A; 0 where
        invalid), ``valid (B,)`` (a solvable, non-degenerate DLT, at least 1 % of the patch
        inside A, and a finite loss) and ``warped (B, 1, P / stride, P / stride)`` (A warped
        onto B's (strided) grid).
    """
    if stride < 1 or patch_b.shape[-1] % stride:
        raise ValueError(f"stride must divide the patch size {patch_b.shape[-1]}, got {stride}")
    dtype = torch.float64 if offsets.dtype == torch.float64 else torch.float32
    offsets = offsets.to(dtype).clamp(-max_offset, max_offset)
    corners = corners.to(dtype)
    H_a_from_b, valid = four_point_to_homography_ex(corners, corners + offsets)
    target = patch_b[..., ::stride, ::stride].to(dtype)
    p = target.shape[-1]
    # Sample point q of the (strided) grid is pixel top_left + stride·q of B.
    b_from_q = torch.zeros_like(H_a_from_b)
    b_from_q[:, 0, 0] = b_from_q[:, 1, 1] = float(stride)
    b_from_q[:, :2, 2] = top_left.to(dtype)
    b_from_q[:, 2, 2] = 1.0
    grid = warp_grid(H_a_from_b @ b_from_q, (p, p))
    warped = sample_at(image_a.to(dtype), grid)
    mask = inside_mask(grid, tuple(image_a.shape[-2:]))
    inside = mask.sum(dim=(1, 2, 3))
    err = ((warped - target).abs() * mask).sum(dim=(1, 2, 3))
    loss = err / inside.clamp_min(1.0)
    valid = valid & (inside >= 0.01 * p * p) & torch.isfinite(loss)
    # `where`, not multiplication: a NaN in an invalid sample must not reach the mean or gradient
    return torch.where(valid, loss, torch.zeros_like(loss)), valid, warped


class UnsupervisedHomography(HomographyModule):
    """HomographyNet (regression head) trained by the photometric loss alone.

    Args:
        width, input_size, patch_size, rho, dropout, normalize: the network
            (:class:`~hdreg.models.homographynet.HomographyNet`); ``rho`` scales its output.
        max_offset_factor: predictions are clamped to ``± max_offset_factor · rho`` inside the
            loss (never in evaluation).
        loss_stride: photometric loss on every ``loss_stride``-th pixel (see
            :func:`photometric_loss`; 1 as in the paper).
        optimizer, scheduler, scheduler_interval, panel_pairs: see
            :class:`~hdreg.models.base.HomographyModule`.

    Numerics: a pair whose predicted quadrilateral is degenerate (three corners collinear, two
    equal), which samples (almost) nothing inside A, or whose loss is not finite is dropped
    from the batch's loss and counted: ``train/degenerate`` is the share of such pairs. A batch
    in which every pair is dropped skips the optimizer step (``train/skipped_batches``). No NaN
    or Inf reaches the optimizer.
    """

    display_name = "unsupervised"

    def __init__(
        self,
        width: float = 1.0,
        input_size: int = 128,
        patch_size: int = 128,
        rho: float = 32.0,
        dropout: float = 0.5,
        normalize: bool = True,
        max_offset_factor: float = 2.0,
        loss_stride: int = 1,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        panel_pairs: int = 4,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        net = HomographyNet(
            "regression", width, input_size, patch_size, rho, dropout=dropout, normalize=normalize
        )
        super().__init__(
            net, optimizer, scheduler, scheduler_interval, panel_pairs, channels_last, compile
        )
        if max_offset_factor <= 0:
            raise ValueError(f"max_offset_factor must be > 0, got {max_offset_factor}")
        self.max_offset = float(max_offset_factor * rho)
        self.loss_stride = int(loss_stride)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.skipped_batches = 0

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if "image_a" not in batch:
            raise KeyError(
                "the unsupervised model warps each pair's full image A: "
                "set data.with_full_image=true"
            )
        batch = self.to_float(batch)
        offsets = self(batch["patch_a"], batch["patch_b"])["offsets"]
        # The DLT, the sampling grid and the loss stay in float32 under mixed precision.
        with torch.autocast(device_type=self.device.type, enabled=False):
            losses, valid, _ = photometric_loss(
                batch["image_a"], batch["patch_b"], batch["corners"], offsets.float(),
                batch["top_left"], max_offset=self.max_offset, stride=self.loss_stride,
            )  # fmt: skip
        n_valid = int(valid.sum())
        self.log("train/degenerate", 1.0 - n_valid / valid.numel())
        with torch.no_grad():
            mace = corner_distance(offsets.detach().float(), batch["offsets"]).mean()
        self.log("train/mace", mace)  # monitoring only: labels never enter the loss
        if n_valid == 0:
            self.skipped_batches += 1
            self.log("train/skipped_batches", float(self.skipped_batches))
            return None  # Lightning skips the optimizer step
        loss = losses.sum() / n_valid
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/photometric", loss)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.skipped_batches = int(checkpoint.get("skipped_batches", 0))
