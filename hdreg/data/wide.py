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

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hdreg.data.synthetic import STREAMS, pair_rng
from hdreg.geometry_np import folds, project, rect_corners

__all__ = [
    "ViewAugmentation",
    "WideMotion",
    "WidePair",
    "WidePairs",
    "WidePhotometric",
    "WideProtocol",
    "augment_view",
    "draw_augmentation",
    "draw_motion",
    "four_point_homography",
    "jpeg_roundtrip",
    "minification_map",
    "motion_matrices",
    "render_view",
    "sample_wide_geometry",
    "sample_wide_pair",
    "wide_training_pair",
]

# Resampling attempts of a motion that folds a footprint before falling back to a similarity.
MAX_DRAWS = 20
_UNIT_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi <= high):
        raise ValueError(
            f"{name} must be [min, max] with {low} <= min <= max <= {high}, got {value}"
        )
    return lo, hi


def _check_amount(name: str, value: float, high: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0 <= value <= high):
        raise ValueError(f"{name} must be in [0, {high}], got {value}")
    return value


@dataclass(frozen=True)
class WidePhotometric:
    """Photometric augmentation of one view; every step has its probability ``p_*``.

    On intensities ``x`` in [0, 1], in this order: ``x ← x^γ``, ``x ← (x − ½)·c + ½ + b``
    (``γ = exp(U[−gamma, gamma])``, ``c = exp(U[−contrast, contrast])``,
    ``b = U[−brightness, brightness]``), a Gaussian blur of σ ``U[0.5, blur]`` px, a linear
    motion blur of length ``U[3, motion_blur]`` px in a uniform direction, Gaussian noise of σ
    ``U[0, noise]``, JPEG re-encoding at a quality in ``jpeg_quality``.
    """

    p_tone: float
    brightness: float
    contrast: float
    gamma: float
    p_blur: float
    blur: float
    p_motion_blur: float
    motion_blur: float
    p_noise: float
    noise: float
    p_jpeg: float
    jpeg_quality: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("p_tone", "p_blur", "p_motion_blur", "p_noise", "p_jpeg"):
            _check_amount(name, getattr(self, name), 1.0)
        for name in ("brightness", "contrast", "gamma"):
            _check_amount(name, getattr(self, name), 2.0)
        _check_amount("blur", self.blur, 10.0)
        _check_amount("noise", self.noise, 1.0)
        if not (3 <= float(self.motion_blur) <= 64):
            raise ValueError(f"motion_blur must be in [3, 64] pixels, got {self.motion_blur}")
        lo, hi = _check_range("jpeg_quality", self.jpeg_quality, 1, 100)
        object.__setattr__(self, "jpeg_quality", (int(lo), int(hi)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WidePhotometric:
        """From a config mapping; unknown keys are an error naming them."""
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown photometric parameter(s) {', '.join(unknown)}: valid are "
                f"{', '.join(names)}"
            )
        missing = sorted(set(names) - set(values))
        if missing:
            raise ValueError(f"missing photometric parameter(s) {', '.join(missing)}")
        return cls(
            **{k: (tuple(v) if k == "jpeg_quality" else float(v)) for k, v in values.items()}
        )


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


@functools.cache
def _wide_defaults_cached() -> str:
    from omegaconf import OmegaConf

    from hdreg.config import compose_config

    return json.dumps(OmegaConf.to_container(compose_config("protocol/wide"), resolve=True))


def _wide_defaults() -> dict[str, Any]:
    """A fresh copy of ``hdreg/configs/protocol/wide.yaml`` (composed once per process)."""
    return json.loads(_wide_defaults_cached())


@dataclass(frozen=True)
class WideProtocol:
    """Parameters of the wide-motion sampler, validated on construction. :meth:`default` reads
    them from ``hdreg/configs/protocol/wide.yaml`` (the meaning of each is written there).

    Attributes:
        rotation: maximum relative rotation, degrees.
        zoom: ``(min, max)`` relative zoom, drawn log-uniformly.
        perspective: maximum corner displacement of the relative motion, share of the side.
        translation: maximum relative shift per axis, share of the side.
        footprint_jitter: maximum corner displacement of each view's own mild homography.
        fill: ``(min, max)`` share of the largest scale at which both footprints fit.
        aspect: ``(min, max)`` footprint aspect (width / height) of square training views.
        min_source_side: photos with a shorter side under this are refused.
        photometric: per-view augmentation, or None (off).
    """

    rotation: float
    zoom: tuple[float, float]
    perspective: float
    translation: float
    footprint_jitter: float
    fill: tuple[float, float]
    aspect: tuple[float, float]
    min_source_side: int
    photometric: WidePhotometric | None = field(default=None)

    def __post_init__(self) -> None:
        _check_amount("rotation", self.rotation, 180.0)
        object.__setattr__(self, "zoom", _check_range("zoom", self.zoom, 0.05, 20.0))
        _check_amount("perspective", self.perspective, 0.45)
        _check_amount("translation", self.translation, 1.0)
        _check_amount("footprint_jitter", self.footprint_jitter, 0.2)
        if self.perspective + self.footprint_jitter > 0.45:
            raise ValueError(
                f"perspective + footprint_jitter = {self.perspective + self.footprint_jitter} "
                "must be at most 0.45: larger corner displacements fold the view"
            )
        object.__setattr__(self, "fill", _check_range("fill", self.fill, 1e-3, 1.0))
        object.__setattr__(self, "aspect", _check_range("aspect", self.aspect, 0.1, 10.0))
        if not (int(self.min_source_side) == self.min_source_side and self.min_source_side >= 8):
            raise ValueError(f"min_source_side must be an integer >= 8, got {self.min_source_side}")

    @classmethod
    def default(cls, **overrides: Any) -> WideProtocol:
        """``hdreg/configs/protocol/wide.yaml`` with ``overrides`` (``photometric=None`` turns the
        augmentation off; a mapping changes some of its parameters)."""
        return cls.from_mapping({**_wide_defaults(), **overrides})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WideProtocol:
        """From a config mapping (``photometric`` a mapping, None (off) or a
        :class:`WidePhotometric`; a partial mapping, or none, takes the rest from
        ``hdreg/configs/protocol/wide.yaml``)."""
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown wide-pair parameter(s) {', '.join(unknown)}: valid are {', '.join(names)}"
            )
        missing = sorted(set(names) - set(values) - {"photometric"})
        if missing:
            raise ValueError(f"missing wide-pair parameter(s) {', '.join(missing)}")
        photometric = values.get("photometric", {})
        if isinstance(photometric, Mapping):
            base = _wide_defaults()["photometric"]
            photometric = WidePhotometric.from_mapping({**base, **photometric})
        elif photometric is not None and not isinstance(photometric, WidePhotometric):
            raise ValueError(f"photometric must be a mapping or null, got {photometric!r}")
        return cls(
            rotation=float(values["rotation"]),
            zoom=tuple(values["zoom"]),  # type: ignore[arg-type]
            perspective=float(values["perspective"]),
            translation=float(values["translation"]),
            footprint_jitter=float(values["footprint_jitter"]),
            fill=tuple(values["fill"]),  # type: ignore[arg-type]
            aspect=tuple(values["aspect"]),  # type: ignore[arg-type]
            min_source_side=int(values["min_source_side"]),
            photometric=photometric,
        )

    def without_photometric(self) -> WideProtocol:
        return replace(self, photometric=None)


