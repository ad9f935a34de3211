"""Align two photos with any hdreg method: the logic behind ``hdreg align A B``.

:func:`align` reads two image files (any size, format or channel count, EXIF orientation
applied: :func:`hdreg.data.decoding.load_gray`), turns its options into a method spec and
resolves it (:func:`hdreg.estimators.registry.resolve`, the parameters of
``hdreg/configs/method/``), optionally refined (``refine="ecc"``:
:class:`hdreg.estimators.refinement.RefinedEstimator`, kept only when it does not lower the
photometric agreement), estimates the homography and returns an :class:`Alignment`: the
:class:`~hdreg.estimators.base.Result` and what only ``hdreg align`` shows.
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
    >>> alignment = align_images(a, b, resolve("ecc"), method="ecc")
    >>> np.round(alignment.H_b_from_a[:2, 2], 1).tolist()
    [-3.0, -2.0]
"""

from __future__ import annotations

import importlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hdreg.config import method_names
from hdreg.data.decoding import load_gray
from hdreg.estimators import Estimator, reportable
from hdreg.estimators.base import ALIGN_MIN_CONFIDENCE, Result
from hdreg.estimators.downsize import DEFAULT_MAX_SIDE, Downsized, check_max_side
from hdreg.estimators.features import DETECTORS
from hdreg.estimators.refinement import alignment_correlation
from hdreg.estimators.registry import (
    REFINEMENTS,
    MethodSpec,
    parse_checkpoint_spec,
    parse_method_spec,
    resolve,
)
from hdreg.files import atomic_write, file_sha256
from hdreg.geometry_np import normalize_homography, scale_matrix
from hdreg.visualize import format_details, matches_image, overlay_image, warp_b_into_a
from hdreg.weights import shipped_for_path

__all__ = [
    "KEYPOINT_METHODS",
    "METHODS",
    "OUTPUT_FILES",
    "RECORD_FILE",
    "Alignment",
    "align",
    "align_images",
    "check_out_dir",
    "earlier_outputs",
    "write_alignment",
]

KEYPOINT_METHODS = tuple(sorted(DETECTORS))  # akaze, brisk, orb, sift
#: what ``hdreg align A B`` runs without --method or --checkpoint: the shipped ``wide`` refined by
#: ECC, the most pairs under 3 px, the highest AUC@1 and the lowest MACE at the full range of
#: camera motion (zoom 0.25-4, any rotation) and at the default range, ahead of ``sift+ecc``,
#: which takes about a fifth of its time (docs/results.md, docs/evaluation.md)
DEFAULT_CHECKPOINT, DEFAULT_REFINE = "wide", "ecc"
#: the method configs (the registry, hdreg/configs/method/) and "model" for --checkpoint
METHODS = (*method_names(), "model")
# Everything write_alignment may write; files of an earlier run that this run does not write are
# removed (only those the earlier run wrote, by RECORD_FILE), so that a folder shows one result.
OUTPUT_FILES = ("homography.json", "b_warped_to_a.png", "overlay.png", "matches.png")
#: beside the outputs: the files the last run wrote and their SHA-256, so that a later run
#: removes only files hdreg wrote and nobody changed since
RECORD_FILE = ".hdreg-align.json"

CONVENTION = (
    "pixel coordinates (x, y), (0, 0) = centre of the top-left pixel; "
    "p_b ~ b_from_a @ p_a and p_a ~ a_from_b @ p_b; sizes are [width, height]"
)


