"""The similarity part of a pair's motion — rotation and zoom — as a learned proposal.

A whole-image estimator needs to know roughly how B is turned and zoomed relative to A before
its homography network can take over (that network covers about ±22.5° and ×√2 around a
hypothesis). Running that network under every rotation and zoom costs a whole network pass
each, and picking the best by the photometric agreement of such rough estimates often picks a
wrong one. :class:`SimilarityNet` scores every ``(rotation, zoom)`` class of a pair in one call,
from learned features only: B is encoded once; A's thumbnail, turned and zoomed by each class's
hypothesis ``G``, through the same small encoder (at a quarter of the pixels of the homography
network's input); for each class, where every cell of B finds its best match among A's cells
(a cosine correlation volume) gives a map of match strengths, and a small head scores the
class from its mean and its pattern. The whole-image estimator
(:class:`hdreg.estimators.coarse_to_fine.CoarseToFineEstimator`, ``proposal_net``) then runs
its homography network on the likeliest few classes only.

Classes: ``rotations`` angles ``360° k / rotations`` times ``2·zoom_octaves + 1`` zooms
``2^j``, rotation-major. A class ``(θ, z)`` stands for the hypothesis ``G`` of the whole-image
estimator: ``H_a_from_b ≈ G``, a rotation by ``θ`` and a scale by ``z`` about the centre (``z = 2``:
one pixel of B spans two of A, B is zoomed out ×0.5; :func:`similarity_of` reads ``(θ, z)`` off a
homography). The encoder starts from a trained homography network's
(``init=wide init_part=coarse.encoder:encoder``), whose features were trained for exactly this
correlation; the head is trained by :class:`SimilarityCrossEntropy` on wide-motion pairs over
the whole range (any rotation, zoom ×0.25–4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.geometry import (
    inside_mask,
    offsets_to_homography,
    patch_corners,
    sample_at,
    transform_points,
    warp_grid,
)
from hdreg.models.homographynet import standardize
from hdreg.models.iterative import Encoder

__all__ = ["SimilarityCrossEntropy", "SimilarityNet", "centre_similarity", "similarity_of"]


def centre_similarity(size: float, angle_deg: Tensor, zoom: Tensor) -> Tensor:
    """``G (B, 3, 3)``: a rotation by ``angle_deg`` and a scale by ``zoom`` about the centre of a
    ``size×size`` image (pixel centres ``0 … size−1``); ``A'(p) = A(G p)``."""
    c = (size - 1) / 2.0
    t = torch.deg2rad(angle_deg.double())
    z = zoom.double()
    cos, sin = torch.cos(t) * z, torch.sin(t) * z
    G = torch.zeros(*t.shape, 3, 3, dtype=torch.float64, device=t.device)
    G[..., 0, 0], G[..., 0, 1], G[..., 1, 0], G[..., 1, 1] = cos, -sin, sin, cos
    G[..., 0, 2] = c - cos * c + sin * c
    G[..., 1, 2] = c - sin * c - cos * c
    G[..., 2, 2] = 1.0
    return G


