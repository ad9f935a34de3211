"""Homography geometry in numpy (float64): the counterpart of :mod:`hdreg.geometry` for the code
that works pair by pair on the CPU (classical methods, ECC, scoring, pictures).

Conventions, the same as :mod:`hdreg.geometry`'s:

* pixel coordinates ``(x, y)``, x to the right, y down, ``(0, 0)`` the *centre* of the top-left
  pixel (OpenCV's convention); sizes are ``(width, height)``;
* corners are ordered top-left, top-right, bottom-right, bottom-left;
* ``H_a_from_b`` maps pixel coordinates of B to those of A: ``p_a ~ H_a_from_b @ p_b``.

One policy at the horizon, here and in torch: a point whose homogeneous coordinate ``w`` is
(numerically) zero is divided by ``±eps`` (the dtype's machine epsilon, with ``w``'s sign, ``+``
for ``w = 0``) instead of ``w``: it lands far away but finite, never ``inf``/``NaN``. Code that
must know whether an estimate sends a point through the horizon asks :func:`folds`, which looks
at the sign of ``w`` itself.

Example:
    >>> H_a_from_b = np.array([[1.0, 0, 5], [0, 1, -2], [0, 0, 1]])
    >>> project(H_a_from_b, rect_corners((4, 3))).tolist()
    [[5.0, -2.0], [8.0, -2.0], [8.0, 0.0], [5.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "COND_MAX",
    "check_homography",
    "corner_distance",
    "coverage_mask",
    "folds",
    "four_point_homography",
    "image_corners",
    "is_convex",
    "local_similarity",
    "normalize_homography",
    "project",
    "rect_corners",
    "scale_matrix",
    "scale_size",
    "scaled_size",
    "zncc",
]

# Condition number above which a 3×3 matrix is taken as singular (not a homography).
COND_MAX = 1e12


def rect_corners(
    size: tuple[int, int], top_left: tuple[float, float] = (0.0, 0.0), dtype=np.float64
) -> np.ndarray:
    """Corners ``(4, 2)`` TL, TR, BR, BL of a ``size = (width, height)`` rectangle of pixels
    whose top-left pixel is at ``top_left = (x0, y0)``: ``(x0, y0), (x0+W-1, y0), …``.

    >>> rect_corners((128, 128), (10, 20)).tolist()
    [[10.0, 20.0], [137.0, 20.0], [137.0, 147.0], [10.0, 147.0]]
    """
    w, h = size
    x0, y0 = top_left
    return np.array([[x0, y0], [x0 + w - 1, y0], [x0 + w - 1, y0 + h - 1], [x0, y0 + h - 1]], dtype)


def corner_distance(points_pred, points_true):
    """Per pair, the mean over the points of ``‖pred − true‖₂``: the corner error of
    docs/conventions.md (its mean is the MACE). ``(..., K, 2)`` → ``(...)``.

    The one implementation of that error, for numpy arrays (scoring:
    :func:`hdreg.evaluation.metrics.corner_error`) and torch tensors (validation, on offsets: the
    corners cancel; :mod:`hdreg.geometry` re-exports it) alike: plain arithmetic, no import of
    either. Not meant for gradients (the square root has none at 0).

    Example:
        >>> c = rect_corners((10, 10))
        >>> corner_distance(c + np.array([3.0, 4.0]), c).tolist()
        5.0
    """
    diff = points_pred - points_true
    return ((diff * diff).sum(-1) ** 0.5).mean(-1)


def scale_matrix(size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` map from pixels of an image of ``size_from = (W, H)`` to those of its copy
    resized to ``size_to`` (``cv2.resize``'s pixel-centre convention:
    ``x' = (x + 0.5) · W'/W − 0.5``); the numpy twin of :func:`hdreg.geometry.resize_matrix`.

    A homography between resized copies: ``scale_matrix(a, a2) @ H_a_from_b @
    scale_matrix(b2, b)``.

    >>> scale_matrix((4, 2), (8, 4)) @ np.array([1.5, 0.5, 1.0])
    array([3.5, 1.5, 1. ])
    """
    sx, sy = size_to[0] / size_from[0], size_to[1] / size_from[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def scale_size(size: tuple[int, int], factor: float, *, min_side: int = 1) -> tuple[int, int]:
    """``size = (W, H)`` times ``factor``, each side rounded to the nearest pixel and at least
    ``min_side``: the size to give ``cv2.resize`` to scale an image by ``factor``.

    >>> scale_size((640, 480), 0.5), scale_size((10, 2000), 0.05, min_side=8)
    ((320, 240), (8, 100))
    """
    return max(min_side, round(size[0] * factor)), max(min_side, round(size[1] * factor))


def scaled_size(size: tuple[int, int], longer_side: float, *, min_side: int = 1) -> tuple[int, int]:
    """``size = (W, H)`` scaled by one factor so that its longer side is ``longer_side``, each
    side rounded to the nearest pixel and at least ``min_side`` (:func:`scale_size`).

    >>> scaled_size((4000, 3000), 1000), scaled_size((10, 2000), 100, min_side=8)
    ((1000, 750), (8, 100))
    """
    return scale_size(size, longer_side / max(size), min_side=min_side)


def four_point_homography(points_src: np.ndarray, points_dst: np.ndarray) -> np.ndarray:
    """The ``(3, 3)`` float64 homography ``H_dst_from_src`` (bottom-right entry 1) taking four
    points ``(4, 2)`` to four others: the 8×8 linear system of ``cv2.getPerspectiveTransform``,
    solved in float64 (``numpy.linalg.LinAlgError`` when three points are collinear).
    The numpy twin of :func:`hdreg.geometry.four_point_to_homography`.

    >>> src = rect_corners((128, 128))
    >>> project(four_point_homography(src, src + 3.0), src)[0].tolist()
    [3.0, 3.0]
    """
    src = np.asarray(points_src, np.float64).reshape(4, 2)
    dst = np.asarray(points_dst, np.float64).reshape(4, 2)
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def zncc(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Zero-mean normalized cross-correlation of two equally shaped arrays (over ``mask`` when
    given): in [-1, 1], invariant to gain and offset; NaN when either is flat or empty there.

    >>> x = np.arange(16.0).reshape(4, 4)
    >>> zncc(x, 3 * x + 7), zncc(x, -x), zncc(x, np.ones((4, 4)))
    (1.0, -1.0, nan)
    """
    u = np.asarray(x if mask is None else x[mask], np.float64).ravel()
    v = np.asarray(y if mask is None else y[mask], np.float64).ravel()
    if u.size == 0:
        return float("nan")
    u = u - u.mean()
    v = v - v.mean()
    denom = np.sqrt(float(u @ u) * float(v @ v))
    return float(u @ v / denom) if denom > 1e-12 else float("nan")


def image_corners(sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(N, 4, 2)`` float64 corners of images of ``(width, height)`` ``sizes``."""
    return np.stack([rect_corners(s) for s in sizes]) if len(sizes) else np.zeros((0, 4, 2))


def local_similarity(H_dst_from_src: np.ndarray, point_src: Sequence[float]) -> tuple[float, float]:
    """Zoom and rotation (degrees) of a homography at one point: its Jacobian ``J`` there read as
    ``zoom · R(angle)`` (zoom ``sqrt|det J|``, the angle of ``J``'s rotation part). For
    ``H_b_from_a`` at A's centre, zoom ``< 1`` means B is zoomed out."""
    x, y = point_src
    u, v, w = H_dst_from_src @ np.array([x, y, 1.0])
    J = (H_dst_from_src[:2, :2] * w - np.outer([u, v], H_dst_from_src[2, :2])) / w**2
    zoom = float(np.sqrt(abs(np.linalg.det(J))))
    return zoom, float(np.degrees(np.arctan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])))


