"""HomographyNet (DeTone, Malisiewicz & Rabinovich 2016, "Deep Image Homography Estimation").

A VGG-style network on two stacked grayscale patches: eight 3×3 convolutions (64, 64, 64, 64,
128, 128, 128, 128 channels) with batch norm and ReLU, 2×2 max pooling after the 2nd, 4th and
6th, dropout 0.5, a 1024-unit fully connected layer, then one of two heads:

* **regression**: the eight four-point offsets (trained with an L2 loss on offsets / ρ);
* **classification**: 21 bins over [−ρ, ρ] for each of the eight coordinates (cross-entropy);
  the offsets are the expectation over the bins, and each corner gets a confidence.

``width`` scales every layer (0.25 gives a net that trains usefully on a laptop CPU) and
``input_size`` resizes the patches before the first convolution. Whatever the input size, the
network's input and output live in the frame of ``patch_size``×``patch_size`` patches: offsets
are where patch B's corners lie in patch A's frame minus the corners, in those pixels
(docs/conventions.md's four-point label).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HomographyNet", "bin_centers", "offsets_to_bins", "standardize"]

Head = Literal["regression", "classification"]


def standardize(x: Tensor) -> Tensor:
    """Each image of ``x (B, C, H, W)`` at zero mean and unit standard deviation (plus 10⁻³, so
    that a flat image stays finite): how every hdreg network with ``normalize`` sees its input,
    and what its encoder's features expect."""
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)


def bin_centers(rho: float, num_bins: int, *, like: Tensor) -> Tensor:
    """``(num_bins,)`` bin centres spanning [−ρ, ρ] (the ends are bin centres)."""
    # symmetric about the middle bin, which is exactly 0 for an odd num_bins
    steps = torch.arange(num_bins, dtype=torch.float64) - (num_bins - 1) / 2
    centers = steps * (2.0 * rho / (num_bins - 1))
    return centers.to(device=like.device, dtype=like.dtype)


def offsets_to_bins(offsets: Tensor, rho: float, num_bins: int) -> Tensor:
    """Nearest-bin class index ``(B, 4, 2) int64`` of offsets ``(B, 4, 2)`` (clamped to [−ρ, ρ])."""
    step = 2.0 * rho / (num_bins - 1)
    idx = torch.round((offsets.clamp(-rho, rho) + rho) / step)
    return idx.long().clamp_(0, num_bins - 1)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # bias is redundant before batch norm
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class HomographyNet(nn.Module):
    """DeTone et al.'s network; see the module docstring.

    Args:
        head: ``"regression"`` or ``"classification"``.
        width: multiplier of every layer's channels and of the fully connected layer.
        input_size: side the patches are resized to before the convolutions (divisible by 8).
        patch_size: side of the patches the offsets refer to (128 in the paper).
        rho: perturbation range ρ of the training data; scales the regression output and spans
            the classification bins.
        num_bins: bins per coordinate of the classification head (21 in the paper).
        dropout: dropout probability before and after the fully connected layer.
        normalize: standardize each patch to zero mean, unit variance before the network (makes
            the estimate invariant to affine intensity changes between A and B).
    """

    CHANNELS = (64, 64, 64, 64, 128, 128, 128, 128)
    FC = 1024

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
    ) -> None:
        super().__init__()
        if head not in ("regression", "classification"):
            raise ValueError(f"head must be 'regression' or 'classification', got {head!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if input_size < 8 or input_size % 8:
            raise ValueError(f"input_size must be a positive multiple of 8, got {input_size}")
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.head, self.input_size, self.patch_size = head, input_size, patch_size
        self.rho, self.num_bins, self.normalize = float(rho), num_bins, normalize

        chans = [max(1, round(c * width)) for c in self.CHANNELS]
        layers: list[nn.Module] = []
        c_in = 2
        for i, c_out in enumerate(chans):
            layers += _conv_block(c_in, c_out)
            if i in (1, 3, 5):
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        fc = max(8, round(self.FC * width))
        flat = chans[-1] * (input_size // 8) ** 2
        out = 8 if head == "regression" else 8 * num_bins
        self.regressor = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, out),
        )
        if head == "regression":
            # Start at the identity (zero offsets): the first steps need not undo a random bias.
            nn.init.zeros_(self.regressor[-1].weight)
            nn.init.zeros_(self.regressor[-1].bias)
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> HomographyNet:
        """Run the convolutions in NHWC memory format (faster with cuDNN and mixed precision)."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def prepare(self, patch_a: Tensor, patch_b: Tensor) -> Tensor:
        """Stack, resize to ``input_size`` and standardize: ``(B, 2, S, S)``."""
        if patch_a.shape != patch_b.shape or patch_a.ndim != 4 or patch_a.shape[1] != 1:
            raise ValueError(
                "patch_a and patch_b must both have shape (B, 1, P, P), got "
                f"{tuple(patch_a.shape)} and {tuple(patch_b.shape)}"
            )
        x = torch.cat([patch_a, patch_b], dim=1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="area")
        if self.normalize:
            x = standardize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> dict[str, Tensor]:
        """Estimate where patch B's corners lie in patch A.

        Args:
            patch_a, patch_b: ``(B, 1, P, P)`` grayscale patches in [0, 1], ``P = patch_size``
                (any P works: the offsets then refer to P×P patches resized to ``patch_size``).

        Returns:
            ``offsets (B, 4, 2)`` in pixels (``H_a_from_b = DLT(corners, corners + offsets)``);
            with the classification head also ``logits (B, 4, 2, num_bins)`` and
            ``confidence (B, 4)``: per corner, the product of the x and y bins' top probability.
        """
        hidden = self.regressor[:-1](self.features(self.prepare(patch_a, patch_b)))
        # The output layer runs in float32 even under mixed precision: bfloat16's 8-bit mantissa
        # would quantize offsets / rho to ~0.4 %, i.e. ~0.1 px at rho = 32.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out = self.regressor[-1](hidden.float())
        if self.head == "regression":
            return {"offsets": out.float().view(-1, 4, 2) * self.rho}
        logits = out.float().view(-1, 4, 2, self.num_bins)
        prob = logits.softmax(dim=-1)
        offsets = (prob * bin_centers(self.rho, self.num_bins, like=prob)).sum(dim=-1)
        confidence = prob.amax(dim=-1).prod(dim=-1)
        return {"offsets": offsets, "logits": logits, "confidence": confidence}
