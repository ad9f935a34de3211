"""Align two photos with any hdreg method: the logic behind ``hdreg align A B``.

:func:`align` reads two image files (any size, format or channel count, EXIF orientation
applied: :func:`hdreg.data.sources.load_gray`), builds the estimator from a method name or a
checkpoint (:mod:`hdreg.estimators.registry`, the parameters of ``hdreg/configs/method/``),
optionally refined (``refine="ecc"``: :class:`hdreg.estimators.refinement.RefinedEstimator`,
kept only when it does not lower the photometric agreement), estimates the homography and
returns an :class:`AlignResult`.
:func:`write_alignment` writes the files that show it (pictures: :mod:`hdreg.visualize`).

Conventions (as in :mod:`hdreg.geometry`): pixel coordinates ``(x, y)``, ``(0, 0)`` the centre
of the top-left pixel. ``H_b_from_a`` maps pixel coordinates of A into B
(``p_b ~ H_b_from_a @ p_a``, the direction of HPatches/Oxford ground truth when A is image 1);
``H_a_from_b`` is its inverse. Sizes are ``(width, height)``.

Example:
    >>> import numpy as np, cv2
    >>> noise = np.random.default_rng(0).integers(0, 256, (120, 160), np.uint8)
    >>> a = cv2.GaussianBlur(noise, (0, 0), 2)
    >>> b = cv2.warpAffine(a, np.float32([[1, 0, -3], [0, 1, -2]]), (160, 120))
    >>> name, estimator = make_estimator("ecc")
    >>> result = align_images(a, b, estimator, method=name)
    >>> np.round(result.H_b_from_a[:2, 2], 1).tolist()
    [-3.0, -2.0]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hdreg.config import method_names
from hdreg.data.sources import load_gray
from hdreg.estimators import Estimator, reportable
from hdreg.estimators.features import DETECTORS
from hdreg.estimators.refinement import alignment_correlation
from hdreg.estimators.registry import (
    REFINEMENTS,
    MethodSpec,
    build_estimator,
    parse_checkpoint_spec,
    parse_method_spec,
)
from hdreg.geometry_np import normalize_homography, scale_matrix
from hdreg.visualize import format_details, matches_image, overlay_image, warp_b_into_a

__all__ = [
    "KEYPOINT_METHODS",
    "METHODS",
    "OUTPUT_FILES",
    "AlignResult",
    "align",
    "align_images",
    "earlier_outputs",
    "make_estimator",
    "write_alignment",
]

KEYPOINT_METHODS = tuple(sorted(DETECTORS))  # akaze, brisk, orb, sift
#: what ``hdreg align A B`` runs without --method or --checkpoint: the shipped whole-image
#: estimator refined by ECC, the most accurate method on real pairs in docs/results.md
DEFAULT_CHECKPOINT, DEFAULT_REFINE = "wide", "ecc"
#: the method configs (the registry, hdreg/configs/method/) and "model" for --checkpoint
METHODS = (*method_names(), "model")
# Everything write_alignment may write; files of an earlier run that this run does not write are
# removed, so that a folder never shows a stale homography next to a failed run.
OUTPUT_FILES = ("homography.json", "b_warped_to_a.png", "overlay.png", "matches.png")
# `hdreg align` estimates on copies whose longer side is at most this (--max-side; 0: never).
DEFAULT_MAX_SIDE = 2000
MIN_MAX_SIDE = 64

CONVENTION = (
    "pixel coordinates (x, y), (0, 0) = centre of the top-left pixel; "
    "p_b ~ b_from_a @ p_a and p_a ~ a_from_b @ p_b; sizes are [width, height]"
)


@dataclass
class AlignResult:
    """The outcome of aligning image B to image A.

    Attributes:
        method: the method's name (``"sift"``, ``"model"``, …); ``label`` adds the refinement.
        refine: the refinement asked for (``"ecc"``) or ``None``.
        image_a, image_b: the ``(H, W) uint8`` grayscale images that were aligned.
        H_a_from_b: ``(3, 3)`` float64 normalized so that ``H[2, 2] = 1`` (maps B into A), or
            ``None`` when the method failed (``reason`` says why).
        seconds: wall time of the estimation (and refinement), without reading the files or
            loading a model.
        path_a, path_b, checkpoint: where the inputs came from (``None`` when not from files).
        correlation, overlap: of the final estimate: ZNCC between B and A warped onto B over
            the pixels of B that map inside A, and the fraction of B they cover
            (:func:`hdreg.estimators.refinement.alignment_correlation`).
        details: the estimator's details of the pair (:mod:`hdreg.estimators`: ``matches``,
            ``inliers``, keypoints, ``refine_kept``, ``refine_note``, …); keypoints in
            full-resolution pixels.
        matched_sizes: ``(size_a, size_b)`` of the downsized copies the estimation ran on when
            the photos were larger than ``max_side`` (``None``: at full resolution). The
            homography is always expressed at full resolution; ``correlation`` and ``overlap``
            were measured on the copies.
    """

    method: str
    refine: str | None
    image_a: np.ndarray
    image_b: np.ndarray
    H_a_from_b: np.ndarray | None
    seconds: float
    reason: str | None = None
    path_a: str | None = None
    path_b: str | None = None
    checkpoint: str | None = None
    correlation: float | None = None
    overlap: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    matched_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None

    @property
    def failed(self) -> bool:
        return self.H_a_from_b is None

    @property
    def label(self) -> str:
        return f"{self.method}+{self.refine}" if self.refine else self.method

    @property
    def H_b_from_a(self) -> np.ndarray | None:
        if self.H_a_from_b is None:
            return None
        return normalize_homography(np.linalg.inv(self.H_a_from_b))

    @property
    def size_a(self) -> tuple[int, int]:
        return self.image_a.shape[1], self.image_a.shape[0]

    @property
    def size_b(self) -> tuple[int, int]:
        return self.image_b.shape[1], self.image_b.shape[0]

    def to_json(self) -> dict[str, Any]:
        """The contents of ``homography.json`` (only for a successful alignment)."""
        if self.H_a_from_b is None or (H_b_from_a := self.H_b_from_a) is None:
            raise ValueError(f"{self.label} failed ({self.reason}): there is no homography")
        out: dict[str, Any] = {
            "method": self.method,
            "refine": self.refine,
            "b_from_a": H_b_from_a.tolist(),
            "a_from_b": self.H_a_from_b.tolist(),
            "convention": CONVENTION,
            "image_a": self.path_a,
            "image_b": self.path_b,
            "size_a": list(self.size_a),
            "size_b": list(self.size_b),
            "seconds": self.seconds,
            "correlation": _finite_or_none(self.correlation),
            "overlap": self.overlap,
        }
        if self.matched_sizes is not None:
            out["matched_size_a"] = list(self.matched_sizes[0])
            out["matched_size_b"] = list(self.matched_sizes[1])
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        out["details"] = reportable(self.details)
        return out

    def summary(self) -> str:
        """One line: the method, its details, the correlation, the time."""
        parts = [self.label]
        if text := format_details(self.details):
            parts.append(text)
        if self.correlation is not None and math.isfinite(self.correlation):
            parts.append(f"correlation {self.correlation:.3f}")
        parts.append(f"{self.seconds:.2f} s")
        return ", ".join(parts)


def _finite_or_none(x: float | None) -> float | None:
    # JSON has no NaN: an unmeasurable correlation is null.
    return x if x is not None and math.isfinite(x) else None


def _spec(
    method: str | None,
    checkpoint: str | Path | None,
    refine: str | None,
    adapt: int | None = None,
) -> MethodSpec:
    """The spec of ``hdreg align``'s options, parsed by :mod:`hdreg.estimators.registry`.
    ``adapt`` (steps) puts ``+adapt`` in the chain, before ``+ecc`` when there is one."""
    if method is None and checkpoint is None:  # the default: the most accurate method measured
        checkpoint, refine = DEFAULT_CHECKPOINT, refine or DEFAULT_REFINE
    if method is None:
        method = "model"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: valid methods are {', '.join(METHODS)}")
    if method == "model":
        if checkpoint is None:
            raise ValueError("--method model needs --checkpoint FILE (a checkpoint from train.py)")
        spec = parse_checkpoint_spec(str(checkpoint))
    elif checkpoint is not None:
        raise ValueError(f"--checkpoint is only used with --method model, not with {method!r}")
    else:
        spec = parse_method_spec(method, method_names())
    if refine is not None:
        if refine not in REFINEMENTS:
            raise ValueError(
                f"unknown refinement {refine!r}: valid refinements are {', '.join(REFINEMENTS)}"
            )
        if spec.refine is None:
            spec = MethodSpec(spec.text, spec.method, spec.checkpoint, refine)
        elif refine not in spec.refine.split("+"):
            raise ValueError(f"{spec.text!r} already ends in +{spec.refine}; --refine {refine}")
    if adapt is not None:
        if isinstance(adapt, bool) or not isinstance(adapt, int) or adapt < 1:
            raise ValueError(f"--adapt must be a number of steps >= 1, got {adapt!r}")
        steps = spec.refine.split("+") if spec.refine else []
        if "adapt" not in steps:
            steps.insert(steps.index("ecc") if "ecc" in steps else len(steps), "adapt")
        spec = MethodSpec(spec.text, spec.method, spec.checkpoint, "+".join(steps))
    return spec


def make_estimator(
    method: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    refine: str | None = None,
    adapt: int | None = None,
    device: str = "auto",
    ratio: float | None = None,
    robust: str | None = None,
    reproj_threshold: float | None = None,
) -> tuple[str, Estimator]:
    """The method's name and its estimator, built from ``hdreg/configs/method/<name>.yaml``.

    ``method=None`` means ``"model"``: the given checkpoint, or with none the shipped ``wide``
    refined by ECC (:data:`DEFAULT_CHECKPOINT`, :data:`DEFAULT_REFINE`). ``refine``
    (or a checkpoint spec ending in ``+ecc``) wraps the estimator in the refinement, whose
    parameters come from ``hdreg/configs/method/ecc.yaml``. ``adapt`` (steps per level) adds
    the per-pair adaptation of :mod:`hdreg.estimators.adapt` before ECC (``hdreg/configs/method/
    adapt.yaml``; the adapted estimate is kept only if it lowers the photometric loss and does
    not lower the correlation). ``ratio``, ``robust`` and
    ``reproj_threshold`` override the keypoint methods' parameters (``None``: keep them). Raises
    ``ValueError`` for an unknown method or an option that does not apply, and
    ``FileNotFoundError`` for a missing checkpoint.
    """
    spec = _spec(method, checkpoint, refine, adapt)
    name = spec.method or "model"
    keypoint_options = {"ratio": ratio, "robust": robust, "reproj_threshold": reproj_threshold}
    given = {k: v for k, v in keypoint_options.items() if v is not None}
    if given and name not in KEYPOINT_METHODS:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(
            f"{flags} only apply to the keypoint methods ({', '.join(KEYPOINT_METHODS)}), "
            f"not to {name!r}"
        )
    from hdreg.estimators.base import ALIGN_MIN_CONFIDENCE

    estimator = build_estimator(
        spec, device=device, overrides=given, min_confidence=ALIGN_MIN_CONFIDENCE,
        refiner_overrides={"adapt": {"steps": adapt}} if adapt is not None else None,
    )  # fmt: skip
    return name, estimator


def align_images(
    image_a: np.ndarray,
    image_b: np.ndarray,
    estimator: Estimator,
    *,
    method: str | None = None,
    refine: str | None = None,
) -> AlignResult:
    """Estimate ``H_a_from_b`` for one pair of ``(H, W) uint8`` images with ``estimator`` (built
    by :func:`make_estimator`; ``method`` and ``refine`` only name it in the result)."""
    t0 = time.perf_counter()
    estimate = estimator.estimate([image_a], [image_b])
    seconds = time.perf_counter() - t0
    failed = bool(estimate.failed[0])
    result = AlignResult(
        method or estimator.name,
        refine,
        image_a,
        image_b,
        None if failed else normalize_homography(estimate.H_a_from_b[0]),
        seconds,
        (estimate.reasons[0] or "failed") if failed else None,
        details=estimate.details[0],
    )
    if result.H_a_from_b is not None:
        result.correlation, result.overlap = alignment_correlation(
            image_a, image_b, result.H_a_from_b
        )
    return result


def _downsized(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` resized (area) so that its longer side is ``max_side``, or itself if smaller."""
    h, w = image.shape
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _to_full_resolution(
    result: AlignResult, image_a: np.ndarray, image_b: np.ndarray
) -> AlignResult:
    """``result``, estimated on downsized copies, expressed for the full images ``image_a`` and
    ``image_b``: the homography rescaled (``cv2.resize``'s pixel-centre convention) and the
    keypoints moved to full-resolution pixels."""
    small_a, small_b = result.size_a, result.size_b
    full_a, full_b = (image_a.shape[1], image_a.shape[0]), (image_b.shape[1], image_b.shape[0])
    if result.H_a_from_b is not None:
        H = scale_matrix(small_a, full_a) @ result.H_a_from_b @ scale_matrix(full_b, small_b)
        result.H_a_from_b = normalize_homography(H)
    for key, small, full in (("keypoints_a", small_a, full_a), ("keypoints_b", small_b, full_b)):
        if key in result.details:
            ratio = np.asarray(full, np.float64) / np.asarray(small, np.float64)
            result.details[key] = (np.asarray(result.details[key]) + 0.5) * ratio - 0.5
    result.matched_sizes = (small_a, small_b)
    result.image_a, result.image_b = image_a, image_b
    return result


