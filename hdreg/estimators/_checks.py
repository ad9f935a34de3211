"""Argument checks shared by the classical baselines: clear errors naming the argument."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

__all__ = ["check_float", "check_gray_u8", "check_int"]

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or ``ValueError`` naming ``name``."""
    # bool is an int subclass: reject it, `min_matches=True` is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """``value`` as a finite float within the given bounds (at least one), or ``ValueError``."""
    bounds = [
        (op, limit)
        for op, limit in ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
        if limit is not None
    ]
    is_number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    ok = is_number and math.isfinite(value) and all(_OPS[op](value, lim) for op, lim in bounds)
    if not ok:
        wanted = " and ".join(f"{op} {lim:g}" for op, lim in bounds)
        raise ValueError(f"{name} must be a finite number {wanted}, got {value!r}")
    return float(value)


def check_gray_u8(image: Any, name: str) -> np.ndarray:
    """``image`` as a contiguous ``(H, W) uint8`` array, or ``ValueError`` naming it."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"{name} must be a (H, W) uint8 array, got {desc}")
    return np.ascontiguousarray(image)
