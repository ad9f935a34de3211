"""The relative camera motion of a wide pair and its footprints (steps 1 and 2 of
:mod:`hdreg.data.synthetic.wide`), in the footprint frame, float64."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hdreg.data.synthetic.wide_protocol import WideProtocol
from hdreg.geometry_np import folds, four_point_homography

__all__ = [
    "MAX_DRAWS",
    "UNIT_CORNERS",
    "WideMotion",
    "draw_motion",
    "footprints",
    "motion_matrices",
    "view_from_footprint",
]

# Resampling attempts of a motion that folds a footprint before falling back to a similarity.
MAX_DRAWS = 20
UNIT_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


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


def _disk(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2)`` points uniform in the unit disk."""
    r = np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _corner_warp(displacement: np.ndarray, aspect: float) -> np.ndarray:
    """The homography of the footprint frame that moves the rectangle's corners by
    ``displacement (4, 2)`` (shares of width and height)."""
    size = np.array([aspect, 1.0])
    src = UNIT_CORNERS * size
    return four_point_homography(src, src + displacement * size)


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


def footprints(motion: WideMotion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H_r_from_fa, H_r_from_fb, H_fb_from_fa)``: footprint frames of A and B into the shared
    reference frame, and B from A."""
    M, J_a, J_b = motion_matrices(motion)
    H_r_from_fb = J_a @ np.linalg.inv(M) @ J_b
    return J_a, H_r_from_fb, np.linalg.inv(J_b) @ M


def _valid(motion: WideMotion) -> bool:
    rect = UNIT_CORNERS * np.array([motion.aspect, 1.0])
    H_r_from_fa, H_r_from_fb, H_fb_from_fa = footprints(motion)
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


def view_from_footprint(view_size: tuple[int, int], aspect: float) -> np.ndarray:
    """``S``: footprint frame (``[-a/2, a/2] × [-1/2, 1/2]``) to view pixels (pixel-edge
    rectangle ``[-0.5, W - 0.5] × [-0.5, H - 0.5]``)."""
    w, h = view_size
    return np.array([[w / aspect, 0.0, w / 2 - 0.5], [0.0, h, h / 2 - 0.5], [0.0, 0.0, 1.0]])
