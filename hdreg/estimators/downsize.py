"""The size guard of ``hdreg align`` and :func:`hdreg.estimate`: large photos are estimated on
downsized copies.

Keypoints, ECC and the learned models need no more than a couple of thousand pixels a side, and
full-resolution SIFT on a 48 MP photo takes gigabytes and a minute. :class:`Downsized` runs any
estimator on copies whose longer side is at most ``max_side`` (``cv2.resize``, area) and returns
the homography of the full-resolution images (:func:`hdreg.geometry_np.scale_matrix`, the
pixel-centre convention of docs/conventions.md).

Example:
    >>> import numpy as np
    >>> from hdreg.estimators.base import IdentityEstimator
    >>> big = np.zeros((300, 400), np.uint8)
    >>> est = Downsized(IdentityEstimator(), max_side=100).estimate([big], [big])
    >>> est.details[0]["matched_size_a"], np.round(est.H_a_from_b[0], 9).tolist()[0]
    ((100, 75), [1.0, 0.0, 0.0])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hdreg.estimators.base import Estimate, Estimator
from hdreg.geometry_np import normalize_homography, scale_matrix, scaled_size

__all__ = ["DEFAULT_MAX_SIDE", "MIN_MAX_SIDE", "Downsized", "check_max_side", "downsize_image"]

#: the longer side ``hdreg align`` and :func:`hdreg.estimate` estimate at by default
DEFAULT_MAX_SIDE = 2000
#: the smallest ``max_side`` accepted (other than 0 / ``None``: full resolution)
MIN_MAX_SIDE = 64
#: the ``details`` keys that hold pixel coordinates of A and of B
_POINTS = (("keypoints_a", 0), ("keypoints_b", 1))


def check_max_side(max_side: Any, option: str = "max_side") -> int | None:
    """``max_side`` as an int ``>= MIN_MAX_SIDE``, or ``None`` for 0 / ``None`` (full
    resolution); ``ValueError`` naming ``option`` otherwise."""
    if max_side is None or (isinstance(max_side, int | np.integer) and max_side == 0):
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer):
        raise ValueError(
            f"{option} must be 0 (full resolution) or at least {MIN_MAX_SIDE} px, got {max_side!r}"
        )
    if max_side < MIN_MAX_SIDE:
        raise ValueError(
            f"{option} must be 0 (full resolution) or at least {MIN_MAX_SIDE} px, got {max_side}"
        )
    return int(max_side)


def downsize_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` resized (area) so that its longer side is ``max_side``, or ``image`` itself
    when it is not larger (or ``max_side`` is ``None`` / 0).

    >>> downsize_image(np.zeros((300, 400), np.uint8), 100).shape
    (75, 100)
    """
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    return cv2.resize(image, scaled_size((w, h), max_side), interpolation=cv2.INTER_AREA)


def _size(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]


class Downsized(Estimator):
    """``inner`` run on copies of the images whose longer side is at most ``max_side``.

    The returned ``H_a_from_b`` maps full-resolution pixels of B into full-resolution pixels of
    A; ``keypoints_a`` / ``keypoints_b`` in the details are moved to full-resolution pixels. A
    pair that was downsized says so in its details: ``matched_size_a``, ``matched_size_b``, the
    ``(width, height)`` of the copies. ``max_side`` 0 or ``None``: ``inner`` sees the images as
    they are.
    """

    def __init__(self, inner: Estimator, max_side: int | None = DEFAULT_MAX_SIDE) -> None:
        self.inner = inner
        self.max_side = check_max_side(max_side)
        self.name = inner.name

    @property
    def per_pair(self) -> bool:  # type: ignore[override]
        return self.inner.per_pair

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """The copy of ``image`` that ``inner`` is given (``image`` itself when small enough)."""
        return downsize_image(image, self.max_side)

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        t0 = time.perf_counter()
        small_a = [self.shrink(x) for x in images_a]
        small_b = [self.shrink(x) for x in images_b]
        resize_seconds = (time.perf_counter() - t0) / max(1, len(images_a))
        est = self.inner.estimate(small_a, small_b)
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            sa, sb = small_a[i], small_b[i]
            if sa is a and sb is b:
                continue
            sizes, full = (_size(sa), _size(sb)), (_size(a), _size(b))
            if not est.failed[i]:
                # full B -> copy of B -> (inner's estimate) -> copy of A -> full A
                H_small = est.H_a_from_b[i]
                H = scale_matrix(sizes[0], full[0]) @ H_small @ scale_matrix(full[1], sizes[1])
                est.H_a_from_b[i] = normalize_homography(H)
            details: dict[str, Any] = est.details[i]
            for key, which in _POINTS:
                if key in details:
                    ratio = np.asarray(full[which], np.float64) / np.asarray(sizes[which])
                    details[key] = (np.asarray(details[key], np.float64) + 0.5) * ratio - 0.5
            details["matched_size_a"], details["matched_size_b"] = sizes
            est.seconds[i] += resize_seconds
        return est
