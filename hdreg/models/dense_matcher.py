"""Features trained for dense sub-pixel matching: ``wide``'s refinement levels.

A refinement level has two views of the same scene, B and A warped into B's frame by the
current estimate, a few pixels apart. :class:`DenseMatcher` is a fully convolutional encoder
(features at a quarter of the input, stride 4, L2-normalised) trained for exactly that: for
every cell ``j`` of B its features are correlated with those of A's cells ``j + d`` for ``d`` in
a ``(2r+1)²`` window of whole cells (``r = radius``), at a learned temperature. The match of a
cell is read from those logits by a parabola through the likeliest cell and its two neighbours
on each axis (nearly unbiased between cells; the softmax's mean, ``subcell="mean"``, is drawn
towards whole cells), and the softmax's peak says how distinct the match is.

Training (``bench/dense_features.py``): DeTone pairs with small perturbations, blur and noise,
the loss :func:`dense_match_loss` — the cross-entropy against the true position's bilinear
weights on its four nearest cells, plus the L1 distance of the softmax's mean from it.

Coordinates follow docs/conventions.md: cell ``j`` of an image is centred on pixel ``4·j``;
offsets are ``(dx, dy)`` in cells, from B's cell to its match in A.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.models.homographynet import standardize

__all__ = ["DenseMatcher", "dense_match_loss", "parabola_offsets"]

#: rows of cells per block of the correlation at inference (see ``DenseMatcher.window_logits``)
_ROWS = 8


def _block(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2),
        nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
    ]


class DenseMatcher(nn.Module):
    """Stride-4 features for local matching (see the module docstring).

    Args:
        channels: channels after the first and the second halving.
        dim: feature dimension.
        radius: the window of cells a cell of B is matched in, ``(2r+1)²``.
    """

    stride = 4

    def __init__(self, channels: tuple[int, int] | list[int] = (16, 48), dim: int = 48,
                 radius: int = 3) -> None:  # fmt: skip
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        if radius < 1:
            raise ValueError(f"radius must be >= 1 cell, got {radius}")
        self.body = nn.Sequential(
            *_block(1, c1, 2, 5), *_block(c1, c1), *_block(c1, c2, 2), *_block(c2, c2),
            *_block(c2, c2),
        )  # fmt: skip
        self.proj = nn.Conv2d(c2, dim, 1)
        self.radius = int(radius)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, H, W)`` in [0, 1] → ``(N, dim, ⌈H/4⌉, ⌈W/4⌉)``, unit length per cell."""
        return F.normalize(self.proj(self.body(standardize(x))), dim=1)

    def window_logits(self, f_a: Tensor, f_b: Tensor) -> Tensor:
        """``(N, (2r+1)², h, w)``: the correlation of each cell of B with A's cells around the
        same position (zero outside A), over the temperature; row-major ``(dy, dx)`` order.

        Without gradients (inference) it runs over blocks of ``_ROWS`` rows of cells, writing
        into one tensor: the products then stay in the CPU's cache, about twice as fast on a
        whole photo as one product per shift over the whole map (which training uses, as
        ``out=`` has no gradient)."""
        r = self.radius
        k = 2 * r + 1
        n, _, h, w = f_b.shape
        padded = F.pad(f_a, (r, r, r, r))
        if torch.is_grad_enabled() and (f_a.requires_grad or f_b.requires_grad):
            corr = torch.stack(
                [(f_b * padded[:, :, dy : dy + h, dx : dx + w]).sum(1) for dy in range(k)
                 for dx in range(k)], dim=1,
            )  # fmt: skip
            return corr / self.log_temperature.exp()
        corr = f_b.new_empty(n, k * k, h, w)
        for y0 in range(0, h, _ROWS):
            rows, b = slice(y0, min(h, y0 + _ROWS)), f_b[:, :, y0 : y0 + _ROWS]
            for dy in range(k):
                band = padded[:, :, y0 + dy : rows.stop + dy]
                for dx in range(k):
                    torch.sum(b * band[..., dx : dx + w], 1, out=corr[:, dy * k + dx, rows])
        return corr / self.log_temperature.exp()

    def offsets(self) -> Tensor:
        """``((2r+1)², 2)``: the window's cell offsets ``(dx, dy)``, in the logits' order."""
        d = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        return torch.stack([dx.flatten(), dy.flatten()], dim=1)

    def match(self, f_a: Tensor, f_b: Tensor, subcell: str = "parabola") -> tuple[Tensor, Tensor]:
        """For every cell of B, from the features of A and B: where it lies in A, in cells
        relative to itself ``(N, 2, h, w)``, and the softmax's peak ``(N, h, w)``.
        ``subcell``: ``"parabola"`` (:func:`parabola_offsets`) or ``"mean"`` (the softmax's
        mean over the window)."""
        logits = self.window_logits(f_a, f_b)
        peak = logits.softmax(dim=1).amax(dim=1)
        if subcell == "parabola":
            return parabola_offsets(logits, self.radius), peak
        if subcell != "mean":
            raise ValueError(f"subcell must be 'parabola' or 'mean', got {subcell!r}")
        prob = logits.softmax(dim=1)
        return torch.einsum("nkhw,kc->nchw", prob, self.offsets().to(prob)), peak


