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

from hdreg.geometry import (
    four_point_to_homography_ex,
    inside_mask,
    patch_corners,
    sample_at,
    warp_grid,
)
from hdreg.models.homographynet import offsets_to_bins

__all__ = [
    "BinCrossEntropy",
    "OffsetMSE",
    "PhotometricL1",
    "SequenceL1",
    "SequencePhotometric",
    "local_normalize",
    "masked_standardize",
    "photometric_loss",
    "soft_census",
    "warp_a_onto_b",
]


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


def warp_a_onto_b(
    image_a: Tensor,
    corners: Tensor,
    offsets: Tensor,
    top_left: Tensor,
    size_b: int,
    *,
    max_offset: float,
    stride: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Spatial transformer of the four-point prediction: image A sampled on patch B's grid.

    Args:
        image_a: ``(B, C, H, W)`` image A (any channels: intensities or a transform of them).
        corners: ``(B, 4, 2)`` patch B's corners in A's frame.
        offsets: ``(B, 4, 2)`` predicted four-point offsets (where B's corners lie in A).
        top_left: ``(B, 2)`` ``(x0, y0)`` of the patch window.
        size_b: side P of patch B.
        max_offset: offsets are clamped to ``[−max_offset, max_offset]`` before the DLT.
        stride: sample every ``stride``-th pixel of B in x and y.

    Returns:
        ``warped (B, C, P / stride, P / stride)``, ``mask (B, 1, P / stride, P / stride)`` (1
        where the sample lies inside A) and ``solvable (B,)`` (a non-degenerate DLT).
    """
    if stride < 1 or size_b % stride:
        raise ValueError(f"stride must divide the patch size {size_b}, got {stride}")
    dtype = torch.float64 if offsets.dtype == torch.float64 else torch.float32
    offsets = offsets.to(dtype).clamp(-max_offset, max_offset)
    corners = corners.to(dtype)
    H_a_from_b, solvable = four_point_to_homography_ex(corners, corners + offsets)
    p = size_b // stride
    # Sample point q of the (strided) grid is pixel top_left + stride·q of B.
    b_from_q = torch.zeros_like(H_a_from_b)
    b_from_q[:, 0, 0] = b_from_q[:, 1, 1] = float(stride)
    b_from_q[:, :2, 2] = top_left.to(dtype)
    b_from_q[:, 2, 2] = 1.0
    grid = warp_grid(H_a_from_b @ b_from_q, (p, p))
    warped = sample_at(image_a.to(dtype), grid)
    mask = inside_mask(grid, (image_a.shape[-1], image_a.shape[-2]))
    return warped, mask, solvable


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
    warped, mask, valid = warp_a_onto_b(
        image_a, corners, offsets, top_left, patch_b.shape[-1], max_offset=max_offset,
        stride=stride,
    )  # fmt: skip
    target = patch_b[..., ::stride, ::stride].to(warped.dtype)
    p = target.shape[-1]
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


def local_normalize(image: Tensor, window: int = 9, eps: float = 0.02) -> Tensor:
    """Locally normalised intensities: ``(x − μ) / √(σ² + eps²)``, with ``μ, σ²`` the mean and
    variance over a ``window × window`` box around each pixel (truncated at the border).
    Unchanged by a global (and nearly by a slowly varying) brightness and contrast change, up
    to ``eps``. ``(B, C, H, W)`` → ``(B, C, H, W)``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {window}")
    r = window // 2

    def box(t: Tensor) -> Tensor:  # separable: the truncated box is a rectangle
        t = F.avg_pool2d(t, (window, 1), 1, (r, 0), count_include_pad=False)
        return F.avg_pool2d(t, (1, window), 1, (0, r), count_include_pad=False)

    mean = box(image)
    var = (box(image * image) - mean * mean).clamp_min(0.0)
    return (image - mean) / torch.sqrt(var + eps * eps)


def soft_census(image: Tensor, window: int = 7, eps: float = 0.02) -> Tensor:
    """Soft census transform (as UnFlow): for each of the ``window² − 1`` neighbours ``n`` of a
    pixel ``p``, ``d / √(d² + eps²)`` with ``d = x(n) − x(p)`` (replicated border). Invariant
    to a brightness offset, nearly to a contrast gain. ``(B, 1, H, W)`` → ``(B, window² − 1,
    H, W)``."""
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 3, got {window}")
    r = window // 2
    padded = F.pad(image, (r, r, r, r), mode="replicate")
    h, w = image.shape[-2:]
    diffs = [
        padded[:, :, dy : dy + h, dx : dx + w] - image
        for dy in range(window)
        for dx in range(window)
        if (dy, dx) != (r, r)
    ]
    d = torch.cat(diffs, dim=1)
    return d / torch.sqrt(d * d + eps * eps)


def masked_standardize(image: Tensor, mask: Tensor, eps: float = 0.02) -> Tensor:
    """``(x − μ) / √(σ² + eps²)`` per image, with ``μ, σ²`` the mean and variance over the
    samples where ``mask (B, 1, H, W)`` is 1. Unchanged by a global brightness and contrast
    change, up to ``eps``. ``(B, C, H, W)`` → ``(B, C, H, W)``."""
    n = mask.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (image * mask).sum(dim=(2, 3), keepdim=True) / n
    var = (((image - mean) ** 2) * mask).sum(dim=(2, 3), keepdim=True) / n
    return (image - mean) / torch.sqrt(var + eps * eps)


#: image transforms of :class:`SequencePhotometric` (``transform=``)
TRANSFORMS = ("none", "standardize", "local_norm", "census")


class SequencePhotometric(nn.Module):
    """Photometric loss of every iteration of an iterative network, without labels.

    Each estimate ``out["offsets_all"][i] (B, 4, 2)`` (or the single ``out["offsets"]``) warps
    image A onto patch B's grid (the spatial transformer); the per-pair error is the mean over
    the samples inside A of a distance between the two after an illumination-robust
    ``transform``, and the iterations are weighted ``γ^(N−1−i)`` (the last weighs 1) as
    :class:`SequenceL1`. The labels ``batch["offsets"]`` are never read.

    Args:
        rho: the data's perturbation range (``max_offset_factor · rho`` bounds the clamp).
        gamma: weight decay towards the early iterations, in (0, 1].
        transform: ``"none"`` (plain L1 on intensities), ``"standardize"`` (L1 after
            standardizing the warped A and B of each pair over the samples inside A:
            :func:`masked_standardize`), ``"local_norm"`` (L1 on
            :func:`local_normalize`\\ d intensities) or ``"census"`` (:func:`soft_census`, with
            UnFlow's distance ``Σ d² / (0.1 + d²)`` over the neighbours, divided by their count).
        window: the transform's window side (odd).
        eps: the transform's regularizer (intensities in [0, 1]).
        full_image: warp the full image A (``batch["image_a"]``, needs ``data.with_full_image``)
            rather than patch A (``batch["patch_a"]``; samples that leave patch A are masked).
        max_offset_factor: predictions are clamped to ``± max_offset_factor · rho`` inside the
            loss.
        stride: evaluate the loss on every ``stride``-th pixel of patch B.

    Returns ``{"loss", "photometric" (the last iteration's error), "degenerate" (share of
    pairs masked out of the last iteration: unsolvable DLT, < 1 % of B inside A, or
    non-finite)}``. A masked pair adds an exact zero that still depends on the prediction.
    """

    def __init__(
        self,
        rho: float,
        gamma: float = 0.85,
        transform: str = "local_norm",
        window: int = 9,
        eps: float = 0.02,
        full_image: bool = True,
        max_offset_factor: float = 2.0,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if not max_offset_factor > 0 or int(stride) < 1 or not eps > 0:
            raise ValueError(
                f"need max_offset_factor > 0, stride >= 1 and eps > 0, got {max_offset_factor}, "
                f"{stride} and {eps}"
            )
        if transform in ("local_norm", "census"):  # check the window now, not at the first step
            (local_normalize if transform == "local_norm" else soft_census)(
                torch.zeros(1, 1, 3, 3), window, eps
            )
        self.gamma, self.transform, self.window, self.eps = float(gamma), transform, window, eps
        self.full_image = bool(full_image)
        self.needs_full_image = self.full_image
        self.max_offset = float(max_offset_factor * rho)
        self.stride = int(stride)

    def apply_transform(self, image: Tensor) -> Tensor:
        """The configured transform of ``(B, 1, H, W)`` intensities."""
        if self.transform == "local_norm":
            return local_normalize(image, self.window, self.eps)
        if self.transform == "census":
            return soft_census(image, self.window, self.eps)
        return image

    def distance(self, warped: Tensor, target: Tensor) -> Tensor:
        """Per-sample distance ``(B, 1, h, w)`` between transformed images ``(B, C, h, w)``."""
        if self.transform == "census":
            d2 = (warped - target) ** 2
            return (d2 / (0.1 + d2)).mean(dim=1, keepdim=True)
        return (warped - target).abs().mean(dim=1, keepdim=True)

    def per_pair(
        self, offsets: Tensor, source_a: Tensor, target_b: Tensor, corners: Tensor,
        top_left: Tensor, size_b: int,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``loss (B,)`` and ``valid (B,)`` of one iteration's ``offsets (B, 4, 2)`` on the
        transformed A ``source_a`` and the transformed, strided B ``target_b``."""
        warped, mask, valid = warp_a_onto_b(
            source_a, corners, offsets, top_left, size_b, max_offset=self.max_offset,
            stride=self.stride,
        )  # fmt: skip
        inside = mask.sum(dim=(1, 2, 3))
        target_b = target_b.to(warped.dtype)
        if self.transform == "standardize":
            warped = masked_standardize(warped, mask, self.eps)
            target_b = masked_standardize(target_b, mask, self.eps)
        err = (self.distance(warped, target_b) * mask).sum(dim=(1, 2, 3))
        loss = err / inside.clamp_min(1.0)
        valid = valid & (inside >= 0.01 * mask[0, 0].numel()) & torch.isfinite(loss)
        return torch.where(valid, loss, torch.zeros_like(loss)), valid

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        steps = out["offsets_all"] if "offsets_all" in out else out["offsets"][None]
        patch_b = batch["patch_b"]
        p = patch_b.shape[-1]
        if self.full_image:
            if "image_a" not in batch:
                raise KeyError(
                    "SequencePhotometric(full_image=True) warps each pair's full image A: set "
                    "data.with_full_image=true (or the loss's full_image=false)"
                )
            image_a, corners, top_left = batch["image_a"], batch["corners"], batch["top_left"]
        else:
            image_a = batch["patch_a"]
            top_left = image_a.new_zeros(image_a.shape[0], 2)
            corners = patch_corners(top_left, p)
        dtype = torch.float64 if steps.dtype == torch.float64 else torch.float32
        source_a = self.apply_transform(image_a.to(dtype))
        # transform B at full resolution, then stride: the same features A's samples carry
        target_b = self.apply_transform(patch_b.to(dtype))[..., :: self.stride, :: self.stride]
        n = steps.shape[0]
        total = steps.new_zeros((), dtype=dtype)
        for i in range(n):
            losses, valid = self.per_pair(
                steps[i].to(dtype), source_a, target_b, corners, top_left, p
            )
            mean = losses.sum() / valid.sum().clamp_min(1)
            total = total + self.gamma ** (n - 1 - i) * mean
        degenerate = 1.0 - valid.float().mean()
        return {"loss": total, "photometric": mean.detach(), "degenerate": degenerate}
