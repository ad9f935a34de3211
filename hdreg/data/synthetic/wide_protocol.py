"""Parameters of wide-motion pairs (:mod:`hdreg.data.synthetic.wide`), validated on construction:
the relative motion (:class:`WideProtocol`) and each view's photometric change
(:class:`WidePhotometric`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["WidePhotometric", "WideProtocol"]


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


@dataclass(frozen=True)
class WideProtocol:
    """Parameters of the wide-motion sampler, validated on construction. Their defaults, and the
    meaning of each, are ``hdreg/configs/protocol/wide.yaml`` (the configs pass them in).

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
    def from_mapping(cls, values: Mapping[str, Any]) -> WideProtocol:
        """From a config mapping of every parameter (``photometric`` a mapping of all of its
        parameters, None (off) or a :class:`WidePhotometric`)."""
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown wide-pair parameter(s) {', '.join(unknown)}: valid are {', '.join(names)}"
            )
        missing = sorted(set(names) - set(values))
        if missing:
            raise ValueError(f"missing wide-pair parameter(s) {', '.join(missing)}")
        photometric = values["photometric"]
        if isinstance(photometric, Mapping):
            photometric = WidePhotometric.from_mapping(photometric)
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