@dataclass
class Alignment:
    """The outcome of aligning image B to image A: the estimator's :class:`Result` and what
    only ``hdreg align`` shows.

    Attributes:
        result: the homography, ``failed``/``reason``, the details (:mod:`hdreg.estimators`:
            ``matches``, ``inliers``, keypoints in full-resolution pixels, ``refine_kept``,
            ``refine_note``, …), ``method`` (``"sift"``, ``"model"``, …) and ``seconds`` (wall
            time of the estimation and refinement, without reading the files or loading a
            model).
        refine: the refinement asked for (``"ecc"``) or ``None``; ``label`` adds it to the name.
        image_a, image_b: the ``(H, W) uint8`` grayscale images that were aligned.
        path_a, path_b, checkpoint: where the inputs came from (``None`` when not from files).
        correlation, overlap: of the final estimate: ZNCC between B and A warped onto B over
            the pixels of B that map inside A, and the fraction of B they cover
            (:func:`hdreg.estimators.refinement.alignment_correlation`).
        matched_sizes: ``(size_a, size_b)`` of the downsized copies the estimation ran on when
            the photos were larger than ``max_side`` (``None``: at full resolution). The
            homography is always expressed at full resolution; ``correlation`` and ``overlap``
            were measured on the copies.
    """

    result: Result
    refine: str | None
    image_a: np.ndarray
    image_b: np.ndarray
    path_a: str | None = None
    path_b: str | None = None
    checkpoint: str | None = None
    correlation: float | None = None
    overlap: float | None = None
    matched_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def failed(self) -> bool:
        return self.result.failed

    @property
    def reason(self) -> str | None:
        """Why the method failed (``None`` when it did not)."""
        return (self.result.reason or "failed") if self.result.failed else None

    @property
    def details(self) -> dict[str, Any]:
        return self.result.details

    @property
    def seconds(self) -> float:
        return self.result.seconds

    @property
    def name(self) -> str:
        """The method as shown: a model by its checkpoint (``wide`` for the shipped file,
        ``best.ckpt`` for another), any other method by its name."""
        if self.method != "model" or not self.checkpoint:
            return self.method
        shipped = shipped_for_path(self.checkpoint)
        return shipped.name if shipped is not None else Path(self.checkpoint).name

    @property
    def label(self) -> str:
        return f"{self.name}+{self.refine}" if self.refine else self.name

    @property
    def H_a_from_b(self) -> np.ndarray | None:
        """``(3, 3)`` float64 with ``H[2, 2] = 1`` (maps B into A); ``None`` when failed."""
        return None if self.result.failed else self.result.a_from_b

    @property
    def H_b_from_a(self) -> np.ndarray | None:
        return None if self.result.failed else self.result.b_from_a

    @property
    def size_a(self) -> tuple[int, int]:
        return self.image_a.shape[1], self.image_a.shape[0]

    @property
    def size_b(self) -> tuple[int, int]:
        return self.image_b.shape[1], self.image_b.shape[0]

    def to_json(self) -> dict[str, Any]:
        """The contents of ``homography.json`` (only for a successful alignment)."""
        if self.failed:
            raise ValueError(f"{self.label} failed ({self.reason}): there is no homography")
        out: dict[str, Any] = {
            "method": self.method,
            "refine": self.refine,
            "b_from_a": self.result.b_from_a.tolist(),
            "a_from_b": self.result.a_from_b.tolist(),
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


def _keypoint_overrides(
    spec: MethodSpec,
    ratio: float | None = None,
    robust: str | None = None,
    reproj_threshold: float | None = None,
) -> dict[str, Any]:
    """The keypoint options given (``None``: keep the method config's), as constructor
    arguments for :func:`~hdreg.estimators.registry.resolve`; ``ValueError`` when any is given
    for a method that is not a keypoint method."""
    keypoint_options = {"ratio": ratio, "robust": robust, "reproj_threshold": reproj_threshold}
    given = {k: v for k, v in keypoint_options.items() if v is not None}
    name = spec.method or "model"
    if given and name not in KEYPOINT_METHODS:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(
            f"{flags} only apply to the keypoint methods ({', '.join(KEYPOINT_METHODS)}), "
            f"not to {name!r}"
        )
    return given


def align_images(
    image_a: np.ndarray,
    image_b: np.ndarray,
    estimator: Estimator,
    *,
    method: str | None = None,
    refine: str | None = None,
) -> Alignment:
    """Estimate ``H_a_from_b`` for one pair of ``(H, W) uint8`` images with ``estimator`` (from
    :func:`~hdreg.estimators.registry.resolve`; ``method`` and ``refine`` only name it in the
    result). Behind a :class:`~hdreg.estimators.downsize.Downsized` guard, ``correlation`` and
    ``overlap`` are measured on the copies the estimate was made on."""
    t0 = time.perf_counter()
    estimate = estimator.estimate([image_a], [image_b])
    seconds = time.perf_counter() - t0
    details = estimate.details[0]
    matched_sizes = None
    if "matched_size_a" in details:
        matched_sizes = (details.pop("matched_size_a"), details.pop("matched_size_b"))
    result = Result.from_estimate(estimate, 0, method or estimator.name)
    alignment = Alignment(
        replace(result, seconds=seconds), refine, image_a, image_b, matched_sizes=matched_sizes
    )
    if not alignment.failed:
        a, b, H_a_from_b = image_a, image_b, result.a_from_b
        if matched_sizes is not None and isinstance(estimator, Downsized):
            a, b = estimator.shrink(image_a), estimator.shrink(image_b)
            small_a, small_b = matched_sizes
            H_a_from_b = scale_matrix(alignment.size_a, small_a) @ H_a_from_b
            H_a_from_b = normalize_homography(H_a_from_b @ scale_matrix(small_b, alignment.size_b))
        alignment.correlation, alignment.overlap = alignment_correlation(a, b, H_a_from_b)
    return alignment


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
) -> Alignment:
    """Align image file ``path_b`` to image file ``path_a``.

    ``method=None`` means ``"model"`` with a checkpoint; with neither, the shipped ``wide``
    refined by ECC (:data:`DEFAULT_CHECKPOINT`, :data:`DEFAULT_REFINE`). ``refine`` (or a
    checkpoint spec ending in ``+ecc``) wraps the estimator in the refinement, whose parameters
    come from ``hdreg/configs/method/ecc.yaml``. ``adapt`` (steps per level) adds the per-pair
    adaptation of :mod:`hdreg.estimators.adapt` before ECC (``hdreg/configs/method/adapt.yaml``;
    the adapted estimate is kept only if it lowers the photometric loss and does not lower the
    correlation). ``ratio``, ``robust`` and ``reproj_threshold`` override the keypoint methods'
    parameters (``None``: keep them). The options make one spec (:func:`_spec`), which
    :func:`~hdreg.estimators.registry.resolve` turns into the estimator, the keypoint options
    and ``adapt`` as its overrides. Raises ``FileNotFoundError`` / ``ValueError`` for a missing
    or unreadable image or checkpoint and for invalid options; a method that finds no
    homography is not an error: the result is ``failed`` with a ``reason``.

    A photo whose longer side exceeds ``max_side`` pixels is estimated on a copy downsized to
    that side (:class:`~hdreg.estimators.downsize.Downsized`, as in :func:`hdreg.estimate`:
    keypoints, ECC and the model need no more, and full-resolution SIFT on a 48 MP photo takes
    gigabytes); the homography is rescaled to full resolution. ``max_side=0`` always works at
    full resolution."""
    max_side = check_max_side(max_side, option="--max-side")
    spec = _spec(method, checkpoint, refine, adapt)
    if spec.checkpoint is not None and not spec.checkpoint.is_file():
        # Before decoding possibly large images: the cheapest error first.
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    overrides = _keypoint_overrides(spec, ratio, robust, reproj_threshold)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # A model needs PyTorch, whose import takes about a second: it runs while the photos
        # are decoded (which releases the interpreter), not after.
        if spec.checkpoint is not None:
            pool.submit(importlib.import_module, "hdreg.estimators.learned")
        image_a, image_b = load_gray(path_a), load_gray(path_b)
    estimator = resolve(
        spec, device=device, max_side=max_side, min_confidence=ALIGN_MIN_CONFIDENCE,
        overrides=overrides,
        refiner_overrides={"adapt": {"steps": adapt}} if adapt is not None else None,
    )  # fmt: skip
    alignment = align_images(
        image_a, image_b, estimator, method=spec.method or "model", refine=spec.refine
    )
    alignment.path_a, alignment.path_b = str(path_a), str(path_b)
    alignment.checkpoint = None if spec.checkpoint is None else str(spec.checkpoint)
    return alignment


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
    # PNG's fastest compression: the same pixels, about a third less time on a 12 MP picture
    # and a file under 10 % larger
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if path.suffix.lower() == ".png" else []
    with atomic_write(path, durable=False) as tmp:  # the staging name keeps the extension
        if not cv2.imwrite(str(tmp), image, params):
            raise OSError(f"could not write {path}")


