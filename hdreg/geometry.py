"""Batched homography geometry in torch: corners, Tensor DLT, point transforms, spatial transformer.

Conventions (the same everywhere in hdreg, see docs/conventions.md):

* Pixel coordinates are ``(x, y)``, x to the right, y down; ``(0, 0)`` is the *centre* of the
  top-left pixel (OpenCV's convention).
* Corners are ordered top-left, top-right, bottom-right, bottom-left, shape ``(B, 4, 2)``.
* ``H_a_from_b`` maps pixel coordinates of image B to those of image A:
  ``p_a ~ H_a_from_b @ p_b``.
* The four-point label ``offsets`` is where patch B's corners lie in A's frame minus the corners,
  so ``H_a_from_b = four_point_to_homography(corners, corners + offsets)``.

Every function takes its device and dtype from its inputs and is differentiable unless stated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hdreg.geometry_np import corner_distance  # one implementation for numpy and torch alike

__all__ = [
    "corner_distance",
    "four_point_to_homography",
    "four_point_to_homography_closed",
    "four_point_to_homography_ex",
    "homography_to_four_point",
    "inside_mask",
    "invert_homography",
    "is_convex",
    "normalize_homography",
    "offsets_to_homography",
    "patch_corners",
    "rescale_homography",
    "resize_matrix",
    "sample_at",
    "transform_points",
    "warp_grid",
    "warp_perspective",
]


def _check_shape(name: str, x: Tensor, *shape: int | None) -> None:
    """Raise ``ValueError`` unless ``x`` has ``len(shape)`` dims matching ``shape`` (None = any)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ok = x.ndim == len(shape) and all(
        s is None or s == d for s, d in zip(shape, x.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def patch_corners(
    top_left: Tensor, patch_size: int | tuple[int, int], *, dtype: torch.dtype | None = None
) -> Tensor:
    """Corners of axis-aligned patches in pixel coordinates.

    Args:
        top_left: ``(B, 2)`` pixel ``(x0, y0)`` of each patch's top-left pixel.
        patch_size: side ``P`` of a square patch, or ``(width, height)``.
        dtype: floating dtype of the result (default: ``top_left``'s if floating, else float32).

    Returns:
        ``(B, 4, 2)`` corners TL, TR, BR, BL: ``(x0, y0), (x0+W-1, y0), (x0+W-1, y0+H-1),
        (x0, y0+H-1)``.

    Example:
        >>> patch_corners(torch.tensor([[0, 0]]), 128)[0].tolist()
        [[0.0, 0.0], [127.0, 0.0], [127.0, 127.0], [0.0, 127.0]]
    """
    _check_shape("top_left", top_left, None, 2)
    w, h = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    if w < 2 or h < 2:
        raise ValueError(f"patch_size must be at least 2 pixels per side, got {patch_size}")
    if dtype is None:
        dtype = top_left.dtype if top_left.is_floating_point() else torch.float32
    unit = torch.tensor(
        [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], device=top_left.device, dtype=dtype
    )
    return top_left.to(dtype)[:, None, :] + unit


def _normalizing_transform(points: Tensor) -> Tensor:
    """Similarity ``T (B, 3, 3)`` that moves the centroid of ``points (B, N, 2)`` to the origin
    and scales their mean distance from it to sqrt(2) (Hartley normalization)."""
    centroid = points.mean(dim=1)  # (B, 2)
    dist = (points - centroid[:, None]).norm(dim=-1).mean(dim=1)  # (B,)
    # Coincident points (dist = 0) keep scale √2; the caller flags them as degenerate. A `where`
    # on the denominator (not on the quotient) keeps the backward pass free of 0 · inf.
    dist = torch.where(dist > torch.finfo(points.dtype).eps, dist, torch.ones_like(dist))
    scale = (2.0**0.5) / dist
    T = torch.zeros(points.shape[0], 3, 3, device=points.device, dtype=points.dtype)
    T[:, 0, 0] = scale
    T[:, 1, 1] = scale
    T[:, :2, 2] = -scale[:, None] * centroid
    T[:, 2, 2] = 1.0
    return T


def _min_triangle_area(points: Tensor) -> Tensor:
    """Smallest |area| of the four triangles formed by three of four points ``(B, 4, 2)``."""
    areas = []
    for i, j, k in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)):
        u = points[:, j] - points[:, i]
        v = points[:, k] - points[:, i]
        areas.append(0.5 * (u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]).abs())
    return torch.stack(areas, dim=1).min(dim=1).values


