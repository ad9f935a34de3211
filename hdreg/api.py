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
import os
from pathlib import Path
from typing import Any

from hdreg.estimators.base import Result
from hdreg.estimators.downsize import DEFAULT_MAX_SIDE
from hdreg.images import to_gray_u8

__all__ = ["Result", "estimate", "load", "to_gray_u8"]


def _file_identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or rewritten: device, inode, size, times (ns)."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=8)
def _built(spec: Any, device: str, max_side: int | None, identity: tuple[int, ...]) -> Any:
    """The estimator of a parsed spec (:func:`hdreg.estimators.registry.resolve`);
    ``identity`` (of its checkpoint file) is part of the cache key only, so that a replaced file
    is read again."""
    from hdreg.estimators.base import ALIGN_MIN_CONFIDENCE
    from hdreg.estimators.registry import resolve

    return resolve(spec, device=device, max_side=max_side, min_confidence=ALIGN_MIN_CONFIDENCE)


def _estimator(method: Any, device: str, max_side: int | None) -> Any:
    """The estimator of ``method``, built once per method, device, ``max_side`` and checkpoint
    file: a checkpoint is known by its absolute path and the file's identity, not by the spec's
    text (a relative path after ``os.chdir``, or a file replaced since, is another estimator)."""
    from dataclasses import replace

    from hdreg.estimators.registry import parse_spec

    spec = parse_spec(method)
    identity: tuple[int, ...] = ()
    if spec.checkpoint is not None:
        spec = replace(spec, checkpoint=Path(os.path.abspath(spec.checkpoint)))
        identity = _file_identity(spec.checkpoint)
    return _built(spec, device, max_side, identity)


def estimate(
    image_a: Any,
    image_b: Any,
    method: str | os.PathLike[str] = "sift",
    *,
    device: str = "auto",
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> Result:
    """The homography between two images, by any method hdreg has.

    Args:
        image_a, image_b: numpy arrays as OpenCV reads them (gray, BGR or BGRA; uint8, uint16
            including 12-bit data, or float in [0, 1]) or PIL images; sizes may differ. The
            rules: docs/conventions.md, "Image input" (:mod:`hdreg.images`).
        method: a method (``"sift"``, ``"ecc"``, ``"orb"``, … : ``hdreg/configs/method/``), a
            shipped model (``"wide"``, ``"iterative"``: ``hdreg weights``) or a checkpoint
            path, optionally refined (``"sift+ecc"``, ``"wide+ecc"``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"`` (used by learned
            methods; checked for every method).
        max_side: images whose longer side exceeds it are estimated on copies downsized to it
            (as ``hdreg align --max-side``, same default); the homography is always that of the
            full-resolution images. ``None`` or 0: always at full resolution.

    Returns:
        a :class:`Result`. A learned method whose estimate is not trustworthy (blank photos,
        unrelated photos: confidence under the threshold ``hdreg align`` uses) is ``failed``.

    Raises:
        ValueError: an unknown method, device or ``max_side``, or an image hdreg cannot take
            (naming it: ``image_a`` or ``image_b``).
    """
    from hdreg.device import check_device
    from hdreg.estimators.downsize import check_max_side
    from hdreg.images import gray_pair

    check_device(device)
    max_side = check_max_side(max_side)
    a, b = gray_pair(image_a, image_b)
    estimator = _estimator(method, str(device), max_side)
    return Result.from_estimate(estimator.estimate([a], [b]), 0, str(os.fspath(method)))


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
