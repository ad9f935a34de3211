"""An iterative correlation network for homography estimation (the IHN family).

After Cao et al., "Iterative Deep Homography Estimation" (CVPR 2022), written from the paper's
description. Per scale:

1. a shared CNN encodes both patches into features ``f_a, f_b`` at ``1/stride`` of the input;
2. a global correlation volume ``C[j, i] = ReLU(⟨f_b(j), f_a(i)⟩ / √D)`` holds, for every cell
   ``j`` of B, its similarity with every cell ``i`` of A, average-pooled over A into a pyramid
   of ``corr_levels`` levels;
3. a weight-tied estimator iterates: the current offsets give ``H_a_from_b`` (Tensor DLT), the
   centres of B's feature cells are projected into A, the pyramid is looked up (``grid_sample``)
   in a ``(2r+1)²`` window around each projection, and a small CNN (conv, GroupNorm, ReLU,
   max-pool, until the map is 2×2) turns that, with the current displacement field, into an
   update of the four corner offsets.

With ``fine_iterations > 0`` a second scale follows (as IHN's two-scale model): patch A is warped
by the coarse estimate, and a second encoder and estimator at ``fine_input_size`` refine the
residual homography between the warped A and B; the two compose into the final estimate.

The state of every iteration is DeTone's four-point label in the ``patch_size`` frame (see
docs/conventions.md): ``H_a_from_b = DLT(corners, corners + offsets)``. ``forward`` returns every
iteration's estimate; the loss (:class:`hdreg.models.losses.SequenceL1`) lives outside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.geometry import (
    four_point_to_homography_closed,
    four_point_to_homography_ex,
    patch_corners,
    resize_matrix,
    sample_at,
    transform_points,
    warp_grid,
)
from hdreg.models.homographynet import standardize

__all__ = ["CorrelationPyramid", "Encoder", "IterativeHomographyNet", "Updater"]


def _dlt(points_src: Tensor, points_dst: Tensor) -> tuple[Tensor, Tensor]:
    """The four-point DLT of the iterations: the LU solve of
    :func:`~hdreg.geometry.four_point_to_homography_ex`, or while exporting to ONNX (which has
    no solve) its closed form :func:`~hdreg.geometry.four_point_to_homography_closed`."""
    if torch.onnx.is_in_onnx_export():
        return four_point_to_homography_closed(points_src, points_dst)
    return four_point_to_homography_ex(points_src, points_dst)


def _cells_from_patch(p: int, s: int, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``cells_from_patch`` (3×3: ``p``×``p`` patch pixels to the ``n``×``n`` cells of an
    ``s``×``s`` input) and its inverse ``patch_from_cells``. While exporting to ONNX (which has no
    matrix inverse) the inverse is the product of the two inverse resizes, equal up to rounding.
    """
    cells_from_patch = resize_matrix((s, s), (n, n), like=like) @ resize_matrix(
        (p, p), (s, s), like=like
    )
    if torch.onnx.is_in_onnx_export():
        patch_from_input = resize_matrix((s, s), (p, p), like=like)
        return cells_from_patch, patch_from_input @ resize_matrix((n, n), (s, s), like=like)
    return cells_from_patch, torch.linalg.inv(cells_from_patch)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class Encoder(nn.Module):
    """Features at ``1/2^len(channels)`` of the input: a 5×5 stride-2 stem, then a stride-2 3×3
    convolution per further halving (conv, GroupNorm, ReLU each), ``blocks`` residual 3×3 blocks
    at the output resolution, and a 1×1 projection to ``dim`` channels (no normalization: the
    correlation uses its scale).

    Input ``(B, 1, H, W)``, output ``(B, dim, H / stride, W / stride)``.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 48), dim: int = 64, blocks: int = 1):
        super().__init__()
        if not channels:
            raise ValueError("channels needs at least one entry (one per halving of the input)")
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), _norm(c), nn.ReLU(True)]
            c_in = c
        layers += [_Residual(c_in) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, dim, 1)
        self.stride = 2 ** len(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _norm(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv(x), inplace=True)


class CorrelationPyramid:
    """Global correlation of two feature maps and its lookup around projected positions.

    Args:
        f_a, f_b: ``(B, D, h, w)`` features of A and B.
        levels: pyramid levels (level ``k`` averages ``2^k × 2^k`` cells of A).
        radius: lookup window ``(2r+1)²`` at every level, in that level's cells.
    """

    def __init__(self, f_a: Tensor, f_b: Tensor, levels: int = 2, radius: int = 4) -> None:
        b, d, h, w = f_a.shape
        # (B, h·w of B, h·w of A): one batched matrix product, the fastest form on CPU and GPU
        corr = torch.bmm(f_b.flatten(2).transpose(1, 2), f_a.flatten(2)) / d**0.5
        level = F.relu(corr).reshape(b * h * w, 1, h, w)
        self.pyramid = [level]
        for _ in range(levels - 1):
            level = F.avg_pool2d(level, 2)
            self.pyramid.append(level)
        self.radius, self.shape = radius, (b, h, w)
        r = torch.arange(-radius, radius + 1, device=f_a.device, dtype=f_a.dtype)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self.window = torch.stack([dx, dy], dim=-1).reshape(1, -1, 1, 2)  # (1, (2r+1)², 1, 2)

    @property
    def channels(self) -> int:
        return len(self.pyramid) * (2 * self.radius + 1) ** 2

    def lookup(self, cells_a: Tensor) -> Tensor:
        """Correlation around ``cells_a (B, h, w, 2)``: for every cell of B, where it lands in A,
        in A's cell coordinates (cell ``i`` centred at ``i``). Returns ``(B, channels, h, w)``."""
        b, h, w = self.shape
        centre = cells_a.reshape(b * h * w, 1, 1, 2)
        lookup = self._sample_exported if torch.onnx.is_in_onnx_export() else self._sample
        out = []
        for k, level in enumerate(self.pyramid):
            # cell u of level 0 lies at (u - (2^k - 1) / 2) / 2^k in level k's cells
            at = (centre - (2**k - 1) / 2) / 2**k  # (B·h·w, 1, 1, 2): the window's centres
            out.append(lookup(level, at.to(level.dtype)).reshape(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()

    def _sample(self, level: Tensor, at: Tensor) -> Tensor:
        """``level (N, 1, h, w)`` sampled in the window around ``at (N, 1, 1, 2)``."""
        return sample_at(level, at + self.window)

    def _sample_exported(self, level: Tensor, at: Tensor) -> Tensor:
        """:meth:`_sample` for ONNX: the normalized grid is built per axis from ``(N, 1, 1, 1)``
        centres and ``(1, K, 1, 1)`` offsets, then stacked, so that no large tensor is broadcast
        over a last axis of 2 (onnxruntime's slow path). Equal up to rounding."""
        h, w = level.shape[-2:]
        # pixel -> normalized coordinates of grid_sample(align_corners=True), as in sample_at
        sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
        gx = (at[..., :1] * sx - 1.0) + self.window[..., :1] * sx  # (N, K, 1, 1)
        gy = (at[..., 1:] * sy - 1.0) + self.window[..., 1:] * sy
        grid = torch.cat([gx, gy], dim=-1)
        return F.grid_sample(level, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class Updater(nn.Module):
    """The iterative estimator's CNN: correlation + displacement ``(B, C, h, w)`` → corner
    updates ``(B, 4, 2)`` in cells. Conv + GroupNorm + ReLU + 2× max-pool until the map is 2×2;
    a final 1×1 convolution gives 2 channels, one (x, y) per quadrant = per corner."""

    def __init__(self, c_in: int, size: int, width: int = 64) -> None:
        super().__init__()
        if size < 2 or size & (size - 1):
            raise ValueError(f"the feature map side must be a power of two >= 2, got {size}")
        layers: list[nn.Module] = [nn.Conv2d(c_in, width, 1), _norm(width), nn.ReLU(True)]
        while size > 2:
            layers += [nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers += [nn.Conv2d(width, width, 1), nn.ReLU(True), nn.Conv2d(width, 2, 1)]
        self.net = nn.Sequential(*layers)
        # Start at "no update": the first steps need not undo a random bias.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        q = self.net(x)  # (B, 2, 2, 2): channel (dx, dy), then the 2×2 quadrants
        tl, tr, bl, br = q[:, :, 0, 0], q[:, :, 0, 1], q[:, :, 1, 0], q[:, :, 1, 1]
        return torch.stack([tl, tr, br, bl], dim=1)  # corner order TL, TR, BR, BL


class _Scale(nn.Module):
    """One scale: encoder, correlation pyramid, weight-tied estimator."""

    def __init__(
        self, input_size: int, channels: tuple[int, ...], dim: int, blocks: int,
        levels: int, radius: int, width: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder = Encoder(tuple(channels), dim, blocks)
        stride = self.encoder.stride
        if input_size % stride:
            raise ValueError(
                f"input size {input_size} must be divisible by the encoder's stride {stride} "
                f"({len(channels)} halvings)"
            )
        self.input_size, self.levels, self.radius = input_size, levels, radius
        self.cells = input_size // stride
        if self.cells < 2 or self.cells & (self.cells - 1):
            raise ValueError(
                f"input size {input_size} / stride {stride} = {self.cells} cells per side; the "
                "iterative estimator needs a power of two >= 2"
            )
        if self.cells < 2 ** (levels - 1):
            raise ValueError(f"{self.cells}² cells are too few for {levels} pyramid levels")
        self.updater = Updater(levels * (2 * radius + 1) ** 2 + 2, self.cells, width)

    def estimate(
        self, patch_a: Tensor, patch_b: Tensor, offsets: Tensor, iterations: int, patch_size: int
    ) -> list[Tensor]:
        """Iterate from ``offsets (B, 4, 2)`` (patch frame); returns each iteration's offsets.

        The two CNNs follow any surrounding autocast (e.g. bf16); the correlation, its lookup
        and all geometry run in float32.
        """
        s, n, p = self.input_size, self.cells, patch_size
        feats = self.encoder(torch.cat([patch_a, patch_b], dim=0))
        with _float32(feats):
            corr = CorrelationPyramid(*feats.float().chunk(2, dim=0), self.levels, self.radius)
            # Frames: patch (P×P pixels), input (S×S), cells (n×n, cell j centred at j).
            offsets = offsets.float()
            corners = patch_corners(offsets.new_zeros(offsets.shape[0], 2), p)
            cells_from_patch, patch_from_cells = _cells_from_patch(p, s, n, offsets)
            r = torch.arange(n, device=offsets.device, dtype=offsets.dtype)
            ys, xs = torch.meshgrid(r, r, indexing="ij")
            cells_b = torch.stack([xs, ys], dim=-1).reshape(1, n * n, 2)
            unit = float(p) / n  # a cell's side in patch pixels: the updater's output unit

        out = []
        for _ in range(iterations):
            with _float32(feats):
                offsets = offsets.detach()  # each iteration learns a step from where it stands
                H_a_from_b, _ = _dlt(corners, corners + offsets)
                H_cells = cells_from_patch @ H_a_from_b @ patch_from_cells
                cells_a = transform_points(H_cells, cells_b.expand(H_cells.shape[0], -1, -1))
                cells_a = cells_a.clamp(-4.0 * n, 5.0 * n)  # far outside A: nothing to look up
                look = corr.lookup(cells_a.reshape(-1, n, n, 2))
                flow = (cells_a - cells_b).reshape(-1, n, n, 2).permute(0, 3, 1, 2) / n
            delta = self.updater(torch.cat([look, flow], dim=1))
            offsets = offsets + delta.float() * unit
            out.append(offsets)
        return out


def _float32(like: Tensor) -> torch.autocast:
    """Autocast off (float32 geometry and correlation) on the device of ``like``."""
    return torch.autocast(device_type=like.device.type, enabled=False)


class IterativeHomographyNet(nn.Module):
    """Iterative correlation network (IHN-style); see the module docstring.

    Args:
        input_size: side the patches are resized to for the coarse scale.
        patch_size: side of the patches the offsets refer to (128 in DeTone's protocol).
        rho: perturbation range of the training data (for displays; the estimate is unbounded).
        channels: coarse encoder channels, one per halving of the input (features at
            ``1/2^len(channels)``).
        dim: feature dimension of the correlation.
        blocks: residual blocks at the end of each encoder.
        corr_levels: levels of the correlation pyramid.
        corr_radius: lookup radius ``r`` (a ``(2r+1)²`` window per level).
        width: channels of the iterative estimator's CNN.
        iterations: weight-tied iterations of the coarse scale.
        fine_input_size: input side of the second scale (0: single scale).
        fine_channels: the second scale's encoder channels.
        fine_iterations: iterations of the second scale (0: single scale).
        normalize: standardize each patch to zero mean, unit variance first.
    """

    def __init__(
        self,
        input_size: int = 64,
        patch_size: int = 128,
        rho: float = 32.0,
        channels: tuple[int, ...] = (32, 48),
        dim: int = 64,
        blocks: int = 1,
        corr_levels: int = 2,
        corr_radius: int = 4,
        width: int = 64,
        iterations: int = 6,
        fine_input_size: int = 0,
        fine_channels: tuple[int, ...] = (16, 32, 48),
        fine_iterations: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if (fine_input_size > 0) != (fine_iterations > 0):
            raise ValueError(
                "a second scale needs both fine_input_size and fine_iterations > 0, got "
                f"{fine_input_size} and {fine_iterations}"
            )
        self.input_size, self.patch_size, self.rho = input_size, patch_size, float(rho)
        self.iterations, self.fine_iterations = iterations, fine_iterations
        self.normalize = normalize
        common = (dim, blocks, corr_levels, corr_radius, width)
        self.coarse = _Scale(input_size, tuple(channels), *common)
        self.fine = (
            _Scale(fine_input_size, tuple(fine_channels), *common) if fine_iterations else None
        )
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> IterativeHomographyNet:
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def _prepare(self, patch: Tensor, size: int) -> Tensor:
        x = patch
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="area")
        if self.normalize:
            x = standardize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(
        self,
        patch_a: Tensor,
        patch_b: Tensor,
        iterations: int | None = None,
        fine_iterations: int | None = None,
    ) -> dict[str, Tensor]:
        """Estimate where patch B's corners lie in patch A.

        Args:
            patch_a, patch_b: ``(B, 1, P, P)`` grayscale patches in [0, 1] (any P: the offsets
                then refer to the patches resized to ``patch_size``).
            iterations, fine_iterations: override the trained counts (e.g. more at test time).

        Returns:
            ``offsets (B, 4, 2)``: the final estimate, in ``patch_size`` pixels;
            ``offsets_all (N, B, 4, 2)``: every iteration's estimate, coarse then fine.
        """
        if patch_a.shape != patch_b.shape or patch_a.ndim != 4 or patch_a.shape[1] != 1:
            raise ValueError(
                "patch_a and patch_b must both have shape (B, 1, P, P), got "
                f"{tuple(patch_a.shape)} and {tuple(patch_b.shape)}"
            )
        for name, value, least in (
            ("iterations", iterations, 1),
            ("fine_iterations", fine_iterations, 0),
        ):
            if value is not None and (
                isinstance(value, bool) or float(value) != int(value) or value < least
            ):
                raise ValueError(
                    f"{name} must be a whole number >= {least} (or None: the trained count), "
                    f"got {value!r}"
                )
        n_coarse = self.iterations if iterations is None else int(iterations)
        n_fine = self.fine_iterations if fine_iterations is None else int(fine_iterations)
        if self.fine is None and n_fine:
            raise ValueError(
                f"fine_iterations={n_fine}, but this network has no second scale "
                "(fine_input_size=0): pass 0 or None"
            )
        p = self.patch_size
        if patch_a.shape[-1] != p or patch_a.shape[-2] != p:
            patch_a = F.interpolate(patch_a, size=(p, p), mode="area")
            patch_b = F.interpolate(patch_b, size=(p, p), mode="area")
        patch_a, patch_b = patch_a.float(), patch_b.float()
        size = self.coarse.input_size
        zero = patch_a.new_zeros(patch_a.shape[0], 4, 2)
        steps = self.coarse.estimate(
            self._prepare(patch_a, size), self._prepare(patch_b, size), zero, n_coarse, p
        )
        if n_fine:
            steps += self._refine(patch_a, patch_b, steps[-1].detach(), n_fine)
        return {"offsets": steps[-1], "offsets_all": torch.stack(steps)}

    def _refine(self, patch_a: Tensor, patch_b: Tensor, offsets: Tensor, n: int) -> list[Tensor]:
        """Second scale: warp A by the coarse estimate (A' = A ∘ H1, on B's grid), estimate the
        residual ``H_a'_from_b``, compose ``H_a_from_b = H1 · H_a'_from_b``."""
        assert self.fine is not None
        p = self.patch_size
        with _float32(offsets):
            corners = patch_corners(offsets.new_zeros(offsets.shape[0], 2), p)
            H1, _ = _dlt(corners, corners + offsets)
            warped_a = sample_at(patch_a, warp_grid(H1, (p, p)))
        size = self.fine.input_size
        residuals = self.fine.estimate(
            self._prepare(warped_a, size), self._prepare(patch_b, size),
            torch.zeros_like(offsets), n, p,
        )  # fmt: skip
        out = []
        with _float32(offsets):
            for r in residuals:
                H_res, _ = _dlt(corners, corners + r)
                out.append(transform_points(H1 @ H_res, corners) - corners)
        return out