def similarity_of(H_a_from_b: Tensor, size: float) -> tuple[Tensor, Tensor]:
    """Rotation (degrees) and zoom of ``H_a_from_b (B, 3, 3)`` at the centre of B (a
    ``size×size`` view): its Jacobian there, ``J``, read as ``zoom · R(angle)`` (angle of
    ``J``'s rotation part, zoom ``sqrt|det J|``). For ``H = centre_similarity(s, θ, z)`` this
    returns ``(θ, z)``."""
    H = H_a_from_b.double()
    c = (size - 1) / 2.0
    q = H @ H.new_tensor([c, c, 1.0])
    u, v, w = q[..., 0], q[..., 1], q[..., 2]
    h = H
    j00 = (h[..., 0, 0] * w - u * h[..., 2, 0]) / w**2
    j01 = (h[..., 0, 1] * w - u * h[..., 2, 1]) / w**2
    j10 = (h[..., 1, 0] * w - v * h[..., 2, 0]) / w**2
    j11 = (h[..., 1, 1] * w - v * h[..., 2, 1]) / w**2
    angle = torch.rad2deg(torch.atan2(j10 - j01, j00 + j11))
    zoom = (j00 * j11 - j01 * j10).abs().sqrt()
    return angle, zoom


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class SimilarityNet(nn.Module):
    """Scores every ``(rotation, zoom)`` class of a pair of views (see the module docstring).

    Args:
        input_size: side the views are resized to for the encoder (a multiple of its stride).
        patch_size: side of the views the offsets refer to (A is turned and zoomed at this size).
        rho: kept for the training displays (the perturbation scale of the data).
        channels, dim, blocks: the encoder (as :class:`hdreg.models.iterative.Encoder`).
        rotations: rotation classes over 360°.
        zoom_octaves: zoom classes ``2^-n … 2^n``.
        width: channels of the head's convolutions.
        train_encoder: train the encoder too (``False``: it keeps the weights it starts from,
            and training costs a third).
        normalize: standardize each view to zero mean, unit variance first.

    ``forward(patch_a, patch_b)`` returns ``logits (B, classes)`` and ``offsets (B, 4, 2)`` of
    the best class's hypothesis (so that the usual corner error monitors training).
    """

    def __init__(
        self,
        input_size: int = 64,
        patch_size: int = 128,
        rho: float = 32.0,
        channels: tuple[int, ...] = (32, 48),
        dim: int = 64,
        blocks: int = 1,
        rotations: int = 8,
        zoom_octaves: int = 2,
        width: int = 32,
        train_encoder: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if rotations < 1 or zoom_octaves < 0:
            raise ValueError(
                f"need rotations >= 1 and zoom_octaves >= 0, got {rotations} and {zoom_octaves}"
            )
        self.input_size, self.patch_size, self.rho = int(input_size), int(patch_size), float(rho)
        self.rotations, self.zoom_octaves = int(rotations), int(zoom_octaves)
        self.normalize = normalize
        self.encoder = Encoder(tuple(channels), dim, blocks)
        if self.input_size % self.encoder.stride:
            raise ValueError(
                f"input size {input_size} must be divisible by the encoder's stride "
                f"{self.encoder.stride}"
            )
        self.encoder.requires_grad_(train_encoder)
        # per class: the match strengths of B's cells and their peakiness, those of the cells
        # of the turned A, and which of those lie inside A
        self.head = nn.Sequential(
            nn.Conv2d(4, width, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(True),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1),
        )  # fmt: skip
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # the mean best cosine alone (over B's cells, and over A's inside A) ranks classes
        # well: the head starts as that
        self.mean_weight = nn.Parameter(torch.tensor([10.0, 10.0]))
        # and how each class's scores compare (a zoomed-in A is blurred, and blur matches more)
        self.class_bias = nn.Parameter(torch.zeros(self.num_classes))
        G = torch.stack([centre_similarity(self.patch_size, torch.tensor(r), torch.tensor(z))
                         for r, z in self.hypotheses()])  # fmt: skip
        self.register_buffer("hypothesis_matrices", G.float(), persistent=False)

    @classmethod
    def around(
        cls, encoder: nn.Module, patch_size: int, input_size: int, **kwargs
    ) -> SimilarityNet:
        """A proposal network around a trained network's encoder (shared, not copied), its head
        as initialised: each class scored by the mean best cosine alone. This is what the
        shipped ``wide`` uses (``proposal: global-encoder``, docs/methods.md)."""
        net = cls(input_size=input_size, patch_size=patch_size, **kwargs)
        if input_size % encoder.stride:
            raise ValueError(f"input size {input_size} is not a multiple of the encoder's stride")
        net.encoder = encoder
        return net

    @property
    def zooms(self) -> list[float]:
        return [2.0**j for j in range(-self.zoom_octaves, self.zoom_octaves + 1)]

    @property
    def num_classes(self) -> int:
        return self.rotations * (2 * self.zoom_octaves + 1)

    def hypotheses(self) -> list[tuple[float, float]]:
        """``(angle_deg, zoom)`` of every class, in the order of the logits."""
        step = 360.0 / self.rotations
        return [(k * step, z) for k in range(self.rotations) for z in self.zooms]

    def _hypothesis_grids(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Where each hypothesis samples A (``(K, P, P, 2)``, pixels) and the share of each cell
        of the turned A that lies inside A (``(K, 1, side, side)``): the same for every pair,
        computed once per device and dtype."""
        key = (like.device, like.dtype)
        if getattr(self, "_grids", (None,))[0] != key:
            p, side = self.patch_size, self.input_size // self.encoder.stride
            G = self.hypothesis_matrices.to(device=like.device, dtype=like.dtype)
            grid = warp_grid(G, (p, p))
            inside = inside_mask(grid, (p, p)).to(like.dtype)
            self._grids = (key, grid, F.adaptive_avg_pool2d(inside, side))
        return self._grids[1], self._grids[2]

    def _features(self, x: Tensor) -> Tensor:
        """L2-normalised encoder features ``(N, D, cells)`` of ``(N, 1, P, P)`` views."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        if self.normalize:
            x = standardize(x)
        return F.normalize(self.encoder(x).flatten(2), dim=1)

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> dict[str, Tensor]:
        n, k = patch_a.shape[0], self.num_classes
        side = self.input_size // self.encoder.stride
        grid, valid = self._hypothesis_grids(patch_a)
        # A under every hypothesis, A'(q) = A(G q) as the whole-image estimator resamples it,
        # flat (A's mean) where q falls outside A: a zoomed-out A shows no invented content
        mean_a = patch_a.mean(dim=(1, 2, 3), keepdim=True)
        turned = sample_at((patch_a - mean_a).repeat_interleave(k, dim=0), grid.repeat(n, 1, 1, 1))
        turned = turned + mean_a.repeat_interleave(k, dim=0)
        valid = valid.repeat(n, 1, 1, 1)  # share of each cell of A' inside A
        f_a = self._features(turned)  # (n k, D, cells)
        f_b = self._features(patch_b).repeat_interleave(k, dim=0)
        corr = torch.einsum("bdi,bdj->bij", f_a, f_b)  # (n k, cells of A', cells of B)
        outside = (valid.flatten(1) < 0.5)[:, :, None]
        corr = corr.masked_fill(outside, -1.0)
        # each cell of B: its best match in A' (all of B is in A when B is zoomed in), and each
        # cell of A' inside A: its best match in B (all of A is in B when B is zoomed out)
        best_b = corr.max(dim=1).values.view(n * k, 1, side, side)
        peak_b = torch.softmax(corr * 20.0, dim=1).max(dim=1).values.view(n * k, 1, side, side)
        best_a = corr.max(dim=2).values.view(n * k, 1, side, side)
        inside_a = (valid >= 0.5).to(best_a.dtype)
        mean_a_side = (best_a * inside_a).sum(dim=(1, 2, 3)) / inside_a.sum(
            dim=(1, 2, 3)
        ).clamp_min(1)
        maps = torch.cat([best_b, peak_b, best_a * inside_a, inside_a], dim=1)
        logits = (
            self.mean_weight[0] * best_b.mean(dim=(1, 2, 3))
            + self.mean_weight[1] * mean_a_side
            + self.head(maps).squeeze(1)
        ).view(n, k) + self.class_bias
        return {"logits": logits, "offsets": self.offsets_of(logits.argmax(dim=1))}

    def offsets_of(self, classes: Tensor) -> Tensor:
        """``(B, 4, 2)`` offsets of the hypotheses ``G`` of ``classes (B,)`` on the views."""
        G = self.hypothesis_matrices[classes].double()
        corners = patch_corners(G.new_zeros(len(classes), 2), self.patch_size)
        return (transform_points(G, corners) - corners).float()


class SimilarityCrossEntropy(nn.Module):
    """Cross-entropy of :class:`SimilarityNet`'s logits against soft labels: the true rotation
    and zoom (:func:`similarity_of` of the true ``H_a_from_b`` at B's centre) split bilinearly
    between the two nearest rotation classes (circularly) and the two nearest zoom classes
    (in log₂; zooms beyond the grid go to its end). Logs top-1 and top-3 accuracy against the
    nearest class."""

    def __init__(self, rotations: int, zoom_octaves: int, patch_size: int) -> None:
        super().__init__()
        self.rotations, self.zoom_octaves = int(rotations), int(zoom_octaves)
        self.patch_size = int(patch_size)

    def targets(self, offsets: Tensor) -> Tensor:
        """Soft labels ``(B, classes)`` for the true ``offsets (B, 4, 2)``."""
        H, _ = offsets_to_homography(offsets.double(), self.patch_size)
        angle, zoom = similarity_of(H, self.patch_size)
        r = (angle % 360.0) / (360.0 / self.rotations)
        r0 = r.floor()
        fr = r - r0
        nz = 2 * self.zoom_octaves + 1
        zpos = (torch.log2(zoom.clamp_min(1e-6)) + self.zoom_octaves).clamp(0, nz - 1)
        z0 = zpos.floor().clamp(max=nz - 2) if nz > 1 else zpos.floor()
        fz = zpos - z0
        t = offsets.new_zeros(len(offsets), self.rotations, nz, dtype=torch.float64)
        rows = torch.arange(len(offsets), device=offsets.device)
        for dr, wr in ((0, 1 - fr), (1, fr)):
            ri = (r0.long() + dr) % self.rotations
            for dz, wz in ((0, 1 - fz), (1, fz)):
                if nz == 1 and dz:
                    continue
                zi = (z0.long() + dz).clamp(0, nz - 1)
                t[rows, ri, zi] += wr * (wz if nz > 1 else 1.0)
        return t.flatten(1).float()

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = out["logits"].float()
        target = self.targets(batch["offsets"])
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        nearest = target.argmax(dim=1, keepdim=True)
        top3 = logits.topk(min(3, logits.shape[1]), dim=1).indices
        return {
            "loss": loss,
            "top1": (top3[:, :1] == nearest).any(dim=1).float().mean(),
            "top3": (top3 == nearest).any(dim=1).float().mean(),
        }