def four_point_to_homography_ex(points_src: Tensor, points_dst: Tensor) -> tuple[Tensor, Tensor]:
    """Tensor DLT: the homography mapping four points onto four others, plus a validity flag.

    Solves the 8×8 linear system of Nguyen et al. (2018) per batch element, with ``h33 = 1``:
    for each correspondence ``(u, v) -> (u', v')``::

        [ 0  0  0  -u  -v  -1  v'u  v'v ] h = -v'
        [ u  v  1   0   0   0 -u'u -u'v ] h =  u'

    Both point sets are first Hartley-normalized (centroid at the origin, mean distance √2), so
    the system is well conditioned in float32 whatever the pixel scale, and the result is
    de-normalized: ``H = T_dst⁻¹ · H_norm · T_src``. Differentiable with respect to both inputs.

    Args:
        points_src: ``(B, 4, 2)`` pixel coordinates in the source frame (e.g. patch B corners).
        points_dst: ``(B, 4, 2)`` corresponding coordinates in the destination frame.

    Returns:
        ``H_dst_from_src (B, 3, 3)``, scaled so that ``H[:, 2, 2] == 1`` (unless that entry is
        zero: the source origin maps to infinity), and ``valid (B,)`` bool. An invalid
        element (three of its four points collinear, or two equal, in either set, or a
        non-finite input or solution) gets the identity, so the result is always finite.

    Example:
        >>> src = patch_corners(torch.zeros(1, 2, dtype=torch.float64), 128)
        >>> H, valid = four_point_to_homography_ex(src, src + 5.0)
        >>> [round(t, 9) for t in H[0, :2, 2].tolist()], bool(valid[0])
        ([5.0, 5.0], True)
    """
    _check_shape("points_src", points_src, None, 4, 2)
    _check_shape("points_dst", points_dst, points_src.shape[0], 4, 2)
    if not points_src.is_floating_point() or points_src.dtype != points_dst.dtype:
        raise TypeError(
            "points_src and points_dst must share one floating dtype, got "
            f"{points_src.dtype} and {points_dst.dtype}"
        )
    B = points_src.shape[0]
    eye = torch.eye(3, device=points_src.device, dtype=points_src.dtype).expand(B, 3, 3)
    finite = torch.isfinite(points_src).all(dim=(1, 2)) & torch.isfinite(points_dst).all(dim=(1, 2))
    # Replace non-finite inputs so that no NaN enters the solve (and its backward pass).
    src = torch.where(finite[:, None, None], points_src, patch_corners(eye.new_zeros(B, 2), 2))
    dst = torch.where(finite[:, None, None], points_dst, patch_corners(eye.new_zeros(B, 2), 2))

    T_src = _normalizing_transform(src)
    T_dst = _normalizing_transform(dst)
    s = src * T_src[:, :1, :1] + T_src[:, None, :2, 2]  # normalized points (B, 4, 2)
    d = dst * T_dst[:, :1, :1] + T_dst[:, None, :2, 2]

    # Degeneracy in normalized units: a unit square has triangle areas of 1 there. The threshold
    # scales with the dtype's precision, as the solve's accuracy does.
    area_eps = torch.finfo(src.dtype).eps ** 0.5
    valid = finite & (_min_triangle_area(s) > area_eps) & (_min_triangle_area(d) > area_eps)

    u, v = s[..., 0], s[..., 1]
    up, vp = d[..., 0], d[..., 1]
    zeros, ones = torch.zeros_like(u), torch.ones_like(u)
    rows_v = torch.stack([zeros, zeros, zeros, -u, -v, -ones, vp * u, vp * v], dim=-1)
    rows_u = torch.stack([u, v, ones, zeros, zeros, zeros, -up * u, -up * v], dim=-1)
    A = torch.stack([rows_v, rows_u], dim=2).reshape(B, 8, 8)
    b = torch.stack([-vp, up], dim=2).reshape(B, 8, 1)
    # Invalid elements solve a harmless system (the identity's), keeping gradients finite.
    A_ok = torch.where(valid[:, None, None], A, torch.eye(8, device=A.device, dtype=A.dtype))
    b_ok = torch.where(valid[:, None, None], b, _identity_rhs(B, A))
    h, info = torch.linalg.solve_ex(A_ok, b_ok)
    H_norm = torch.cat([h[:, :, 0], torch.ones_like(h[:, :1, 0])], dim=1).reshape(B, 3, 3)
    H = normalize_homography(torch.linalg.solve(T_dst, H_norm @ T_src))  # T_dst⁻¹·H_norm·T_src
    valid = valid & (info == 0) & torch.isfinite(H).all(dim=(1, 2))
    return torch.where(valid[:, None, None], H, eye), valid