def _written_before(out: Path) -> dict[str, str]:
    """``{name: sha256}`` of the outputs the last run wrote into ``out`` (:data:`RECORD_FILE`)."""
    try:
        record = json.loads((out / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if k in OUTPUT_FILES and isinstance(v, str)}


def _remove_stale(out: Path, written: list[Path]) -> None:
    """Remove the outputs of the last run into ``out`` that this run did not write again, if
    hdreg wrote them and they are unchanged; then record what this run wrote."""
    for name, digest in _written_before(out).items():
        stale = out / name
        if stale not in written and stale.is_file() and file_sha256(stale) == digest:
            stale.unlink()
    record = {"written_by": "hdreg align", "files": {p.name: file_sha256(p) for p in written}}
    with atomic_write(out / RECORD_FILE, durable=False) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a folder path; ``ValueError`` for an empty one (it would mean the current
    folder), ``NotADirectoryError`` for a file."""
    if not str(out_dir).strip():
        raise ValueError("--out is empty: give the folder to write the alignment into")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} exists and is not a folder")
    return out


def write_alignment(result: Alignment, out_dir: str | Path) -> list[Path]:
    """Write the files that show ``result`` into ``out_dir`` (created); returns their paths.

    Success: ``homography.json``, ``b_warped_to_a.png`` (B in A's frame, A's size),
    ``overlay.png`` (:func:`hdreg.visualize.overlay_image`) and, for keypoint methods,
    ``matches.png``; the files of the previous run that this run does not write (a
    ``matches.png`` of an earlier keypoint run) are removed, so that the folder shows one result
    — only those hdreg wrote and nobody changed since (:data:`RECORD_FILE`): a file hdreg did not
    write is never deleted. Failure: nothing is removed. ``matches.png`` (keypoint methods) is
    written for diagnosis only into a folder that holds no earlier output
    (:func:`earlier_outputs`), so that a failed run never mixes with, or destroys, an earlier
    result. Each file is written whole (staged, then renamed). An empty ``out_dir`` is refused.
    """
    out = check_out_dir(out_dir)
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
        # the two pictures are encoded at once (OpenCV's encoder releases the GIL): on 12 MP
        # photos each takes about a quarter of a second
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_imwrite, out / "b_warped_to_a.png", warped)
            _imwrite(out / "overlay.png", overlay_image(result.image_a, warped, covered))
            pending.result()  # (raises what the writer raised)
        path = out / "homography.json"
        with atomic_write(path, durable=False) as tmp:
            tmp.write_text(_json_text(result.to_json()))
        written += [out / "b_warped_to_a.png", out / "overlay.png", path]
    if written:  # (a failed run writes only into a folder without earlier outputs)
        _remove_stale(out, written)
    return written


def earlier_outputs(out_dir: str | Path) -> list[str]:
    """Names of ``OUTPUT_FILES`` already in ``out_dir`` (an earlier run's result)."""
    out = Path(out_dir)
    return [name for name in OUTPUT_FILES if (out / name).is_file()]
