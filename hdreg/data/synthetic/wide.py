"""Wide-motion pairs: two views of one source photo related by real camera motion.

For one pair (numpy, float64 geometry):

1. draw the relative motion ``M`` of view B with respect to view A in the *footprint frame*
   (isotropic units, the footprint rectangle ``[-a/2, a/2] × [-1/2, 1/2]`` of aspect ``a``):
   ``M = T(t) · R(θ) · Z(z) · P``: a perspective ``P`` that moves each corner of the rectangle by
   at most ``perspective`` of the side, a zoom ``z`` (log-uniform; ``z > 1``: B is zoomed in), a
   rotation ``θ`` and a translation ``t``;
2. give each view its own mild homography (``J_a``, ``J_b``: corners moved by at most
   ``footprint_jitter`` of the side), so that *both* views are warped from the photo and neither
   is an axis-aligned crop: footprint A is ``J_a(rect)``, footprint B is ``J_a M⁻¹ J_b(rect)``;
3. scale and place both footprints inside the photo (the largest scale that fits them together,
   times ``U[fill]``, at a uniform position where they fit): no rejection loop, so every photo of
   at least ``min_source_side`` pixels gives a pair;
4. render each view with ``cv2.warpPerspective`` from the photo, from a pyramid level and at
   twice the resolution then area-averaged when the footprint is minified (no aliasing);
5. degrade each view with its own photometric augmentation (:class:`WidePhotometric`).

``H_b_from_a`` maps view-A pixels to view-B pixels (``S J_b⁻¹ M S⁻¹``, ``S`` the footprint frame
to view pixels). Square training views of ``P×P`` squash a footprint of random aspect in
``aspect`` to the square, as a whole-image estimator squashes photos; benchmark views keep the
aspect of the view size. Pair ``i`` under seed ``s`` depends only on ``(s, stream, i)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from hdreg.data.seeding import STREAMS, check_sources, pair_rng
from hdreg.data.synthetic.photometric import augment_view
from hdreg.data.synthetic.render import render_view
from hdreg.data.synthetic.wide_motion import (
    UNIT_CORNERS,
    WideMotion,
    draw_motion,
    footprints,
    view_from_footprint,
)
from hdreg.data.synthetic.wide_protocol import WideProtocol
from hdreg.geometry_np import project, rect_corners

__all__ = [
    "WidePair",
    "WidePairs",
    "check_photo",
    "sample_wide_geometry",
    "sample_wide_pair",
    "wide_training_pair",
]


@dataclass
class WidePair:
    """A rendered pair: ``view_a``, ``view_b`` ``(H, W) uint8``; ``H_b_from_a`` (view-A pixels to
    view-B pixels), ``H_source_from_a``, ``H_source_from_b`` ``(3, 3) float64`` (view pixels to
    photo pixels); the drawn ``motion``. The views are None in :func:`sample_wide_geometry`'s
    result."""

    view_a: np.ndarray | None
    view_b: np.ndarray | None
    H_b_from_a: np.ndarray
    H_source_from_a: np.ndarray
    H_source_from_b: np.ndarray
    motion: WideMotion


def check_photo(photo: np.ndarray, protocol: WideProtocol, name: str = "photo") -> None:
    """``ValueError`` naming ``name`` unless ``photo`` is ``(H, W) uint8`` with a shorter side of
    at least ``protocol.min_source_side``."""
    if not (isinstance(photo, np.ndarray) and photo.ndim == 2 and photo.dtype == np.uint8):
        raise ValueError(
            f"{name} must be a grayscale (H, W) uint8 array, got "
            f"{getattr(photo, 'dtype', type(photo).__name__)} {np.shape(photo)}"
        )
    if min(photo.shape) < protocol.min_source_side:
        raise ValueError(
            f"{name} is {photo.shape[1]}x{photo.shape[0]}: too small for wide pairs, which need "
            f"a shorter side of at least {protocol.min_source_side} px (min_source_side)"
        )


def sample_wide_pair(
    photo: np.ndarray,
    view_size: tuple[int, int],
    protocol: WideProtocol,
    rng: np.random.Generator,
    *,
    aspect: float | None = None,
    name: str = "photo",
) -> WidePair:
    """One wide-motion pair from ``photo (H, W) uint8``, both views of ``view_size = (W, H)``.

    ``aspect`` is the footprint's width / height in the photo (default: the view's, so nothing is
    squashed); ``name`` names the photo in errors. See the module docstring for the steps.
    """
    check_photo(photo, protocol, name)
    geometry = sample_wide_geometry(photo.shape[::-1], view_size, protocol, rng, aspect=aspect)
    vw, vh = (int(v) for v in view_size)
    view_a = render_view(photo, geometry.H_source_from_a, (vw, vh))
    view_b = render_view(photo, geometry.H_source_from_b, (vw, vh))
    if protocol.photometric is not None:
        view_a = augment_view(view_a, protocol.photometric, rng)
        view_b = augment_view(view_b, protocol.photometric, rng)
    return WidePair(view_a, view_b, geometry.H_b_from_a, geometry.H_source_from_a,
                    geometry.H_source_from_b, geometry.motion)  # fmt: skip


def sample_wide_geometry(
    photo_size: tuple[int, int],
    view_size: tuple[int, int],
    protocol: WideProtocol,
    rng: np.random.Generator,
    *,
    aspect: float | None = None,
) -> WidePair:
    """The geometry of one pair on a photo of ``photo_size = (W, H)``: a :class:`WidePair`
    without views (``view_a``, ``view_b`` None). Steps 1 to 3 of the module docstring."""
    vw, vh = (int(v) for v in view_size)
    if vw < 2 or vh < 2:
        raise ValueError(f"view_size must be (width, height) of at least 2 pixels, got {view_size}")
    a = float(aspect) if aspect is not None else vw / vh
    motion = draw_motion(protocol, rng, a)
    H_r_from_fa, H_r_from_fb, H_fb_from_fa = footprints(motion)

    # Both footprints into the photo: the largest scale that fits their union, times U[fill].
    rect = UNIT_CORNERS * np.array([a, 1.0])
    quads = np.concatenate([project(H_r_from_fa, rect), project(H_r_from_fb, rect)])
    lo, hi = quads.min(axis=0), quads.max(axis=0)
    pw, ph = photo_size
    room = np.array([pw - 1.0, ph - 1.0])  # corners stay on or inside the outer pixel centres
    k = float(np.min(room / np.maximum(hi - lo, 1e-12))) * rng.uniform(*protocol.fill)
    offset = np.array([rng.uniform(-k * lo[i], room[i] - k * hi[i]) for i in range(2)])
    H_s_from_r = np.array([[k, 0.0, offset[0]], [0.0, k, offset[1]], [0.0, 0.0, 1.0]])

    S = view_from_footprint((vw, vh), a)
    S_inv = np.linalg.inv(S)
    H_s_from_a = H_s_from_r @ H_r_from_fa @ S_inv
    H_s_from_b = H_s_from_r @ H_r_from_fb @ S_inv
    H_b_from_a = S @ H_fb_from_fa @ S_inv
    return WidePair(
        None, None, H_b_from_a / H_b_from_a[2, 2],
        H_s_from_a / H_s_from_a[2, 2], H_s_from_b / H_s_from_b[2, 2], motion,
    )  # fmt: skip


def wide_training_pair(
    photo: np.ndarray,
    patch_size: int,
    protocol: WideProtocol,
    rng: np.random.Generator,
    *,
    with_homography: bool = False,
) -> dict[str, np.ndarray]:
    """A square training pair: both views rendered into ``P×P`` from footprints of random aspect
    in ``protocol.aspect`` (log-uniform), labelled like a DeTone pair.

    Returns ``patch_a``, ``patch_b`` ``(P, P) uint8``; ``offsets (4, 2) float32`` (patch B's
    corners in patch A's frame minus the corners); ``corners (4, 2) float32`` (the patch corners);
    with ``with_homography`` also ``H_b_from_a (3, 3) float64``.
    """
    lo, hi = protocol.aspect
    aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    pair = sample_wide_pair(photo, (patch_size, patch_size), protocol, rng, aspect=aspect)
    corners = rect_corners((patch_size, patch_size))
    H_a_from_b = np.linalg.inv(pair.H_b_from_a)
    offsets = project(H_a_from_b, corners) - corners
    out = {
        "patch_a": pair.view_a,
        "patch_b": pair.view_b,
        "offsets": offsets.astype(np.float32),
        "corners": corners.astype(np.float32),
    }
    if with_homography:
        out["H_b_from_a"] = pair.H_b_from_a
    return out


class WidePairs(Dataset):
    """Map-style dataset of square wide-motion pairs: item ``i`` is pair ``start + i`` of a seeded
    stream, with the keys and types of :class:`hdreg.data.synthetic.detone.SyntheticPairs`
    (``patch_a``, ``patch_b`` ``(1, P, P) uint8``; ``offsets``, ``corners`` ``(4, 2) float32``).

    Args:
        images: ``(N, H, W) uint8`` source photos.
        patch_size: side ``P`` of the views.
        protocol: the wide-pair parameters.
        seed, length, stream, start: as for ``SyntheticPairs``.
        flips: flip each source photo horizontally, vertically or both (probability 1/4 each).
    """

    def __init__(
        self,
        images: np.ndarray,
        patch_size: int,
        protocol: WideProtocol,
        *,
        seed: int,
        length: int,
        stream: str = "train",
        start: int = 0,
        flips: bool = False,
    ) -> None:
        check_sources(images, stream)
        if length < 0 or start < 0:
            raise ValueError(f"length and start must be >= 0, got {length} and {start}")
        check_photo(images[0], protocol, "source images")
        self.images, self.patch_size, self.protocol = images, int(patch_size), protocol
        self.seed, self.stream = int(seed), stream
        self.length, self.start, self.flips = int(length), int(start), flips

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
            flip = int(rng.integers(4))
            if flip:
                image = np.ascontiguousarray(
                    image[:: -1 if flip & 2 else 1, :: -1 if flip & 1 else 1]
                )
        return k, wide_training_pair(image, self.patch_size, self.protocol, rng)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, arrays = self.pair(index)
        item = {k: torch.from_numpy(v) for k, v in arrays.items()}
        item["patch_a"], item["patch_b"] = item["patch_a"][None], item["patch_b"][None]
        return item