@dataclass(frozen=True)
class WideMotion:
    """One draw of the relative motion (footprint frame, see the module docstring).

    ``rotation`` degrees, ``zoom``, ``translation (2,)`` share of the side, ``perspective (4, 2)``
    and ``jitter_a``, ``jitter_b (4, 2)``: corner displacements of ``P``, ``J_a``, ``J_b`` as
    shares of the side; ``aspect`` the footprint's width / height; ``fallback``: every draw folded
    and the motion was reduced to a similarity (perspective and jitters zero).
    """

    rotation: float
    zoom: float
    translation: np.ndarray
    perspective: np.ndarray
    jitter_a: np.ndarray
    jitter_b: np.ndarray
    aspect: float
    fallback: bool = False


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


def _disk(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2)`` points uniform in the unit disk."""
    r = np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _corner_warp(displacement: np.ndarray, aspect: float) -> np.ndarray:
    """The homography of the footprint frame that moves the rectangle's corners by
    ``displacement (4, 2)`` (shares of width and height)."""
    size = np.array([aspect, 1.0])
    src = _UNIT_CORNERS * size
    return four_point_homography(src, src + displacement * size)


def four_point_homography(points_src: np.ndarray, points_dst: np.ndarray) -> np.ndarray:
    """The ``(3, 3)`` float64 homography (bottom-right entry 1) taking four points ``(4, 2)`` to
    four others: the 8×8 linear system of ``cv2.getPerspectiveTransform``, solved in float64."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(points_src, points_dst, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def motion_matrices(motion: WideMotion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, J_a, J_b)`` in the footprint frame: ``M = T(t) R(θ) Z(z) P`` (B from A)."""
    a = motion.aspect
    th = math.radians(motion.rotation)
    z = motion.zoom
    rz = np.array(
        [[z * math.cos(th), -z * math.sin(th), 0.0], [z * math.sin(th), z * math.cos(th), 0.0],
         [0.0, 0.0, 1.0]]
    )  # fmt: skip
    t = np.eye(3)
    t[:2, 2] = motion.translation * np.array([a, 1.0])
    M = t @ rz @ _corner_warp(motion.perspective, a)
    return M, _corner_warp(motion.jitter_a, a), _corner_warp(motion.jitter_b, a)