def _vertex(before: Tensor, peak: Tensor, after: Tensor) -> Tensor:
    """The vertex of the parabola through three equally spaced values, relative to the middle
    one (0 where they are not curved downwards)."""
    curvature = before - 2 * peak + after
    curved = curvature < -1e-6
    return torch.where(curved, 0.5 * (before - after) / torch.where(curved, curvature, -1.0), 0.0)


def parabola_offsets(logits: Tensor, radius: int) -> Tensor:
    """``(N, 2, h, w)``: the likeliest window cell of ``logits (N, (2r+1)², h, w)`` moved, on
    each axis, by the vertex of the parabola through its logit and its two neighbours' (not
    moved where the peak is on the window's edge)."""
    k = 2 * radius + 1
    best = logits.argmax(dim=1)
    by, bx = best // k, best % k
    inner = (bx > 0) & (bx < k - 1) & (by > 0) & (by < k - 1)
    cy, cx = by.clamp(1, k - 2), bx.clamp(1, k - 2)

    def at(dy: int, dx: int) -> Tensor:
        return logits.gather(1, ((cy + dy) * k + (cx + dx))[:, None])[:, 0]

    peak = at(0, 0)
    dx = torch.where(inner, _vertex(at(0, -1), peak, at(0, 1)), 0.0)
    dy = torch.where(inner, _vertex(at(-1, 0), peak, at(1, 0)), 0.0)
    return torch.stack([bx - radius + dx, by - radius + dy], dim=1).float()


def dense_match_loss(
    net: DenseMatcher, a: Tensor, b: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """The training loss (module docstring) of patches ``a``, ``b`` ``(N, 1, P, P)`` whose cells
    of B lie at ``target`` ``(N, 2, h, w)`` (cells, relative to themselves) in A, and the mean
    distance of the softmax's mean from the target (cells), over the cells whose true position
    lies inside the window and inside A."""
    logits = net.window_logits(net(a), net(b))
    h, w = logits.shape[-2:]
    r, k = net.radius, 2 * net.radius + 1
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")[::-1])
    true_cell = grid[None].float() + target  # absolute position in A's cells
    inside = (true_cell >= 0).all(1) & (true_cell[:, 0] <= w - 1) & (true_cell[:, 1] <= h - 1)
    inside &= (target.abs() <= r - 1e-3).all(1)
    # bilinear weights of the true offset on its four nearest window cells
    lo = target.floor().clamp(-r, r - 1)
    frac = target - lo
    soft = torch.zeros_like(logits)
    for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        wx = frac[:, 0] if ox else 1 - frac[:, 0]
        wy = frac[:, 1] if oy else 1 - frac[:, 1]
        index = (lo[:, 1] + oy + r) * k + (lo[:, 0] + ox + r)
        soft.scatter_add_(1, index.long()[:, None], (wx * wy)[:, None])
    logp = logits.log_softmax(dim=1)
    ce = -(soft * logp).sum(1)
    mean = torch.einsum("nkhw,kc->nchw", logp.exp(), net.offsets().to(logp))
    keep = inside.float()
    count = keep.sum().clamp_min(1.0)
    loss = ((ce + (mean - target).abs().sum(1)) * keep).sum() / count
    distance = ((mean - target).norm(dim=1) * keep).sum() / count
    return loss, distance