def project(H_dst_from_src: np.ndarray, points_src: np.ndarray) -> np.ndarray:
    """Map points through homographies (like ``cv2.perspectiveTransform``), in float64.

    Args:
        H_dst_from_src: ``(3, 3)`` or ``(N, 3, 3)``.
        points_src: ``(K, 2)`` with a single ``H``, or ``(N, K, 2)``.

    Returns:
        points in the destination frame, shaped like ``points_src``; at the horizon (``w``
        numerically 0) far away but finite (the module's policy).

    >>> project(np.diag([2.0, 2.0, 1.0]), np.array([[1.0, 3.0]])).tolist()
    [[2.0, 6.0]]
    """
    H = np.asarray(H_dst_from_src, np.float64)
    p = np.asarray(points_src, np.float64)
    single = H.ndim == 2
    if single:
        H, p = H[None], p[None]
    if H.ndim != 3 or H.shape[1:] != (3, 3) or p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(
            "expected H (3, 3) with points (K, 2), or H (N, 3, 3) with points (N, K, 2), got "
            f"{np.shape(H_dst_from_src)} and {np.shape(points_src)}"
        )
    if H.shape[0] != p.shape[0]:
        raise ValueError(f"{H.shape[0]} homographies for {p.shape[0]} point sets")
    q = np.einsum("nij,nkj->nki", H, np.concatenate([p, np.ones_like(p[..., :1])], axis=-1))
    w = q[..., 2:]
    eps = np.finfo(np.float64).eps
    w = np.where(np.abs(w) < eps, np.where(w < 0, -eps, eps), w)
    out = q[..., :2] / w
    return out[0] if single else out