def _identity_rhs(batch: int, like: Tensor) -> Tensor:
    """Right-hand side ``(B, 8, 1)`` that makes the identity 8×8 system return the identity H."""
    h = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], device=like.device, dtype=like.dtype)
    return h.expand(batch, 8)[..., None]


def offsets_to_homography(offsets: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """``H_a_from_b (B, 3, 3)`` and ``valid (B,)`` of four-point offsets on ``P×P`` patches.

    The one conversion of the four-point label (docs/conventions.md): patch B's corners lie at
    ``corners + offsets`` in patch A, so ``H_a_from_b = DLT(corners, corners + offsets)``
    (:func:`four_point_to_homography_ex`: the identity and ``valid = False`` where degenerate).

    >>> H, valid = offsets_to_homography(torch.full((1, 4, 2), 2.0, dtype=torch.float64), 128)
    >>> H[0, :2, 2].round(decimals=6).tolist(), bool(valid[0])
    ([2.0, 2.0], True)
    """
    _check_shape("offsets", offsets, None, 4, 2)
    corners = patch_corners(offsets.new_zeros(offsets.shape[0], 2), patch_size)
    return four_point_to_homography_ex(corners, corners + offsets)


def four_point_to_homography(points_src: Tensor, points_dst: Tensor) -> Tensor:
    """Tensor DLT that raises on degenerate input; see :func:`four_point_to_homography_ex`.

    Args:
        points_src: ``(B, 4, 2)`` source points.
        points_dst: ``(B, 4, 2)`` destination points.

    Returns:
        ``H_dst_from_src (B, 3, 3)``, normalized so that ``H[:, 2, 2] == 1``.

    Raises:
        ValueError: naming the batch elements whose points are degenerate (three collinear, two
            equal) or non-finite. Use the ``_ex`` variant to get a flag instead.

    Example:
        >>> corners = patch_corners(torch.tensor([[10.0, 20.0]]), 128)
        >>> offsets = torch.tensor([[[3.0, -2.0], [0.0, 4.0], [-5.0, 1.0], [2.0, 2.0]]])
        >>> H_a_from_b = four_point_to_homography(corners, corners + offsets)
    """
    H, valid = four_point_to_homography_ex(points_src, points_dst)
    if not bool(valid.all()):
        bad = torch.nonzero(~valid).flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            f"four_point_to_homography: degenerate point sets at batch index {shown} "
            f"({len(bad)} of {valid.numel()}): three of the four points are collinear, two are "
            "equal, or a coordinate is not finite, so no unique homography exists"
        )
    return H


def _cross(u: Tensor, v: Tensor) -> Tensor:
    """Cross product of ``(..., 3)`` vectors, element by element (exports to any ONNX opset)."""
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    return torch.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], dim=-1)


def _adjugate(M: Tensor) -> Tensor:
    """Adjugate of ``(B, 3, 3)`` matrices: ``adj(M) · M = det(M) · I``, with no division."""
    r0, r1, r2 = M.unbind(1)
    return torch.stack([_cross(r1, r2), _cross(r2, r0), _cross(r0, r1)], dim=-1)


