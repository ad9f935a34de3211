"""Pictures and one-line texts that show whether an estimate is right.

Synthetic pairs: quadrilaterals on patch A, difference images (:func:`pair_panel`, from
:mod:`hdreg.models.panel`). Real pairs (``hdreg align``): B warped into A's frame, a
false-colour overlay, the inlier matches. Images are ``(H, W) uint8`` gray, ``(H, W, 3) uint8``
colour; homographies are named by direction
(``H_b_from_a`` maps pixel coordinates of A into B); sizes are ``(width, height)``.

Example:
    >>> import numpy as np
    >>> warped, covered = warp_b_into_a(np.full((4, 4), 9, np.uint8), np.eye(3), (6, 4))
    >>> warped.shape, int(covered.sum())
    ((4, 6), 16)
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from hdreg.estimators import reportable
from hdreg.geometry_np import coverage_mask, scale_size
from hdreg.models.panel import GREEN, RED, draw_quad, pair_panel, to_rgb

__all__ = [
    "GREEN",
    "MATCHES_MAX_LINES",
    "MATCHES_MAX_WIDTH",
    "RED",
    "draw_quad",
    "format_details",
    "matches_image",
    "overlay_image",
    "pair_panel",
    "to_rgb",
    "warp_b_into_a",
]

# matches_image: panels wider than this are downscaled, and at most this many inlier lines are
# drawn (an evenly spread subset): beyond that the picture is a solid mesh.
MATCHES_MAX_WIDTH = 1600
MATCHES_MAX_LINES = 200


def format_details(details: dict[str, Any]) -> str:
    """A pair's reportable details (:func:`hdreg.estimators.reportable`) on one line, whatever
    the method: ``"matches 517, inliers 305"``; floats with 3 decimals, empty strings left out.

    >>> format_details({"matches": 517, "inliers": 305, "refine_kept": True, "refine_note": ""})
    'matches 517, inliers 305, refine_kept True'
    """
    parts = []
    for key, value in reportable(details).items():
        if value == "" or value is None:
            continue
        parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def warp_b_into_a(
    image_b: np.ndarray, H_b_from_a: np.ndarray, size_a: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """B resampled into A's frame (``size_a``, bilinear: ``B(H_b_from_a @ p_a)``) and the
    ``(H_a, W_a) bool`` mask of A's pixels whose sample lies inside B."""
    size_b = (image_b.shape[1], image_b.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(image_b, np.asarray(H_b_from_a), size_a, flags=flags)
    return warped, coverage_mask(H_b_from_a, size_b, size_a)


def overlay_image(image_a: np.ndarray, warped_b: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """False-colour overlay ``(H_a, W_a, 3) uint8`` BGR: A in magenta (red + blue), warped B in
    green. Where the two agree the channels are equal and the picture is gray; an edge that is
    misaligned shows a green and a magenta fringe; where B does not cover A the picture is
    magenta. Warped B's gain and offset are first matched to A's over the covered region, so
    that a change of exposure between the photos tints nothing."""
    levels = np.arange(256, dtype=np.float64)  # B's gray levels, mapped by one lookup table
    if covered.any():
        mask = covered.view(np.uint8) if covered.dtype == bool else covered.astype(np.uint8)
        (mean_a,), (std_a,) = (v.ravel() for v in cv2.meanStdDev(image_a, mask=mask))
        (mean_b,), (std_b,) = (v.ravel() for v in cv2.meanStdDev(warped_b, mask=mask))
        gain = std_a / std_b if std_b > 0 else 1.0
        levels = (levels - mean_b) * gain + mean_a
    b = np.clip(levels, 0, 255).astype(np.uint8)[warped_b]
    b[~covered] = 0
    return cv2.merge([image_a, b, image_a])  # B, G, R channels


def _bgr(gray: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def matches_image(
    image_a: np.ndarray,
    image_b: np.ndarray,
    details: dict[str, Any],
    text: str,
    failed: bool = False,
) -> np.ndarray | None:
    """A and B side by side with the keypoint matches of a pair's ``details`` drawn, under a
    banner ``text``; ``(h, w, 3) uint8`` BGR, or ``None`` when the details hold no keypoints.

    The inliers (``inlier_mask``) are drawn green; when the fit ``failed``, every match that
    passed the filters is drawn faint red instead, for diagnosis. Wide panels are downscaled to
    ``MATCHES_MAX_WIDTH`` and at most ``MATCHES_MAX_LINES`` lines are drawn.
    """
    if "keypoints_a" not in details:
        return None
    (ha, wa), (hb, wb) = image_a.shape[:2], image_b.shape[:2]
    gap = 8
    scale = min(1.0, MATCHES_MAX_WIDTH / (wa + gap + wb))
    size_a, size_b = scale_size((wa, ha), scale), scale_size((wb, hb), scale)
    canvas = np.full((max(size_a[1], size_b[1]), size_a[0] + gap + size_b[0], 3), 255, np.uint8)
    canvas[: size_a[1], : size_a[0]] = _bgr(
        cv2.resize(image_a, size_a, interpolation=cv2.INTER_AREA)
    )
    x0 = size_a[0] + gap
    canvas[: size_b[1], x0 : x0 + size_b[0]] = _bgr(
        cv2.resize(image_b, size_b, interpolation=cv2.INTER_AREA)
    )
    matches = details["match_pairs"]
    if failed:
        chosen, color = matches, (80, 80, 255)
    else:
        chosen, color = matches[details["inlier_mask"]], (60, 200, 60)
    if len(chosen) > MATCHES_MAX_LINES:
        chosen = chosen[np.linspace(0, len(chosen) - 1, MATCHES_MAX_LINES).round().astype(int)]
        text += f" ({MATCHES_MAX_LINES} lines drawn)"
    # Pixel centre x maps to (x + 0.5) * s - 0.5 in a resized image (cv2.resize's convention).
    to_a = (details["keypoints_a"] + 0.5) * np.array(size_a) / (wa, ha) - 0.5
    to_b = (details["keypoints_b"] + 0.5) * np.array(size_b) / (wb, hb) - 0.5 + (x0, 0)
    layer = canvas.copy()
    shift = 4  # sub-pixel drawing at 1/16 px
    for ia, ib in chosen:
        pa = tuple(int(v) for v in np.round(to_a[ia] * (1 << shift)))
        pb = tuple(int(v) for v in np.round(to_b[ib] * (1 << shift)))
        cv2.line(layer, pa, pb, color, 1, cv2.LINE_AA, shift)
        cv2.circle(layer, pa, 2 << shift, color, 1, cv2.LINE_AA, shift)
        cv2.circle(layer, pb, 2 << shift, color, 1, cv2.LINE_AA, shift)
    alpha = 0.4 if failed else 0.85
    canvas = cv2.addWeighted(layer, alpha, canvas, 1 - alpha, 0)
    banner = np.full((28, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(
        banner, text[:160], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.vstack([banner, canvas])