def is_convex(quads) -> np.ndarray:
    """``(N,)`` bool (or a bool for one ``(4, 2)``): the quadrilaterals ``(N, 4, 2)``, corners in
    order, are strictly convex: the cross products of consecutive edges all have one strict
    sign (float64). A homography of a rectangle that does not fold it gives a convex quad.

    >>> is_convex(np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float))
    True
    >>> is_convex(np.array([[0, 0], [4, 0], [1, 1], [0, 4]], float))
    False
    """
    q = np.asarray(quads, np.float64)
    single = q.ndim == 2
    q = q[None] if single else q
    if q.ndim != 3 or q.shape[1:] != (4, 2):
        raise ValueError(f"quads must have shape (4, 2) or (N, 4, 2), got {np.shape(quads)}")
    edges = np.roll(q, -1, axis=1) - q  # edge i runs from corner i to corner i + 1
    nxt = np.roll(edges, -1, axis=1)
    with np.errstate(invalid="ignore"):
        cross = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
        out = np.all(cross > 0, axis=1) | np.all(cross < 0, axis=1)
    return bool(out[0]) if single else out


def folds(H_dst_from_src: np.ndarray, corners_src: np.ndarray) -> np.ndarray:
    """Whether each homography sends a corner of a quadrilateral through the horizon (its
    ``w`` changes sign or is 0) or maps the (convex) corners to a non-convex quadrilateral. No
    view of a plane does that for the part of the plane in view.

    Args:
        H_dst_from_src: ``(3, 3)`` or ``(N, 3, 3)``.
        corners_src: ``(4, 2)`` (shared by every ``H``) or ``(N, 4, 2)``, in order.

    Returns:
        ``(N,)`` bool, or a bool for a single ``H``.

    >>> c = rect_corners((10, 10))
    >>> folds(np.eye(3), c), folds(np.diag([1.0, -1.0, 1.0]) @ np.eye(3), c)
    (False, False)
    >>> folds(np.array([[1.0, 0, 0], [0, 1, 0], [-0.2, 0, 1]]), c)  # the horizon at x = 5
    True
    """
    H = np.asarray(H_dst_from_src, np.float64)
    p = np.asarray(corners_src, np.float64)
    single = H.ndim == 2
    if single:
        H, p = H[None], p[None]
    if p.ndim == 2:  # one quadrilateral for every homography
        p = np.broadcast_to(p, (len(H), *p.shape))
    if H.shape[1:] != (3, 3) or p.shape != (len(H), 4, 2):
        raise ValueError(
            "expected H (3, 3) or (N, 3, 3) and corners (4, 2) or (N, 4, 2), got "
            f"{np.shape(H_dst_from_src)} and {np.shape(corners_src)}"
        )
    w = np.einsum("nij,nkj->nki", H, np.concatenate([p, np.ones_like(p[..., :1])], -1))[..., 2]
    same_side = np.all(w > 0, axis=1) | np.all(w < 0, axis=1)
    q = project(H, p)
    out = ~(same_side & is_convex(q) & np.isfinite(q).all(axis=(1, 2)))
    return bool(out[0]) if single else out


