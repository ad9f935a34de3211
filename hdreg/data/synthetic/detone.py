"""DeTone et al. (2016) synthetic pairs, generated on the fly, seeded per pair.

Protocol (for one pair, from a grayscale image already resized to ``image_size``):

1. pick a ``P×P`` window whose top-left pixel ``(x0, y0)`` leaves a margin of ρ on every side;
2. perturb its four corners by independent ``U[-ρ, ρ]`` offsets (redrawn in the rare case where
   the perturbed quadrilateral is not convex, which no homography of the square can produce
   without folding);
3. ``H_a_from_b = DLT(corners, corners + offsets)``; image B is image A warped so that
   ``B(p) = A(H_a_from_b · p)`` (the "inverse homography" warp of the paper);
4. crop the same window from both: patch A and patch B.

The label ``offsets`` is where patch B's corners lie in A's frame minus the corners
(docs/conventions.md). Pair ``i`` of a stream with seed ``s`` depends only on ``(s, stream, i)``,
not on worker count or order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hdreg.data.seeding import STREAMS, check_sources, pair_rng
from hdreg.geometry_np import is_convex, rect_corners

__all__ = ["DeToneProtocol", "PhotometricJitter", "SyntheticPairs", "generate_pair"]


@dataclass(frozen=True)
class PhotometricJitter:
    """Random brightness, contrast and gamma, drawn independently for image A and image B.

    On intensities ``x`` in [0, 1]: ``x ← x^γ``, then ``x ← (x − ½)·c + ½ + b``, clipped, with
    ``γ = exp(U[−gamma, gamma])``, ``c = exp(U[−contrast, contrast])``,
    ``b = U[−brightness, brightness]``. Applied to 8-bit images through a lookup table. The
    defaults below are the amplitudes that ``jitter: true`` and ``hdreg make-benchmark --jitter``
    switch on (:meth:`from_spec`).

    >>> PhotometricJitter.from_spec({"brightness": 0.1})
    PhotometricJitter(brightness=0.1, contrast=0.3, gamma=0.3)
    """

    brightness: float = 0.2
    contrast: float = 0.3
    gamma: float = 0.3

    @classmethod
    def from_spec(cls, spec: bool | Mapping[str, float] | PhotometricJitter | None):
        """The one way jitter is given everywhere (configs, ``hdreg make-benchmark``): ``None``
        or ``False`` (off, returns None), ``True`` (the default amplitudes), or a mapping that
        changes some of them (``{"brightness": 0.1}``)."""
        if spec is None or spec is False or isinstance(spec, PhotometricJitter):
            return spec or None
        values = {f.name: f.default for f in fields(cls)}
        if spec is True:
            return cls(**values)
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"jitter must be false, true or a mapping of {', '.join(values)}, got {spec!r}"
            )
        unknown = sorted(set(spec) - set(values))
        if unknown:
            raise ValueError(
                f"unknown jitter parameter(s) {', '.join(unknown)}: valid are {', '.join(values)}"
            )
        return cls(**{**values, **{k: float(v) for k, v in spec.items()}})

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 2):
                raise ValueError(f"jitter {name} must be in [0, 2], got {value}")

    def draw_lut(self, rng: np.random.Generator) -> np.ndarray:
        """A random ``(256,) uint8`` lookup table."""
        g = math.exp(rng.uniform(-self.gamma, self.gamma))
        c = math.exp(rng.uniform(-self.contrast, self.contrast))
        b = rng.uniform(-self.brightness, self.brightness)
        x = np.arange(256, dtype=np.float64) / 255.0
        y = (x**g - 0.5) * c + 0.5 + b
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DeToneProtocol:
    """Parameters of the pair generator, validated on construction. DeTone et al.'s values are
    ``hdreg/configs/protocol/detone.yaml`` (the configs pass them in).

    Attributes:
        image_size: ``(width, height)`` the source images are resized to (320×240 in the paper).
        patch_size: side ``P`` of the square patches (128).
        rho: maximum corner perturbation ρ in pixels (32 in DeTone et al.; 45 in Nguyen et al.).
        jitter: optional photometric jitter.
    """

    image_size: tuple[int, int]
    patch_size: int
    rho: float
    jitter: PhotometricJitter | None = field(default=None)

    def __post_init__(self) -> None:
        w, h = self.image_size
        if not (isinstance(self.patch_size, int | np.integer) and self.patch_size >= 8):
            raise ValueError(f"patch_size must be an integer >= 8, got {self.patch_size!r}")
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ValueError(f"rho must be a finite number >= 0, got {self.rho!r}")
        if 2 * self.rho >= self.patch_size - 1:
            raise ValueError(
                f"rho = {self.rho} is too large for patch_size = {self.patch_size}: "
                "perturbations of rho >= (patch_size - 1) / 2 can fold the patch"
            )
        margin = math.ceil(self.rho)
        for name, side in (("width", w), ("height", h)):
            if self.patch_size + 2 * margin > side:
                raise ValueError(
                    f"patch_size + 2 * ceil(rho) = {self.patch_size} + 2 * {margin} = "
                    f"{self.patch_size + 2 * margin} exceeds the image {name} {side}: "
                    "the perturbed patch must stay inside the image; lower rho or patch_size, "
                    "or enlarge image_size"
                )

    @property
    def margin(self) -> int:
        return math.ceil(self.rho)


def _apply_lut(image: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    return image if lut is None else cv2.LUT(image, lut)


def generate_pair(
    image: np.ndarray,
    protocol: DeToneProtocol,
    rng: np.random.Generator,
    *,
    with_full_image: bool = False,
    integer_offsets: bool = False,
) -> dict[str, np.ndarray]:
    """One DeTone pair from a grayscale ``uint8`` image of ``protocol.image_size``.

    With ``integer_offsets`` the corner offsets are integers drawn uniformly from
    ``[-floor(ρ), floor(ρ)]`` (the test set of IHN, RHWF and MCNet) instead of reals in ``[-ρ, ρ]``.

    Returns a dict of arrays:
        ``patch_a``, ``patch_b``: ``(P, P) uint8``;
        ``offsets``: ``(4, 2) float32`` (patch B's corners in A's frame minus the corners);
        ``corners``: ``(4, 2) float32`` patch corners in the full image;
        ``top_left``: ``(2,) int64`` ``(x0, y0)``;
        with ``with_full_image``: ``image_a``, the full image A ``(H, W) uint8`` (jittered like
        patch A), which the unsupervised model warps.
    """
    w, h = protocol.image_size
    if image.shape != (h, w) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 of shape (height, width) = {(h, w)}, got {image.dtype} "
            f"{image.shape}"
        )
    p, m, rho = protocol.patch_size, protocol.margin, protocol.rho
    x0 = int(rng.integers(m, w - p - m, endpoint=True))
    y0 = int(rng.integers(m, h - p - m, endpoint=True))
    corners = rect_corners((p, p), (x0, y0), np.float32)
    while True:
        if integer_offsets:
            r = math.floor(rho)
            offsets = rng.integers(-r, r, size=(4, 2), endpoint=True).astype(np.float32)
        else:
            offsets = rng.uniform(-rho, rho, size=(4, 2)).astype(np.float32)
        if is_convex(corners + offsets):
            break
    # H_a_from_b in window coordinates: patch B pixel q -> image A pixel (corner shift included).
    local = corners - corners[0]
    # cv2, not four_point_homography (differs by ~1e-6, moving pixels): bit-identical benchmarks
    H_a_from_patch = cv2.getPerspectiveTransform(local, corners + offsets)
    image_a = _apply_lut(image, protocol.jitter.draw_lut(rng)) if protocol.jitter else image
    source_b = _apply_lut(image, protocol.jitter.draw_lut(rng)) if protocol.jitter else image
    patch_b = cv2.warpPerspective(
        source_b,
        H_a_from_patch,
        (p, p),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,  # never used: the perturbed quad lies inside the image
    )
    out = {
        "patch_a": np.ascontiguousarray(image_a[y0 : y0 + p, x0 : x0 + p]),
        "patch_b": patch_b,
        "offsets": offsets,
        "corners": corners,
        "top_left": np.array([x0, y0], np.int64),
    }
    if with_full_image:
        out["image_a"] = image_a
    return out


class SyntheticPairs(Dataset):
    """Map-style dataset of DeTone pairs: item ``i`` is pair ``start + i`` of a seeded stream.

    The source image of a pair is drawn uniformly from ``images`` by the pair's own generator, so
    item ``i`` is the same whatever the DataLoader's workers or order. Items are dicts of tensors:
    ``patch_a``, ``patch_b`` ``(1, P, P) uint8``; ``offsets``, ``corners`` ``(4, 2) float32``;
    ``top_left`` ``(2,) int64``; and with ``with_full_image`` ``image_a (1, H, W) uint8``.
    Images stay 8-bit until they reach the device (see the LightningModules).

    Args:
        images: ``(N, H, W) uint8`` source images of ``protocol.image_size``.
        protocol: the pair protocol.
        seed: seed of the stream.
        length: number of pairs.
        stream: which stream (``STREAMS``): the same seed gives independent pairs per stream.
        start: index of the first pair (e.g. to continue a stream after resuming training).
        with_full_image: also return the full image A (for the unsupervised model).
        flips: flip each source image horizontally, vertically or both (each with probability
            1/4) before making the pair: four times the distinct views of a small image set.
            Meant for training streams; the geometry and the label are unaffected.
    """

    def __init__(
        self,
        images: np.ndarray,
        protocol: DeToneProtocol,
        *,
        seed: int,
        length: int,
        stream: str = "train",
        start: int = 0,
        with_full_image: bool = False,
        flips: bool = False,
    ) -> None:
        check_sources(images, stream)
        w, h = protocol.image_size
        if images.shape[1:] != (h, w):
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[1]} but the protocol expects {w}x{h}"
            )
        if length < 0 or start < 0:
            raise ValueError(f"length and start must be >= 0, got {length} and {start}")
        self.images = images
        self.protocol = protocol
        self.seed = int(seed)
        self.stream = stream
        self.length = int(length)
        self.start = int(start)
        self.with_full_image = with_full_image
        self.flips = flips

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> tuple[int, dict[str, np.ndarray]]:
        """``(image index, arrays)`` of pair ``start + index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"pair index {index} out of range for {self.length} pairs")
        rng = pair_rng(self.seed, STREAMS[self.stream], self.start + index)
        k = int(rng.integers(len(self.images)))
        image = self.images[k]
        if self.flips:
            flip = int(rng.integers(4))  # 0: none, 1: left-right, 2: up-down, 3: both (180°)
            if flip:
                image = np.ascontiguousarray(
                    image[:: -1 if flip & 2 else 1, :: -1 if flip & 1 else 1]
                )
        return k, generate_pair(image, self.protocol, rng, with_full_image=self.with_full_image)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, arrays = self.pair(index)
        item = {k: torch.from_numpy(v) for k, v in arrays.items()}
        for key in ("patch_a", "patch_b", "image_a"):
            if key in item:
                item[key] = item[key][None]
        return item
