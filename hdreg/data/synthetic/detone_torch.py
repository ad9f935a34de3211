"""DeTone pairs generated a whole batch at a time on the images' device (CPU or CUDA).

The protocol is the CPU generator's (:mod:`hdreg.data.synthetic.detone`), vectorized over the batch:

1. pick a source image uniformly, and with ``flips`` flip it left-right, up-down or both (each
   with probability 1/4, as :class:`~hdreg.data.synthetic.detone.SyntheticPairs`);
2. pick the integer top-left pixel ``(x0, y0)`` of a ``P×P`` window with ``x0 ∈ [m, W−P−m]``,
   ``y0 ∈ [m, H−P−m]``, ``m = ceil(ρ)``;
3. perturb its corners by ``U[−ρ, ρ]`` offsets (float32), redrawing the rows whose quadrilateral
   is not strictly convex until none is left;
4. ``H_a_from_b = DLT(corners, corners + offsets)`` in the full-image frame; patch B is the
   (jittered) source bilinearly sampled at ``H_a_from_b · p`` for every pixel ``p`` of the
   window, rounded to 8 bits; patch A is the window of the (jittered) source, cut by indexing;
5. the optional photometric jitter is the formula of
   :class:`~hdreg.data.synthetic.detone.PhotometricJitter`, drawn independently for A and
   B and applied as a per-sample 256-entry lookup table.

Conventions (docs/conventions.md): pixel ``(x, y)``, ``(0, 0)`` the centre of the top-left pixel,
corners TL, TR, BR, BL, ``offsets`` = where patch B's corners lie in A minus the corners.

Randomness: one ``torch.Generator`` on the images' device, seeded for every batch from
``(seed, rank, batch_index)``. Batch ``batch_index`` of rank ``rank`` is therefore reproducible
on one device type (and torch version), whatever came before it, but it is *not* the same as the
CPU generator's pairs, and CPU and CUDA give different (equally distributed) batches: torch's CPU
generator is a Mersenne twister, its CUDA generator Philox. Pair-level determinism (pair ``i``
independent of batching, workers and device) remains the CPU generator's property; here the unit
is the batch, and a batch also depends on its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hdreg.data.seeding import check_sources
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter
from hdreg.geometry import (
    four_point_to_homography_ex,
    is_convex,
    patch_corners,
    warp_perspective,
)

__all__ = ["PairDraws", "TorchPairGenerator", "batch_seed", "jitter_luts"]

# Mixed into every batch seed so that (seed, rank, batch_index) never reproduces the entropy of a
# CPU pair stream (pair_rng hashes (seed, stream, index) the same way).
_SEED_TAG = 0x7467656E  # "tgen"


def batch_seed(seed: int, rank: int, batch_index: int) -> int:
    """The 64-bit seed of batch ``batch_index`` of process ``rank`` under ``seed``.

    A hash (numpy's ``SeedSequence``) rather than arithmetic such as ``seed + batch_index``, so
    that neighbouring seeds, ranks and batches get unrelated generator states.
    """
    for name, value in (("seed", seed), ("rank", rank), ("batch_index", batch_index)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    entropy = [_SEED_TAG, int(seed), int(rank), int(batch_index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def jitter_luts(log_gamma: Tensor, log_contrast: Tensor, brightness: Tensor) -> Tensor:
    """Per-sample photometric lookup tables, exactly :meth:`PhotometricJitter.draw_lut`'s.

    On intensities ``x = i / 255``: ``y = (x^γ − ½)·c + ½ + b`` with ``γ = exp(log_gamma)``,
    ``c = exp(log_contrast)``, ``b = brightness``; the table holds ``clip(rint(255·y), 0, 255)``.
    Computed in float64 (as numpy does) so that the rounding matches the CPU tables.

    Args:
        log_gamma, log_contrast, brightness: ``(B,)`` draws.

    Returns:
        ``(B, 256) uint8`` tables on the inputs' device.
    """
    dev = log_gamma.device
    x = torch.arange(256, device=dev, dtype=torch.float64) / 255.0
    g = log_gamma.to(torch.float64).exp()[:, None]
    c = log_contrast.to(torch.float64).exp()[:, None]
    b = brightness.to(torch.float64)[:, None]
    y = (x[None] ** g - 0.5) * c + 0.5 + b
    return torch.round(y * 255.0).clamp_(0, 255).to(torch.uint8)  # round: half to even, as rint


def _draw_luts(jitter: PhotometricJitter, n: int, gen: torch.Generator, device) -> Tensor:
    """``(n, 256) uint8`` random tables (the draws of ``draw_lut``: gamma, contrast, brightness)."""

    def uniform(bound: float) -> Tensor:
        out = torch.empty(n, device=device, dtype=torch.float64)
        return out.uniform_(-bound, bound, generator=gen)

    log_gamma = uniform(jitter.gamma)
    log_contrast = uniform(jitter.contrast)
    return jitter_luts(log_gamma, log_contrast, uniform(jitter.brightness))


def _apply_luts(images: Tensor, luts: Tensor) -> Tensor:
    """Map ``images (B, ...) uint8`` through per-sample ``luts (B, 256)`` (a gather)."""
    flat = images.reshape(images.shape[0], -1).long()
    return luts.gather(1, flat).reshape(images.shape)


@dataclass(frozen=True)
class PairDraws:
    """The random choices of one batch, on the images' device.

    Attributes:
        image_index: ``(B,) int64`` source image of each pair.
        flip: ``(B,) int64`` in 0..3 (bit 0: left-right, bit 1: up-down), or None without flips.
        top_left: ``(B, 2) int64`` ``(x0, y0)`` of the window.
        offsets: ``(B, 4, 2) float32`` corner perturbations (every quadrilateral convex).
        lut_a, lut_b: ``(B, 256) uint8`` photometric tables of A and B, or None without jitter.
    """

    image_index: Tensor
    flip: Tensor | None
    top_left: Tensor
    offsets: Tensor
    lut_a: Tensor | None
    lut_b: Tensor | None


class TorchPairGenerator:
    """DeTone pairs, a batch at a time, on the device of ``images`` (see the module docstring).

    Args:
        images: ``(N, H, W) uint8`` source images of ``protocol.image_size`` on any device; the
            pairs are made there (move the images to the GPU once to generate on the GPU).
        protocol: the pair protocol (patch size, ρ, optional jitter), as for the CPU generator.
        seed: seed of the stream (a non-negative integer).
        flips: flip each source image at random first (as :class:`SyntheticPairs`).
        with_full_image: also return the full image A (for the unsupervised model).

    Example:
        >>> gen = TorchPairGenerator(torch.zeros(3, 240, 320, dtype=torch.uint8),
        ...                          DeToneProtocol((320, 240), 128, 32.0), seed=0)
        >>> batch = gen.generate(8, batch_index=0)
        >>> batch["patch_a"].shape, batch["offsets"].shape
        (torch.Size([8, 1, 128, 128]), torch.Size([8, 4, 2]))
    """

    def __init__(
        self,
        images: Tensor,
        protocol: DeToneProtocol,
        seed: int,
        flips: bool = False,
        with_full_image: bool = False,
    ) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(
                f"images must be a torch.Tensor (N, H, W) uint8, got {type(images).__name__}; "
                "convert an array with torch.from_numpy(np.array(images))"
            )
        check_sources(images)
        w, h = protocol.image_size
        if tuple(images.shape[1:]) != (h, w):
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[1]} but the protocol expects {w}x{h}"
            )
        batch_seed(seed, 0, 0)  # validates the seed
        self.images = images
        self.protocol = protocol
        self.seed = int(seed)
        self.flips = bool(flips)
        self.with_full_image = bool(with_full_image)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __repr__(self) -> str:
        n, h, w = self.images.shape
        return (
            f"{type(self).__name__}({n} images {w}x{h} on {self.device}, {self.protocol}, "
            f"seed={self.seed}, flips={self.flips}, with_full_image={self.with_full_image})"
        )

    def generator(self, batch_index: int, rank: int = 0) -> torch.Generator:
        """The freshly seeded generator of batch ``batch_index`` of ``rank``."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(batch_seed(self.seed, rank, batch_index))
        return gen

    def generate(self, batch_size: int, batch_index: int, *, rank: int = 0) -> dict[str, Tensor]:
        """Batch ``batch_index`` of process ``rank``: ``batch_size`` pairs on the images' device.

        Returns the keys of :class:`SyntheticPairs` items, batched:
            ``patch_a``, ``patch_b``: ``(B, 1, P, P) uint8``;
            ``offsets``: ``(B, 4, 2) float32`` (patch B's corners in A's frame minus the corners);
            ``corners``: ``(B, 4, 2) float32`` patch corners in the full image;
            ``top_left``: ``(B, 2) int64`` ``(x0, y0)``;
            with ``with_full_image``: ``image_a (B, 1, H, W) uint8``, jittered like patch A.
        """
        return self.render(self.draw(batch_size, batch_index, rank=rank))

    @torch.no_grad()
    def draw(self, batch_size: int, batch_index: int, *, rank: int = 0) -> PairDraws:
        """The random choices of batch ``batch_index`` of ``rank`` (rendered by :meth:`render`)."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        gen = self.generator(batch_index, rank)
        dev, B = self.device, int(batch_size)
        w, h = self.protocol.image_size
        p, m, rho = self.protocol.patch_size, self.protocol.margin, self.protocol.rho
        # The order of the draws is part of the stream: image, flip, x0, y0, offsets, A, B tables.
        k = torch.randint(self.images.shape[0], (B,), device=dev, generator=gen)
        flip = torch.randint(4, (B,), device=dev, generator=gen) if self.flips else None
        x0 = torch.randint(m, w - p - m + 1, (B,), device=dev, generator=gen)
        y0 = torch.randint(m, h - p - m + 1, (B,), device=dev, generator=gen)
        top_left = torch.stack([x0, y0], dim=1)
        offsets = self._draw_offsets(patch_corners(top_left, p), rho, gen)
        jitter = self.protocol.jitter
        lut_a = _draw_luts(jitter, B, gen, dev) if jitter else None
        lut_b = _draw_luts(jitter, B, gen, dev) if jitter else None
        return PairDraws(k, flip, top_left, offsets, lut_a, lut_b)

    @torch.no_grad()
    def render(self, draws: PairDraws) -> dict[str, Tensor]:
        """The pairs of ``draws`` (see :meth:`generate` for the keys). Deterministic."""
        p, m = self.protocol.patch_size, self.protocol.margin
        top_left, offsets = draws.top_left, draws.offsets
        B, dev = top_left.shape[0], top_left.device
        corners = patch_corners(top_left, p)  # float32
        H_a_from_b, valid = four_point_to_homography_ex(corners, corners + offsets)
        if not bool(valid.all()):  # cannot happen for convex quads; never return a wrong label
            raise RuntimeError("degenerate perturbed patch in a convex quadrilateral: a bug")

        # Everything patch B samples lies in the window grown by the margin (the perturbed quad
        # is convex and inside it), so only that region of each source is gathered and warped.
        side = p + 2 * m
        origin = top_left - m  # (B, 2) top-left of the region in the full image
        region = self._gather(draws.image_index, draws.flip, origin, side, side)  # uint8
        patch_a = region[:, m : m + p, m : m + p]
        if draws.lut_a is not None:
            patch_a = _apply_luts(patch_a, draws.lut_a)
        source_b = region if draws.lut_b is None else _apply_luts(region, draws.lut_b)

        # H_region_from_b = T(−origin) · H_a_from_b: the same warp, read from the region.
        shift = torch.eye(3, device=dev, dtype=H_a_from_b.dtype).repeat(B, 1, 1)
        shift[:, :2, 2] = -origin.to(H_a_from_b.dtype)
        # Intensities stay in [0, 255] (no /255 and ×255 round trip before the 8-bit rounding).
        # "border" only matters for sample points a rounding error outside the region.
        patch_b = warp_perspective(
            source_b[:, None].float(), shift @ H_a_from_b, (p, p), fill="border",
            top_left_b=top_left,
        )  # fmt: skip
        patch_b = patch_b.round_().clamp_(0, 255).to(torch.uint8)

        out = {
            "patch_a": patch_a[:, None].contiguous(),
            "patch_b": patch_b,
            "offsets": offsets,
            "corners": corners,
            "top_left": top_left,
        }
        if self.with_full_image:
            w, h = self.protocol.image_size
            image_a = self._gather(draws.image_index, draws.flip, torch.zeros_like(top_left), h, w)
            if draws.lut_a is not None:
                image_a = _apply_luts(image_a, draws.lut_a)
            out["image_a"] = image_a[:, None]
        return out

    def _draw_offsets(self, corners: Tensor, rho: float, gen: torch.Generator) -> Tensor:
        """``U[−ρ, ρ]`` offsets ``(B, 4, 2) float32``; non-convex rows redrawn until none is."""

        def draw(n: int) -> Tensor:
            out = torch.empty(n, 4, 2, device=corners.device, dtype=torch.float64)
            return out.uniform_(-rho, rho, generator=gen).float()  # float64 draw, as numpy's

        offsets = draw(corners.shape[0])
        while True:
            bad = torch.nonzero(~is_convex(corners + offsets)).flatten()
            if bad.numel() == 0:
                return offsets
            offsets[bad] = draw(bad.numel())

    def _gather(
        self, k: Tensor, flip: Tensor | None, origin: Tensor, height: int, width: int
    ) -> Tensor:
        """``(B, height, width) uint8`` windows at ``origin (B, 2)`` of the (flipped) images ``k``.

        A flip is folded into the indices: left-right flipped ``img[y, x]`` is
        ``img[y, W−1−x]``, so no flipped copy of a full image is ever made.
        """
        h, w = self.images.shape[1:]
        ys = origin[:, 1:2] + torch.arange(height, device=k.device)  # (B, height)
        xs = origin[:, 0:1] + torch.arange(width, device=k.device)  # (B, width)
        if flip is not None:
            ys = torch.where((flip & 2).bool()[:, None], h - 1 - ys, ys)
            xs = torch.where((flip & 1).bool()[:, None], w - 1 - xs, xs)
        # Rows first, then a gather along them: about twice as fast on the CPU as indexing all
        # three dimensions at once.
        rows = self.images[k[:, None], ys]  # (B, height, W)
        return rows.gather(2, xs[:, None, :].expand(-1, height, -1))