def normalize_homography(H: np.ndarray) -> np.ndarray:
    """``H`` (``(3, 3)`` or ``(N, 3, 3)``) scaled so that ``H[2, 2] = 1``; a matrix whose
    ``H[2, 2]`` is (near) zero relative to its largest entry (the origin maps to the horizon: no
    scaling can make it 1) is returned unchanged. Same rule as
    :func:`hdreg.geometry.normalize_homography`, float64.

    >>> normalize_homography(2 * np.eye(3)).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    H = np.asarray(H, np.float64)
    if H.shape[-2:] != (3, 3):
        raise ValueError(f"H must have shape (3, 3) or (N, 3, 3), got {H.shape}")
    h33 = H[..., 2:3, 2:3]
    scale = np.abs(H).max(axis=(-2, -1), keepdims=True)
    ok = np.abs(h33) > np.finfo(np.float64).eps * scale
    return H / np.where(ok, h33, 1.0)


def check_homography(H: np.ndarray | None, *, cond_max: float = COND_MAX) -> str | None:
    """Why ``H`` is not a usable homography (``None`` if it is): missing, not ``(3, 3)``, not
    finite, or (numerically) singular: condition number above ``cond_max``.

    >>> check_homography(np.eye(3)) is None, check_homography(np.zeros((3, 3)))
    (True, 'homography is singular (condition number inf)')
    """
    if H is None:
        return "no homography"
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        return f"homography has shape {H.shape}, expected (3, 3)"
    if not np.isfinite(H).all():
        return "homography is not finite"
    with np.errstate(all="ignore"):
        if not np.isfinite(cond := np.linalg.cond(H)) or cond > cond_max:
            return f"homography is singular (condition number {cond:.3g})"
    return None


def coverage_mask(
    H_src_from_dst: np.ndarray,
    size_src: tuple[int, int],
    size_dst: tuple[int, int],
    *,
    margin: int = 0,
) -> np.ndarray:
    """``(H_dst, W_dst)`` bool: the pixels of the destination whose bilinear sample of the
    source, at ``H_src_from_dst @ p_dst``, uses only source pixels at least ``margin`` pixels
    inside its border (``margin = 0``: the sample lies within the outermost pixel centres).

    Computed as OpenCV resamples: ``cv2.warpPerspective`` (bilinear, ``WARP_INVERSE_MAP``) of an
    image that is 255 on those pixels and 0 elsewhere is exactly 255 where all four bilinear
    neighbours are such pixels. ``size_src``, ``size_dst``: ``(width, height)``.

    >>> coverage_mask(np.eye(3), (4, 4), (6, 2)).astype(int).tolist()
    [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]
    """
    w, h = size_src
    valid = np.zeros((h, w), np.uint8)
    valid[margin : h - margin, margin : w - margin] = 255
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(valid, np.asarray(H_src_from_dst), size_dst, flags=flags) == 255