def align(
    path_a: str | Path,
    path_b: str | Path,
    *,
    method: str | None = None,
    checkpoint: str | Path | None = None,
    refine: str | None = None,
    adapt: int | None = None,
    device: str = "auto",
    ratio: float | None = None,
    robust: str | None = None,
    reproj_threshold: float | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> AlignResult:
    """Align image file ``path_b`` to image file ``path_a`` (see :func:`make_estimator` for the
    method options). Raises ``FileNotFoundError`` / ``ValueError`` for a missing or unreadable
    image or checkpoint and for invalid options; a method that finds no homography is not an
    error: the result is ``failed`` with a ``reason``.

    A photo whose longer side exceeds ``max_side`` pixels is estimated on a copy downsized to
    that side (keypoints, ECC and the model need no more, and full-resolution SIFT on a 48 MP
    photo takes gigabytes); the homography is rescaled to full resolution. ``max_side=0``
    always works at full resolution."""
    if max_side and max_side < MIN_MAX_SIDE:
        raise ValueError(
            f"--max-side must be 0 (full resolution) or at least {MIN_MAX_SIDE} px, got {max_side}"
        )
    spec = _spec(method, checkpoint, refine, adapt)
    if spec.checkpoint is not None and not spec.checkpoint.is_file():
        # Before decoding possibly large images: the cheapest error first.
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    image_a, image_b = load_gray(path_a), load_gray(path_b)
    name, estimator = make_estimator(
        method,
        checkpoint=checkpoint,
        refine=refine,
        adapt=adapt,
        device=device,
        ratio=ratio,
        robust=robust,
        reproj_threshold=reproj_threshold,
    )
    small_a, small_b = _downsized(image_a, max_side), _downsized(image_b, max_side)
    result = align_images(small_a, small_b, estimator, method=name, refine=spec.refine)
    if small_a is not image_a or small_b is not image_b:
        result = _to_full_resolution(result, image_a, image_b)
    result.path_a, result.path_b = str(path_a), str(path_b)
    result.checkpoint = None if spec.checkpoint is None else str(spec.checkpoint)
    return result


def _json_text(obj: dict[str, Any]) -> str:
    """``obj`` as indented JSON with each matrix row and size on one line (readable 3×3s)."""
    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
            rows = ",\n".join(f"    {json.dumps(r)}" for r in value)
            text = f"[\n{rows}\n  ]"
        else:
            text = json.dumps(value)
        lines.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def write_alignment(result: AlignResult, out_dir: str | Path) -> list[Path]:
    """Write the files that show ``result`` into ``out_dir`` (created); returns their paths.

    Success: ``homography.json``, ``b_warped_to_a.png`` (B in A's frame, A's size),
    ``overlay.png`` (:func:`hdreg.visualize.overlay_image`) and, for keypoint methods,
    ``matches.png``; files named in ``OUTPUT_FILES`` that this run does not write (a
    ``matches.png`` of an earlier keypoint run) are removed, so that the folder shows one result.
    Failure: nothing is removed. ``matches.png`` (keypoint methods) is written for diagnosis
    only into a folder that holds no earlier output (:func:`earlier_outputs`), so that a failed
    run never mixes with, or destroys, an earlier result.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} exists and is not a folder")
    if result.failed and earlier_outputs(out):
        return []
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if result.failed:
        banner = f"FAILED: {result.reason}"
    else:
        banner = f"{result.label}: {format_details(result.details)}"
    matches = matches_image(result.image_a, result.image_b, result.details, banner, result.failed)
    if matches is not None:
        _imwrite(out / "matches.png", matches)
        written.append(out / "matches.png")
    if not result.failed:
        warped, covered = warp_b_into_a(result.image_b, result.H_b_from_a, result.size_a)
        _imwrite(out / "b_warped_to_a.png", warped)
        _imwrite(out / "overlay.png", overlay_image(result.image_a, warped, covered))
        path = out / "homography.json"
        path.write_text(_json_text(result.to_json()))
        written += [out / "b_warped_to_a.png", out / "overlay.png", path]
    if not result.failed:
        for name in OUTPUT_FILES:
            if (stale := out / name) not in written and stale.is_file():
                stale.unlink()
    return written


def earlier_outputs(out_dir: str | Path) -> list[str]:
    """Names of ``OUTPUT_FILES`` already in ``out_dir`` (an earlier run's result)."""
    out = Path(out_dir)
    return [name for name in OUTPUT_FILES if (out / name).is_file()]
