"""Wide-motion training pairs rendered a whole batch at a time on the images' device.

The distribution is :class:`hdreg.data.synthetic.wide.WidePairs`': the geometry and the photometric
parameters of every pair are drawn on the host by the same functions
(:func:`~hdreg.data.synthetic.wide.sample_wide_geometry`,
:func:`~hdreg.data.synthetic.photometric.draw_augmentation`,
a few microseconds per pair) from a numpy generator seeded per batch
(:func:`hdreg.data.synthetic.detone_torch.batch_seed`); the heavy part runs on the device: trilinear
mipmapped rendering of both views at twice their size (``grid_sample`` through
:func:`hdreg.geometry.warp_perspective`, a 5-tap Gaussian pyramid as ``cv2.pyrDown``), 2×2 area
averaging, the tone lookup table, Gaussian and motion blur (per-sample kernels, one grouped
convolution), and Gaussian noise from a ``torch.Generator`` seeded per batch. JPEG re-encoding
has no device implementation: the views that draw it go through ``cv2.imencode`` on the host.

A batch is reproducible from ``(seed, rank, batch_index)`` and its size on one device type; it is
not the CPU generator's pairs (pair-level determinism is the CPU generator's property).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hdreg.data.seeding import check_sources
from hdreg.data.synthetic.detone_torch import batch_seed
from hdreg.data.synthetic.photometric import ViewAugmentation, draw_augmentation, jpeg_roundtrip
from hdreg.data.synthetic.wide import check_photo, sample_wide_geometry
from hdreg.data.synthetic.wide_protocol import WideProtocol
from hdreg.geometry import warp_perspective
from hdreg.geometry_np import project, rect_corners

__all__ = ["TorchWideGenerator", "pyramid", "render_views"]

_PYR_KERNEL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _pyr_down(images: Tensor) -> Tensor:
    """``cv2.pyrDown`` of ``(N, 1, H, W)`` float images: 5-tap Gaussian, reflect-101 border,
    every second pixel (output pixel i on input pixel 2i), size ``((W+1)//2, (H+1)//2)``."""
    k = _PYR_KERNEL.to(images)
    x = F.pad(images, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    x = F.conv2d(x, k.view(1, 1, 5, 1))
    return x[:, :, ::2, ::2]


def pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """``[images, pyrDown(images), ...]``: ``levels + 1`` float32 ``(N, 1, h, w)`` tensors of
    ``(N, H, W) uint8`` images."""
    out = [images[:, None].float()]
    for _ in range(levels):
        out.append(_pyr_down(out[-1]))
    return out


def _minification(H_source_from_view: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, h, w)``: the larger singular value of each warp's Jacobian at every pixel of an
    ``(w, h)`` view (float64 geometry)."""
    w, h = size
    dev = H_source_from_view.device
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float64),
        torch.arange(w, device=dev, dtype=torch.float64),
        indexing="ij",
    )
    H = H_source_from_view.to(torch.float64)[:, :, :, None, None]
    u = H[:, 0, 0] * xs + H[:, 0, 1] * ys + H[:, 0, 2]
    v = H[:, 1, 0] * xs + H[:, 1, 1] * ys + H[:, 1, 2]
    q = H[:, 2, 0] * xs + H[:, 2, 1] * ys + H[:, 2, 2]
    q2 = q * q
    a = (H[:, 0, 0] * q - u * H[:, 2, 0]) / q2
    b = (H[:, 0, 1] * q - u * H[:, 2, 1]) / q2
    c = (H[:, 1, 0] * q - v * H[:, 2, 0]) / q2
    d = (H[:, 1, 1] * q - v * H[:, 2, 1]) / q2
    half = (a * a + b * b + c * c + d * d) / 2
    return torch.sqrt(half + torch.sqrt(torch.clamp(half * half - (a * d - b * c) ** 2, min=0)))


def render_views(
    levels: list[Tensor], index: Tensor, H_source_from_view: Tensor, view_size: tuple[int, int]
) -> Tensor:
    """Views ``(B, 1, H, W)`` float (0–255, unrounded) of images ``index (B,)`` of a
    :func:`pyramid`, through ``H_source_from_view (B, 3, 3)``: rendered at twice the size, each
    pixel blended from the two levels that bracket its minification, then 2×2 averaged (the
    device counterpart of :func:`hdreg.data.synthetic.wide.render_view`)."""
    w, h = view_size
    k = 2
    view_from_big = torch.tensor(
        [[1 / k, 0, (1 - k) / (2 * k)], [0, 1 / k, (1 - k) / (2 * k)], [0, 0, 1]],
        dtype=torch.float64, device=H_source_from_view.device,
    )  # fmt: skip
    H_big = H_source_from_view.to(torch.float64) @ view_from_big
    top = len(levels) - 1
    level = torch.log2(torch.clamp(_minification(H_big, (w * k, h * k)), min=1.0)).clamp(max=top)
    level = level.to(torch.float32)[:, None]
    acc = torch.zeros_like(level)
    for lv in range(int(level.min().floor()), int(level.max().ceil()) + 1):
        weight = torch.clamp(1.0 - (level - lv).abs(), min=0.0)
        if not bool((weight > 0).any()):
            continue
        scale = torch.tensor([0.5**lv, 0.5**lv, 1.0], dtype=torch.float64, device=H_big.device)
        H_lv = (torch.diag(scale) @ H_big).to(torch.float32)
        warped = warp_perspective(levels[lv][index], H_lv, (w * k, h * k), fill="reflection")
        acc = acc + weight * warped
    return F.avg_pool2d(acc, k)


def _gaussian_kernels(sigmas: list[float], size: int, device) -> Tensor:
    """``(B, size)`` normalised 1-D Gaussians (``sigma`` 0: the identity)."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    s = torch.tensor(sigmas, dtype=torch.float32, device=device)[:, None]
    g = torch.where(s > 0, torch.exp(-0.5 * (x / s.clamp(min=1e-6)) ** 2), (x == 0).float())
    return g / g.sum(dim=1, keepdim=True)


def _per_sample_conv(images: Tensor, kernels: Tensor) -> Tensor:
    """Convolve each ``(B, 1, H, W)`` image with its own ``(B, kh, kw)`` kernel (reflect-101
    border, as OpenCV's default)."""
    b, _, kh, kw = images.shape[0], 1, kernels.shape[1], kernels.shape[2]
    x = F.pad(images, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    out = F.conv2d(x.transpose(0, 1), kernels[:, None].to(images), groups=b)
    return out.transpose(0, 1)


def _augment(views: Tensor, draws: list[ViewAugmentation], gen: torch.Generator) -> Tensor:
    """Apply each view's drawn augmentation (``views (B, 1, H, W)`` float 0–255, rounded to 8 bits
    after every step like the host's uint8 pipeline); returns ``(B, 1, H, W) uint8``."""
    dev = views.device
    x = views.round().clamp(0, 255)
    if any(d.lut is not None for d in draws):
        luts = torch.stack([
            torch.from_numpy(d.lut if d.lut is not None else np.arange(256, dtype=np.uint8))
            for d in draws
        ]).to(dev).float()  # fmt: skip
        x = torch.gather(luts, 1, x.long().flatten(1)).view_as(x)
    sigmas = [d.blur_sigma or 0.0 for d in draws]
    if any(sigmas):
        size = 2 * math.ceil(3 * max(sigmas)) + 1
        g = _gaussian_kernels(sigmas, size, dev)
        x = _per_sample_conv(x, g[:, :, None] * g[:, None, :]).round().clamp(0, 255)
    if any(d.motion_kernel is not None for d in draws):
        size = max(d.motion_kernel.shape[0] for d in draws if d.motion_kernel is not None)
        kernels = np.zeros((len(draws), size, size), np.float32)
        for i, d in enumerate(draws):
            m = d.motion_kernel if d.motion_kernel is not None else np.ones((1, 1), np.float32)
            o = (size - m.shape[0]) // 2
            kernels[i, o : o + m.shape[0], o : o + m.shape[1]] = m
        x = _per_sample_conv(x, torch.from_numpy(kernels).to(dev)).round().clamp(0, 255)
    sigma = torch.tensor([d.noise_sigma or 0.0 for d in draws], device=dev).view(-1, 1, 1, 1)
    if bool((sigma > 0).any()):
        noise = torch.randn(x.shape, generator=gen, device=dev)
        x = (x + noise * sigma).round().clamp(0, 255)
    out = x.to(torch.uint8)
    jpeg = [i for i, d in enumerate(draws) if d.jpeg_quality is not None]
    if jpeg:
        host = out[jpeg, 0].cpu().numpy()
        coded = np.stack(
            [jpeg_roundtrip(v, draws[i].jpeg_quality) for v, i in zip(host, jpeg, strict=True)]
        )
        out[jpeg, 0] = torch.from_numpy(coded).to(dev)
    return out


class TorchWideGenerator:
    """Batches of square wide-motion pairs with the keys of
    :class:`hdreg.data.synthetic.wide.WidePairs`.

    Args:
        images: ``(N, H, W) uint8`` source photos on the device that renders them.
        patch_size: side ``P`` of both views.
        protocol: the wide-pair parameters.
        seed: seed of the batches.
        flips: flip each pair's source photo left-right, up-down or both (1/4 each).
    """

    def __init__(
        self,
        images: Tensor,
        patch_size: int,
        protocol: WideProtocol,
        seed: int,
        *,
        flips: bool = False,
    ) -> None:
        check_sources(images)
        check_photo(images[0].cpu().numpy(), protocol, "source images")
        self.patch_size, self.protocol, self.seed, self.flips = (
            int(patch_size),
            protocol,
            seed,
            flips,
        )
        self.n_images, h, w = images.shape
        self.photo_size = (int(w), int(h))
        top = max(0, math.floor(math.log2(min(h, w) / 16)))
        self.levels = pyramid(images, top)

    @property
    def device(self) -> torch.device:
        return self.levels[0].device

    def generate(self, batch_size: int, batch_index: int, *, rank: int = 0) -> dict[str, Tensor]:
        """Batch ``batch_index`` of process ``rank``: ``patch_a``, ``patch_b`` ``(B, 1, P, P)
        uint8``; ``offsets``, ``corners`` ``(B, 4, 2) float32``, on the images' device."""
        s = batch_seed(self.seed, rank, batch_index)
        rng = np.random.default_rng(s)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(s & 0x7FFF_FFFF_FFFF_FFFF)
        p, (w, h) = self.patch_size, self.photo_size
        lo, hi = self.protocol.aspect
        index, H_a, H_b, H_ba = [], [], [], []
        for _ in range(batch_size):
            k = int(rng.integers(self.n_images))
            flip = int(rng.integers(4)) if self.flips else 0
            aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            g = sample_wide_geometry((w, h), (p, p), self.protocol, rng, aspect=aspect)
            # the flipped photo's pixel (x, y) is the photo's (W-1-x, y) and/or (x, H-1-y)
            fx, fy = (-1.0 if flip & 1 else 1.0), (-1.0 if flip & 2 else 1.0)
            photo_from_flipped = np.array(
                [[fx, 0, (w - 1) if fx < 0 else 0], [0, fy, (h - 1) if fy < 0 else 0], [0, 0, 1]]
            )
            index.append(k)
            H_a.append(photo_from_flipped @ g.H_source_from_a)
            H_b.append(photo_from_flipped @ g.H_source_from_b)
            H_ba.append(g.H_b_from_a)
        aug = self.protocol.photometric
        draws_a = [draw_augmentation(aug, rng) if aug else ViewAugmentation() for _ in index]
        draws_b = [draw_augmentation(aug, rng) if aug else ViewAugmentation() for _ in index]
        dev = self.device
        idx = torch.tensor(index, device=dev)
        views_a = render_views(self.levels, idx, torch.tensor(np.stack(H_a), device=dev), (p, p))
        views_b = render_views(self.levels, idx, torch.tensor(np.stack(H_b), device=dev), (p, p))
        corners = rect_corners((p, p))
        offsets = np.stack([project(np.linalg.inv(H), corners) - corners for H in H_ba])
        return {
            "patch_a": _augment(views_a, draws_a, gen),
            "patch_b": _augment(views_b, draws_b, gen),
            "offsets": torch.from_numpy(offsets.astype(np.float32)).to(dev),
            "corners": torch.from_numpy(corners.astype(np.float32))
            .expand(len(index), 4, 2)
            .to(dev),
        }
