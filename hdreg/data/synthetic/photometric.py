"""Photometric change of one rendered view: the draw of a :class:`WidePhotometric` (tone curve,
Gaussian and motion blur, noise, JPEG) and its application (OpenCV)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hdreg.data.synthetic.wide_protocol import WidePhotometric

__all__ = ["ViewAugmentation", "augment_view", "draw_augmentation", "jpeg_roundtrip"]


@dataclass
class ViewAugmentation:
    """One draw of :class:`WidePhotometric` for one view; None: the step is skipped.

    ``lut (256,) uint8``; ``blur_sigma`` px; ``motion_kernel`` a normalised ``(k, k) float32``
    line; ``noise_sigma`` in grey levels, with ``noise`` its ``(H, W) float32`` standard-normal
    field when drawn on the host; ``jpeg_quality``.
    """

    lut: np.ndarray | None = None
    blur_sigma: float | None = None
    motion_kernel: np.ndarray | None = None
    noise_sigma: float | None = None
    noise: np.ndarray | None = None
    jpeg_quality: int | None = None


def draw_augmentation(
    aug: WidePhotometric, rng: np.random.Generator, noise_shape: tuple[int, int] | None = None
) -> ViewAugmentation:
    """Draw every step of ``aug`` for one view; with ``noise_shape`` also the noise field (the
    batched generator draws it on its device instead)."""
    out = ViewAugmentation()
    if rng.random() < aug.p_tone:
        g = math.exp(rng.uniform(-aug.gamma, aug.gamma))
        c = math.exp(rng.uniform(-aug.contrast, aug.contrast))
        b = rng.uniform(-aug.brightness, aug.brightness)
        x = np.arange(256, dtype=np.float64) / 255.0
        y = np.rint(((x**g - 0.5) * c + 0.5 + b) * 255.0)
        out.lut = np.clip(y, 0, 255).astype(np.uint8)
    if rng.random() < aug.p_blur and aug.blur >= 0.5:
        out.blur_sigma = float(rng.uniform(0.5, aug.blur))
    if rng.random() < aug.p_motion_blur:
        length = rng.uniform(3.0, aug.motion_blur)
        angle = rng.uniform(0.0, math.pi)
        out.motion_kernel = _motion_kernel(length, angle)
    if rng.random() < aug.p_noise:
        out.noise_sigma = float(rng.uniform(0.0, aug.noise) * 255.0)
        if noise_shape is not None:
            out.noise = rng.standard_normal(noise_shape, np.float32)
    if rng.random() < aug.p_jpeg:
        out.jpeg_quality = int(
            rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1], endpoint=True)
        )
    return out


def jpeg_roundtrip(view: np.ndarray, quality: int) -> np.ndarray:
    """``view (H, W) uint8`` encoded as JPEG at ``quality`` and decoded (``cv2.imencode``)."""
    ok, buf = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode a {view.shape} view")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def augment_view(view: np.ndarray, aug: WidePhotometric, rng: np.random.Generator) -> np.ndarray:
    """``view (H, W) uint8`` degraded by one random draw of ``aug`` (a new array)."""
    d = draw_augmentation(aug, rng, view.shape)
    out = view
    if d.lut is not None:
        out = cv2.LUT(out, d.lut)
    if d.blur_sigma is not None:
        out = cv2.GaussianBlur(out, (0, 0), d.blur_sigma, borderType=cv2.BORDER_REFLECT101)
    if d.motion_kernel is not None:
        out = cv2.filter2D(out, -1, d.motion_kernel, borderType=cv2.BORDER_REFLECT101)
    if d.noise_sigma is not None:
        noisy = out.astype(np.float32) + d.noise * d.noise_sigma
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if d.jpeg_quality is not None:
        out = jpeg_roundtrip(out, d.jpeg_quality)
    return out if out is not view else view.copy()


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line kernel of ``length`` pixels at ``angle`` (radians)."""
    size = math.ceil(length) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    half = (length - 1) / 2
    dx, dy = math.cos(angle) * half, math.sin(angle) * half
    cv2.line(
        kernel,
        (round((c - dx) * 16), round((c - dy) * 16)),
        (round((c + dx) * 16), round((c + dy) * 16)),
        1.0,
        1,
        cv2.LINE_AA,
        shift=4,
    )
    total = kernel.sum()
    if total <= 0:  # cannot happen for length >= 3, but never divide by zero
        kernel[int(c), int(c)] = 1.0
        total = 1.0
    return kernel / total
