"""hdreg: deep homography estimation, benchmarked against classical methods on the same pairs.

The Python API (imported on first use, so ``import hdreg`` is instant):

- :func:`hdreg.estimate` — the homography between two images by any method;
- :func:`hdreg.load` — a trained network as a plain ``torch.nn.Module``;
- :func:`hdreg.to_gray_u8` — an image as the estimators take it (:mod:`hdreg.images`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Result", "estimate", "load", "to_gray_u8"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hdreg import api

        return getattr(api, name)
    raise AttributeError(f"module 'hdreg' has no attribute {name!r}")