def _quad_from_square(q: Tensor) -> Tensor:
    """``H_quad_from_square (B, 3, 3)``, up to scale: the homography taking the unit square's
    corners (0, 0), (1, 0), (1, 1), (0, 1) onto ``q (B, 4, 2)`` (in that order).

    Heckbert's closed form (1989, "Fundamentals of Texture Mapping") multiplied through by its
    denominator, so it has no division: a degenerate quad gives a singular matrix, not NaN.
    """
    x0, x1, x2, x3 = q[..., 0].unbind(1)
    y0, y1, y2, y3 = q[..., 1].unbind(1)
    sx, sy = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3
    dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
    den = dx1 * dy2 - dx2 * dy1
    g = sx * dy2 - dx2 * sy
    h = dx1 * sy - sx * dy1
    rows = [
        [(x1 - x0) * den + g * x1, (x3 - x0) * den + h * x3, x0 * den],
        [(y1 - y0) * den + g * y1, (y3 - y0) * den + h * y3, y0 * den],
        [g, h, den],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=1)


def _hartley(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hartley normalization of ``points (B, N, 2)`` without in-place writes: the normalized
    points, the scale ``(B,)`` and the centroid ``(B, 2)`` (``p' = scale · (p − centroid)``)."""
    centroid = points.mean(dim=1)
    dist = (points - centroid[:, None]).norm(dim=-1).mean(dim=1)
    dist = torch.where(dist > torch.finfo(points.dtype).eps, dist, torch.ones_like(dist))
    scale = (2.0**0.5) / dist
    return (points - centroid[:, None]) * scale[:, None, None], scale, centroid


def _similarity(scale: Tensor, shift: Tensor) -> Tensor:
    """``(B, 3, 3)`` matrices ``[[s, 0, tx], [0, s, ty], [0, 0, 1]]`` from ``scale (B,)`` and
    ``shift (B, 2)``."""
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    rows = [[scale, zero, shift[:, 0]], [zero, scale, shift[:, 1]], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=1)


def four_point_to_homography_closed(
    points_src: Tensor, points_dst: Tensor
) -> tuple[Tensor, Tensor]:
    """Four-point homography in closed form, with no matrix solve: exportable to ONNX.

    ``H_dst_from_src = H_dst_from_square · adj(H_src_from_square)`` (Heckbert's square-to-quad
    homographies; the adjugate stands in for the inverse, which is equal up to scale), computed
    on Hartley-normalized points and de-normalized, so float32 keeps the accuracy of
    :func:`four_point_to_homography_ex`. Only elementwise arithmetic, ``stack`` and ``matmul``:
    no data-dependent control flow.

    Args:
        points_src: ``(B, 4, 2)`` source points.
        points_dst: ``(B, 4, 2)`` corresponding destination points.

    Returns:
        ``H_dst_from_src (B, 3, 3)`` and ``valid (B,)``, with the same scaling, degeneracy test
        and identity for invalid elements as :func:`four_point_to_homography_ex`.

    Example:
        >>> src = patch_corners(torch.zeros(1, 2, dtype=torch.float64), 128)
        >>> H, valid = four_point_to_homography_closed(src, src + 5.0)
        >>> [round(t, 9) for t in H[0, :2, 2].tolist()], bool(valid[0])
        ([5.0, 5.0], True)
    """
    _check_shape("points_src", points_src, None, 4, 2)
    _check_shape("points_dst", points_dst, points_src.shape[0], 4, 2)
    if not points_src.is_floating_point() or points_src.dtype != points_dst.dtype:
        raise TypeError(
            "points_src and points_dst must share one floating dtype, got "
            f"{points_src.dtype} and {points_dst.dtype}"
        )
    finite = torch.isfinite(points_src).all(dim=2).all(dim=1)
    finite = finite & torch.isfinite(points_dst).all(dim=2).all(dim=1)
    square = patch_corners(torch.zeros_like(points_src[:, 0]), 2)
    src = torch.where(finite[:, None, None], points_src, square)
    dst = torch.where(finite[:, None, None], points_dst, square)
    s, scale_src, centroid_src = _hartley(src)
    d, scale_dst, centroid_dst = _hartley(dst)
    area_eps = torch.finfo(src.dtype).eps ** 0.5  # as four_point_to_homography_ex
    valid = finite & (_min_triangle_area(s) > area_eps) & (_min_triangle_area(d) > area_eps)

    H_norm = _quad_from_square(d) @ _adjugate(_quad_from_square(s))
    T_src = _similarity(scale_src, -scale_src[:, None] * centroid_src)
    T_dst_inv = _similarity(1.0 / scale_dst, centroid_dst)
    H = T_dst_inv @ H_norm @ T_src
    # Scale to H[2, 2] = 1 (as normalize_homography), the largest entry first so that the
    # unnormalized product cannot overflow float32 on the way.
    biggest = H.abs().amax(dim=2, keepdim=True).amax(dim=1, keepdim=True)
    H = H / torch.where(biggest > 0, biggest, torch.ones_like(biggest))
    H = normalize_homography(H)
    valid = valid & torch.isfinite(H).all(dim=2).all(dim=1)
    eye = torch.eye(3, dtype=H.dtype, device=H.device).expand_as(H)
    return torch.where(valid[:, None, None], H, eye), valid


def transform_points(H_dst_from_src: Tensor, points_src: Tensor) -> Tensor:
    """Map points through homographies (like ``cv2.perspectiveTransform``).

    Args:
        H_dst_from_src: ``(B, 3, 3)``.
        points_src: ``(B, N, 2)`` pixel coordinates in the source frame.

    Returns:
        ``(B, N, 2)`` points in the destination frame. The horizon policy (the same as
        :func:`hdreg.geometry_np.project`): where the homogeneous coordinate ``w`` is below the
        dtype's machine epsilon in magnitude, the division is by ``±eps`` (``w``'s sign, ``+``
        for 0), so the point lands far away but finite and gradients stay finite.

    Example:
        >>> H = torch.eye(3)[None].clone(); H[0, 0, 2] = 2.0
        >>> transform_points(H, torch.tensor([[[1.0, 1.0]]])).tolist()
        [[[3.0, 1.0]]]
    """
    _check_shape("H_dst_from_src", H_dst_from_src, None, 3, 3)
    _check_shape("points_src", points_src, H_dst_from_src.shape[0], None, 2)
    ph = F.pad(points_src, (0, 1), value=1.0)  # (B, N, 3)
    q = ph @ H_dst_from_src.transpose(1, 2)
    w = q[..., 2:]
    eps = torch.finfo(q.dtype).eps
    w = torch.where(w.abs() < eps, torch.where(w < 0, -eps, eps), w)
    return q[..., :2] / w


def homography_to_four_point(H_a_from_b: Tensor, corners_b: Tensor) -> Tensor:
    """Four-point parameterization of a homography: the inverse of the Tensor DLT.

    Args:
        H_a_from_b: ``(B, 3, 3)``.
        corners_b: ``(B, 4, 2)`` corners of patch B in B's pixel frame.

    Returns:
        ``offsets (B, 4, 2)``: where ``corners_b`` land in A's frame, minus ``corners_b``.
    """
    _check_shape("corners_b", corners_b, None, 4, 2)
    return transform_points(H_a_from_b, corners_b) - corners_b


def normalize_homography(H: Tensor) -> Tensor:
    """Scale each ``(B, 3, 3)`` homography so that ``H[2, 2] = 1``.

    A matrix whose ``H[2, 2]`` is below the dtype's epsilon times its largest entry (the origin
    maps to the horizon: no scaling can make it 1) is returned unchanged. The same rule as
    :func:`hdreg.geometry_np.normalize_homography`.

    Example:
        >>> normalize_homography(2 * torch.eye(3)[None])[0].diagonal().tolist()
        [1.0, 1.0, 1.0]
    """
    _check_shape("H", H, None, 3, 3)
    h33 = H[:, 2:3, 2:3]
    scale = H.detach().abs().amax(dim=(1, 2), keepdim=True)
    ok = h33.detach().abs() > torch.finfo(H.dtype).eps * scale
    return H / torch.where(ok, h33, torch.ones_like(h33))


def is_convex(quads: Tensor) -> Tensor:
    """``(B,)`` bool: each quadrilateral ``(B, 4, 2)`` (corners in order) is strictly convex.

    The cross products of consecutive edges all have one strict sign, computed in float64: the
    same test as :func:`hdreg.geometry_np.is_convex`. Not differentiable (a predicate).

    Example:
        >>> is_convex(patch_corners(torch.zeros(1, 2), 8)).tolist()
        [True]
    """
    _check_shape("quads", quads, None, 4, 2)
    q = quads.detach().to(torch.float64)
    edges = q.roll(-1, dims=1) - q  # edge i runs from corner i to corner i + 1
    nxt = edges.roll(-1, dims=1)
    cross = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    return (cross > 0).all(dim=1) | (cross < 0).all(dim=1)


def invert_homography(H_a_from_b: Tensor) -> Tensor:
    """``H_b_from_a (B, 3, 3)`` from ``H_a_from_b (B, 3, 3)``, normalized so that ``H[2, 2] = 1``.

    Raises ``torch.linalg.LinAlgError`` for a singular matrix (not a homography).
    """
    _check_shape("H_a_from_b", H_a_from_b, None, 3, 3)
    return normalize_homography(torch.linalg.inv(H_a_from_b))


def resize_matrix(
    size_from: tuple[int, int], size_to: tuple[int, int], *, like: Tensor | None = None
) -> Tensor:
    """Affine ``(3, 3)`` map from pixel coordinates of an image to those of its resized copy.

    Uses the pixel-centre convention of ``cv2.resize``: ``x' = (x + 0.5) · W'/W − 0.5``.

    Args:
        size_from: ``(width, height)`` before resizing.
        size_to: ``(width, height)`` after resizing.
        like: tensor whose device and dtype the result takes (default float64 on the CPU).
    """
    (w0, h0), (w1, h1) = size_from, size_to
    if min(w0, h0, w1, h1) <= 0:
        raise ValueError(f"image sizes must be positive, got {size_from} -> {size_to}")
    sx, sy = w1 / w0, h1 / h0
    kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    kw.setdefault("dtype", torch.float64)
    return torch.tensor(
        [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], **kw
    )


def rescale_homography(
    H_a_from_b: Tensor,
    size_a_from: tuple[int, int],
    size_a_to: tuple[int, int],
    size_b_from: tuple[int, int],
    size_b_to: tuple[int, int],
) -> Tensor:
    """Express a homography between resized copies of its two images.

    If ``H_a_from_b`` relates images A and B of sizes ``size_a_from`` and ``size_b_from`` (each
    ``(width, height)``), the result relates the same images resized (as ``cv2.resize`` does) to
    ``size_a_to`` and ``size_b_to``: ``S_a · H_a_from_b · S_b⁻¹``. Typical use: a model predicted
    ``H`` on 128×128 inputs and the caller wants it at full resolution.

    Args:
        H_a_from_b: ``(B, 3, 3)``.

    Returns:
        ``(B, 3, 3)``, normalized so that ``H[2, 2] = 1``.
    """
    _check_shape("H_a_from_b", H_a_from_b, None, 3, 3)
    S_a = resize_matrix(size_a_from, size_a_to, like=H_a_from_b)
    S_b_inv = resize_matrix(size_b_to, size_b_from, like=H_a_from_b)
    return normalize_homography(S_a @ H_a_from_b @ S_b_inv)


def warp_grid(
    H_a_from_b: Tensor, size_b: tuple[int, int], *, top_left_b: Tensor | None = None
) -> Tensor:
    """Pixel coordinates in A of every pixel of B: the sampling grid of the spatial transformer.

    Args:
        H_a_from_b: ``(B, 3, 3)``.
        size_b: ``(width, height)`` of the output (B's pixel grid).
        top_left_b: optional ``(B, 2)`` ``(x0, y0)``: the grid covers a window of B starting
            there (e.g. patch B inside its full image), instead of starting at ``(0, 0)``.

    Returns:
        ``grid_a (B, H_b, W_b, 2)``: ``(x, y)`` in A's pixel frame.
    """
    _check_shape("H_a_from_b", H_a_from_b, None, 3, 3)
    w, h = size_b
    ys, xs = torch.meshgrid(
        torch.arange(h, device=H_a_from_b.device, dtype=H_a_from_b.dtype),
        torch.arange(w, device=H_a_from_b.device, dtype=H_a_from_b.dtype),
        indexing="ij",
    )
    points_b = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2)
    points_b = points_b.expand(H_a_from_b.shape[0], h * w, 2)
    if top_left_b is not None:
        _check_shape("top_left_b", top_left_b, H_a_from_b.shape[0], 2)
        points_b = points_b + top_left_b.to(points_b.dtype)[:, None, :]
    return transform_points(H_a_from_b, points_b).reshape(-1, h, w, 2)


def warp_perspective(
    image_a: Tensor,
    H_a_from_b: Tensor,
    size_b: tuple[int, int],
    *,
    fill: float | str = 0.0,
    top_left_b: Tensor | None = None,
) -> Tensor:
    """Spatial transformer: resample image A onto B's pixel grid through ``H_a_from_b``.

    ``out[b, :, y, x] = A[b, :, H_a_from_b(x, y)]`` with bilinear interpolation — the same as
    ``cv2.warpPerspective(A, H_a_from_b, (W_b, H_b), flags=INTER_LINEAR | WARP_INVERSE_MAP)``.
    Differentiable with respect to ``image_a`` and ``H_a_from_b``.

    Args:
        image_a: ``(B, C, H_a, W_a)`` floating image.
        H_a_from_b: ``(B, 3, 3)`` in pixel coordinates.
        size_b: ``(width, height)`` of the output.
        fill: value of samples outside A (a constant, blended bilinearly at the border like
            OpenCV's ``BORDER_CONSTANT``), or ``"border"`` / ``"reflection"`` padding.
        top_left_b: optional ``(B, 2)`` offset of the output window in B's frame (see
            :func:`warp_grid`).

    Returns:
        ``(B, C, H_b, W_b)``.

    Example:
        >>> img = torch.rand(2, 1, 240, 320, dtype=torch.float64)
        >>> H = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
        >>> out = warp_perspective(img, H, (128, 128))
        >>> torch.allclose(out, img[:, :, :128, :128], atol=1e-9)
        True
    """
    _check_shape("image_a", image_a, None, None, None, None)
    _check_shape("H_a_from_b", H_a_from_b, image_a.shape[0], 3, 3)
    if not image_a.is_floating_point():
        raise TypeError(f"image_a must be a floating tensor, got {image_a.dtype}")
    grid_a = warp_grid(H_a_from_b.to(image_a.dtype), size_b, top_left_b=top_left_b)
    return sample_at(image_a, grid_a, fill=fill)


def sample_at(image_a: Tensor, grid_a: Tensor, *, fill: float | str = 0.0) -> Tensor:
    """Bilinear samples of ``image_a (B, C, H, W)`` at pixel coordinates ``grid_a (B, h, w, 2)``.

    ``fill`` as in :func:`warp_perspective`. Returns ``(B, C, h, w)``.
    """
    h_a, w_a = image_a.shape[-2:]
    # Pixel -> normalized coordinates with align_corners=True: -1 and +1 are the centres of the
    # first and last pixels, matching the pixel-centre convention.
    scale = grid_a.new_tensor([2.0 / max(w_a - 1, 1), 2.0 / max(h_a - 1, 1)])
    grid_n = grid_a * scale - 1.0
    if isinstance(fill, str):
        if fill not in ("border", "reflection"):
            raise ValueError(f"fill must be a number, 'border' or 'reflection', got {fill!r}")
        return F.grid_sample(
            image_a, grid_n, mode="bilinear", padding_mode=fill, align_corners=True
        )
    if not math.isfinite(fill):
        raise ValueError(
            f"fill must be finite (use inside_mask to mark samples outside A), got {fill}"
        )
    # Constant fill v: sample (A - v) with zero padding, then add v back. This is exactly bilinear
    # interpolation over A extended by the constant v, as OpenCV's BORDER_CONSTANT.
    shifted = image_a - fill if fill != 0 else image_a
    out = F.grid_sample(shifted, grid_n, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out + fill if fill != 0 else out


def inside_mask(grid_a: Tensor, size_a: tuple[int, int]) -> Tensor:
    """``(B, 1, h, w)`` float mask: 1 where the sample point ``grid_a (B, h, w, 2)`` lies inside
    an image of ``size_a = (width, height)`` (within the outermost pixel centres), else 0."""
    w_a, h_a = size_a
    x, y = grid_a[..., 0], grid_a[..., 1]
    inside = (x >= 0) & (x <= w_a - 1) & (y >= 0) & (y <= h_a - 1)
    return inside[:, None].to(grid_a.dtype)
