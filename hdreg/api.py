"""The Python API: the homography between two images in one call, and the trained networks.

    >>> import numpy as np, hdreg
    >>> from skimage import data
    >>> a = data.camera()                                   # 512×512 uint8
    >>> b = np.ascontiguousarray(a[10:, 20:])               # B = A shifted by (−20, −10)
    >>> result = hdreg.estimate(a, b, method="sift")
    >>> result.failed, np.round(result.b_from_a[:2, 2]).tolist()
    (False, [-20.0, -10.0])

Conventions (docs/conventions.md): pixel coordinates ``(x, y)``, origin at the centre of the
top-left pixel; ``b_from_a`` maps pixel coordinates of image A into image B
(``p_b ~ b_from_a @ p_a``), ``a_from_b`` is its inverse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Result", "estimate", "load", "to_gray_u8"]


@dataclass(frozen=True)
class Result:
    """The homography between two images.

    Attributes:
        b_from_a: ``(3, 3)`` float64, maps pixels of A into B (the identity when failed).
        a_from_b: ``(3, 3)`` float64, its inverse.
        failed: the method found no homography it trusts; ``reason`` says why.
        reason: ``""`` unless failed.
        details: what the method reports (matches and inliers, confidence, correlation, …).
        method: the method spec that ran.
        seconds: wall time of the estimate.
    """

    b_from_a: np.ndarray
    a_from_b: np.ndarray
    failed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    seconds: float = 0.0


def to_gray_u8(image: Any, name: str = "image") -> np.ndarray:
    """An image as hdreg's estimators take it: ``(H, W)`` uint8 grayscale.

    Accepts a numpy array as OpenCV reads it (``(H, W)``, ``(H, W, 1)``, BGR ``(H, W, 3)`` or
    BGRA ``(H, W, 4)``; uint8, uint16, or float in [0, 1]) or a PIL image (any mode).
    ``ValueError`` naming ``name`` for anything else.
    """
    import cv2

    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or a PIL image, got {type(image).__name__}")
    x = image
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim == 3 and x.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if x.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        elif x.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{name} has dtype {x.dtype}: expected uint8, uint16 or float in [0, 1]"
            )
        x = cv2.cvtColor(np.ascontiguousarray(x), code)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {x.shape}")
    if min(x.shape) < 8:
        raise ValueError(f"{name} is {x.shape[1]}×{x.shape[0]} pixels: at least 8×8 is needed")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.uint16:
        return (x.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values")
        return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise ValueError(f"{name} has dtype {x.dtype}: expected uint8, uint16 or float in [0, 1]")


@functools.lru_cache(maxsize=8)
def _estimator(method: str, device: str) -> Any:
    from hdreg.config import method_names
    from hdreg.estimators.base import ALIGN_MIN_CONFIDENCE
    from hdreg.estimators.registry import (
        build_estimator,
        parse_checkpoint_spec,
        parse_method_spec,
    )

    base = method.partition("+")[0]
    if base in method_names():
        spec = parse_method_spec(method, method_names())
    else:
        spec = parse_checkpoint_spec(method)
    return build_estimator(spec, device=device, min_confidence=ALIGN_MIN_CONFIDENCE)


def estimate(image_a: Any, image_b: Any, method: str = "sift", *, device: str = "auto") -> Result:
    """The homography between two images, by any method hdreg has.

    Args:
        image_a, image_b: numpy arrays as OpenCV reads them (8/16-bit, gray or colour) or PIL
            images; sizes may differ.
        method: a method (``"sift"``, ``"ecc"``, ``"orb"``, … : ``hdreg/configs/method/``), a
            shipped model (``"wide"``, ``"iterative"``: ``hdreg weights``) or a checkpoint
            path, optionally refined (``"sift+ecc"``, ``"wide+ecc"``).
        device: for learned methods: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        a :class:`Result`. A learned method whose estimate is not trustworthy (blank photos,
        unrelated photos: confidence under the threshold ``hdreg align`` uses) is ``failed``.
    """
    a = to_gray_u8(image_a, "image_a")
    b = to_gray_u8(image_b, "image_b")
    estimator = _estimator(str(method), str(device))
    est = estimator.estimate([a], [b])
    a_from_b = np.asarray(est.H_a_from_b[0], np.float64)
    a_from_b = a_from_b / a_from_b[2, 2]
    b_from_a = np.linalg.inv(a_from_b)
    details = est.details[0] if est.details else {}
    return Result(
        b_from_a, a_from_b, bool(est.failed[0]), est.reasons[0] if est.failed[0] else "",
        dict(details), str(method), float(est.seconds[0]),
    )  # fmt: skip


def load(name_or_path: str | Path, device: str = "cpu") -> Any:
    """A trained network, weights loaded, in eval mode (no PyTorch Lightning, no Hydra).

    ``name_or_path``: a shipped model (``hdreg weights``: ``"iterative"``, ``"homographynet"``,
    ``"wide"``'s network) or a checkpoint written by ``hdreg train``. The file is checked
    before anything is built (allow-listed classes, plain arguments, checksums).

    The network's ``forward(patch_a, patch_b)``:

    - ``patch_a``, ``patch_b``: ``(B, 1, P, P)`` float tensors in [0, 1] (P = 128 for the
      shipped models; other sizes are resized to it);
    - returns a dict with ``offsets (B, 4, 2)``: where patch B's four corners (top-left,
      top-right, bottom-right, bottom-left) lie in patch A, minus the corners, in pixels of the
      ``P×P`` patches; iterative networks add ``offsets_all (N, B, 4, 2)``, every iteration's
      estimate.

    >>> import torch, hdreg
    >>> net = hdreg.load("iterative")
    >>> net(torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128))["offsets"].shape
    torch.Size([1, 4, 2])
    """
    from hdreg.models.checkpoint import load_net

    return load_net(name_or_path, device=device)