def _footprints(motion: WideMotion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H_r_from_fa, H_r_from_fb, H_fb_from_fa)``: footprint frames of A and B into the shared
    reference frame, and B from A."""
    M, J_a, J_b = motion_matrices(motion)
    H_r_from_fb = J_a @ np.linalg.inv(M) @ J_b
    return J_a, H_r_from_fb, np.linalg.inv(J_b) @ M


def _valid(motion: WideMotion) -> bool:
    rect = _UNIT_CORNERS * np.array([motion.aspect, 1.0])
    H_r_from_fa, H_r_from_fb, H_fb_from_fa = _footprints(motion)
    return not any(folds(H, rect) for H in (H_r_from_fa, H_r_from_fb, H_fb_from_fa))


def draw_motion(protocol: WideProtocol, rng: np.random.Generator, aspect: float) -> WideMotion:
    """A relative motion whose footprints and ``H_b_from_a`` do not fold; after ``MAX_DRAWS``
    folding draws, the last draw without perspective and jitters (a similarity never folds)."""
    lo, hi = protocol.zoom
    for _ in range(MAX_DRAWS):
        motion = WideMotion(
            rotation=float(rng.uniform(-protocol.rotation, protocol.rotation)),
            zoom=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
            translation=rng.uniform(-protocol.translation, protocol.translation, 2),
            perspective=_disk(rng, 4) * protocol.perspective,
            jitter_a=_disk(rng, 4) * protocol.footprint_jitter,
            jitter_b=_disk(rng, 4) * protocol.footprint_jitter,
            aspect=float(aspect),
        )
        if _valid(motion):
            return motion
    zero = np.zeros((4, 2))
    return replace(motion, perspective=zero, jitter_a=zero, jitter_b=zero, fallback=True)


def _view_from_footprint(view_size: tuple[int, int], aspect: float) -> np.ndarray:
    """``S``: footprint frame (``[-a/2, a/2] × [-1/2, 1/2]``) to view pixels (pixel-edge
    rectangle ``[-0.5, W - 0.5] × [-0.5, H - 0.5]``)."""
    w, h = view_size
    return np.array([[w / aspect, 0.0, w / 2 - 0.5], [0.0, h, h / 2 - 0.5], [0.0, 0.0, 1.0]])


def minification_map(
    H_source_from_view: np.ndarray, view_size: tuple[int, int], grid: int = 9
) -> np.ndarray:
    """``(H, W) float32``: source pixels per view pixel at each view pixel (the larger singular
    value of the warp's Jacobian), computed on a ``grid × grid`` lattice and interpolated."""
    w, h = view_size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
    H = np.asarray(H_source_from_view, np.float64)
    u = H[0, 0] * xs + H[0, 1] * ys + H[0, 2]
    v = H[1, 0] * xs + H[1, 1] * ys + H[1, 2]
    q = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    q2 = q * q
    a = (H[0, 0] * q - u * H[2, 0]) / q2
    b = (H[0, 1] * q - u * H[2, 1]) / q2
    c = (H[1, 0] * q - v * H[2, 0]) / q2
    d = (H[1, 1] * q - v * H[2, 1]) / q2
    half = (a * a + b * b + c * c + d * d) / 2
    sigma = np.sqrt(half + np.sqrt(np.maximum(half * half - (a * d - b * c) ** 2, 0.0)))
    return cv2.resize(sigma.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def render_view(
    photo: np.ndarray, H_source_from_view: np.ndarray, view_size: tuple[int, int]
) -> np.ndarray:
    """Render ``view_size = (W, H)`` pixels of ``photo`` (``view(p) = photo(H · p)``) with
    ``cv2.warpPerspective`` (bilinear) without aliasing where the view is minified: a view with
    more than one photo pixel per view pixel anywhere is rendered at twice the resolution and
    area-averaged, each of its pixels blended from the two pyramid levels (``cv2.pyrDown``) that
    bracket its own minification (trilinear mipmapping), so that magnified parts of a slanted
    view stay sharp."""
    w, h = view_size
    H = np.asarray(H_source_from_view, np.float64)
    k = 2 if float(minification_map(H, view_size, grid=5).max()) > 1.0 else 1
    # big pixel x' = (x + 0.5) k - 0.5; the k×k area average of big pixels lands on x
    view_from_big = np.array(
        [[1 / k, 0, (1 - k) / (2 * k)], [0, 1 / k, (1 - k) / (2 * k)], [0, 0, 1]]
    )
    H_big = H @ view_from_big
    size_big = (w * k, h * k)
    # as many levels as the photo has down to 16 px, built only as far as this view needs them
    top = max(0, math.floor(math.log2(min(photo.shape) / 16)))
    level = np.minimum(np.log2(np.maximum(minification_map(H_big, size_big), 1.0)), top)
    lo, hi = int(np.floor(level.min())), int(np.ceil(level.max()))
    levels = [photo]
    for _ in range(hi):
        levels.append(cv2.pyrDown(levels[-1]))  # output pixel i sits on input pixel 2i

    def warp(lv: int) -> np.ndarray:
        return cv2.warpPerspective(
            levels[lv], np.diag([0.5**lv, 0.5**lv, 1.0]) @ H_big, size_big,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101,
        )  # fmt: skip

    if lo == hi:
        out = warp(lo)
    else:
        acc = np.zeros(level.shape, np.float32)
        for lv in range(lo, hi + 1):
            acc += np.maximum(1.0 - np.abs(level - lv), 0.0) * warp(lv)
        out = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    if k > 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
    return out


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
    H_r_from_fa, H_r_from_fb, H_fb_from_fa = _footprints(motion)

    # Both footprints into the photo: the largest scale that fits their union, times U[fill].
    rect = _UNIT_CORNERS * np.array([a, 1.0])
    quads = np.concatenate([project(H_r_from_fa, rect), project(H_r_from_fb, rect)])
    lo, hi = quads.min(axis=0), quads.max(axis=0)
    pw, ph = photo_size
    room = np.array([pw - 1.0, ph - 1.0])  # corners stay on or inside the outer pixel centres
    k = float(np.min(room / np.maximum(hi - lo, 1e-12))) * rng.uniform(*protocol.fill)
    offset = np.array([rng.uniform(-k * lo[i], room[i] - k * hi[i]) for i in range(2)])
    H_s_from_r = np.array([[k, 0.0, offset[0]], [0.0, k, offset[1]], [0.0, 0.0, 1.0]])

    S = _view_from_footprint((vw, vh), a)
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
    stream, with the keys and types of :class:`hdreg.data.synthetic.SyntheticPairs`
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
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty (N, H, W) uint8 array, got {images.dtype} "
                f"{images.shape}"
            )
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")
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
