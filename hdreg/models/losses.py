"""Training losses, each a callable ``loss(out, batch)`` built by Hydra (``model.loss``).

``out`` is the network's output dict (at least ``offsets (B, 4, 2)``), ``batch`` the training
batch as float tensors (``patch_a``, ``patch_b``, ``corners``, ``top_left``, and ``offsets`` for a
supervised model, ``image_a`` when the data deliver full images). A loss returns a scalar tensor,
or a dict with the scalar under ``"loss"`` and further scalars that the module logs as
``train/<key>``. Losses run in float32 (the module calls them outside autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.geometry import four_point_to_homography_ex, inside_mask, sample_at, warp_grid
from hdreg.models.homographynet import offsets_to_bins

__all__ = ["BinCrossEntropy", "OffsetMSE", "PhotometricL1", "SequenceL1", "photometric_loss"]


class OffsetMSE(nn.Module):
    """Mean squared error between predicted and true offsets, both divided by ``rho``
    (DeTone et al.'s Euclidean loss on targets scaled to [−1, 1])."""

    def __init__(self, rho: float) -> None:
        super().__init__()
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        self.rho = float(rho)

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(out["offsets"] / self.rho, batch["offsets"] / self.rho)


class BinCrossEntropy(nn.Module):
    """Cross-entropy of each of the 8 offset coordinates over ``num_bins`` bins spanning
    [−rho, rho] (DeTone et al.'s classification head); needs ``out["logits"] (B, 4, 2, bins)``."""

    def __init__(self, rho: float, num_bins: int) -> None:
        super().__init__()
        if not rho > 0 or num_bins < 2:
            raise ValueError(f"need rho > 0 and num_bins >= 2, got {rho} and {num_bins}")
        self.rho, self.num_bins = float(rho), int(num_bins)

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        if "logits" not in out:
            raise KeyError("BinCrossEntropy needs the network's 'logits' (the classification head)")
        target = offsets_to_bins(batch["offsets"], self.rho, self.num_bins)
        return F.cross_entropy(out["logits"].reshape(-1, self.num_bins), target.reshape(-1))


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
    mask = inside_mask(grid, (image_a.shape[-1], image_a.shape[-2]))
    inside = mask.sum(dim=(1, 2, 3))
    err = ((warped - target).abs() * mask).sum(dim=(1, 2, 3))
    loss = err / inside.clamp_min(1.0)
    valid = valid & (inside >= 0.01 * p * p) & torch.isfinite(loss)
    # `where`, not multiplication: a NaN in an invalid sample must not reach the mean or gradient
    return torch.where(valid, loss, torch.zeros_like(loss)), valid, warped


class PhotometricL1(nn.Module):
    """Nguyen et al.'s unsupervised loss: the mean of :func:`photometric_loss` over the pairs
    whose prediction is usable. Needs the full image A (``batch["image_a"]``), never the labels.

    A pair whose predicted quadrilateral is degenerate (three corners collinear, two equal),
    which samples (almost) nothing inside A, or whose loss is not finite is masked out of the
    mean; ``degenerate`` (logged as ``train/degenerate``) is the share of such pairs. When every
    pair of a batch is masked the loss is an exact zero that still depends on the prediction, so
    the step runs with zero gradients (every process of a DDP run takes the same steps). No NaN
    or Inf reaches the optimizer.

    Args:
        rho: the data's perturbation range (``max_offset_factor · rho`` bounds the clamp).
        max_offset_factor: predictions are clamped to ``± max_offset_factor · rho`` inside the
            loss (never in evaluation).
        stride: photometric loss on every ``stride``-th pixel (see :func:`photometric_loss`).
    """

    #: the data must deliver each pair's full image A (``data.with_full_image``)
    needs_full_image = True

    def __init__(self, rho: float, max_offset_factor: float = 2.0, stride: int = 1) -> None:
        super().__init__()
        if not max_offset_factor > 0:
            raise ValueError(f"max_offset_factor must be > 0, got {max_offset_factor}")
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.max_offset = float(max_offset_factor * rho)
        self.stride = int(stride)

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "image_a" not in batch:
            raise KeyError(
                "the photometric loss warps each pair's full image A: set data.with_full_image=true"
            )
        losses, valid, _ = photometric_loss(
            batch["image_a"], batch["patch_b"], batch["corners"], out["offsets"].float(),
            batch["top_left"], max_offset=self.max_offset, stride=self.stride,
        )  # fmt: skip
        n_valid = valid.sum()
        loss = losses.sum() / n_valid.clamp_min(1)
        degenerate = 1.0 - n_valid.float() / valid.numel()
        return {"loss": loss, "photometric": loss.detach(), "degenerate": degenerate}


class SequenceL1(nn.Module):
    """L1 on the corner offsets of every iteration, weighted ``γ^(N−1−i)`` (the last weighs 1), as
    RAFT and the IHN family train their iterative estimators: ``out["offsets_all"] (N, B, 4, 2)``
    (or just ``out["offsets"]``) against ``batch["offsets"] (B, 4, 2)``, in pixels."""

    def __init__(self, gamma: float = 0.85) -> None:
        super().__init__()
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        steps = out["offsets_all"] if "offsets_all" in out else out["offsets"][None]
        n = steps.shape[0]
        weights = self.gamma ** torch.arange(n - 1, -1, -1, device=steps.device, dtype=steps.dtype)
        per_step = (steps.float() - batch["offsets"][None]).abs().mean(dim=(1, 2, 3))
        return (weights * per_step).sum()
