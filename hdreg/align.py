"""Align two photos with any hdreg method: the logic behind ``hdreg align A B``.

:func:`align` reads two image files (any size, format or channel count, EXIF orientation
applied: :func:`hdreg.data.sources.load_gray`), estimates the homography with one method —
keypoints + robust fit (sift, orb, akaze, brisk) or ECC at full resolution, the identity, or a
trained model (resized to its input size, the homography rescaled to full resolution) —
optionally refines it with ECC (:class:`hdreg.baselines.RefinedEstimator`, which keeps the
refined estimate only when it does not lower the photometric agreement), and returns an
:class:`AlignResult`. :func:`write_alignment` writes the files that show the result.

Conventions (DESIGN.md): pixel coordinates ``(x, y)``, ``(0, 0)`` the centre of the top-left
pixel. ``H_b_from_a`` maps pixel coordinates of A into B (``p_b ~ H_b_from_a @ p_a``, the
direction of HPatches/Oxford ground truth when A is image 1); ``H_a_from_b`` is its inverse.
Sizes are ``(width, height)``.
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
import torch

from hdreg.baselines.features import DETECTORS
from hdreg.baselines.refine import REFINEMENTS, RefinedEstimator, alignment_correlation
from hdreg.config import method_estimator
from hdreg.data.sources import load_gray
from hdreg.estimators import (
    Estimator,
    PairwiseEstimator,
    normalized_homography,
)
from hdreg.geometry import rescale_homography

__all__ = [
    "KEYPOINT_METHODS",
    "METHODS",
    "OUTPUT_FILES",
    "AlignResult",
    "align",
    "align_images",
    "earlier_outputs",
    "make_estimator",
    "matches_image",
    "overlay_image",
    "warp_b_to_a",
    "write_alignment",
]

KEYPOINT_METHODS = tuple(sorted(DETECTORS))  # akaze, brisk, orb, sift
METHODS = ("identity", *KEYPOINT_METHODS, "ecc", "model")
# Everything write_alignment may write; files of an earlier run that this run does not write are
# removed, so that a folder never shows a stale homography next to a failed run.
OUTPUT_FILES = ("homography.json", "b_warped_to_a.png", "overlay.png", "matches.png")
# matches.png: panels wider than this are downscaled, and at most this many inlier lines are
# drawn (an evenly spread subset): beyond that the picture is a solid mesh.
MATCHES_MAX_WIDTH = 1600
# `hdreg align` estimates on copies whose longer side is at most this (--max-side; 0: never).
DEFAULT_MAX_SIDE = 2000
MIN_MAX_SIDE = 64
MATCHES_MAX_LINES = 200

CONVENTION = (
    "pixel coordinates (x, y), (0, 0) = centre of the top-left pixel; "
    "p_b ~ b_from_a @ p_a and p_a ~ a_from_b @ p_b; sizes are [width, height]"
)


@dataclass
class AlignResult:
    """The outcome of aligning image B to image A.

    Attributes:
        method: the method's name (``"sift"``, ``"model"``, …); ``label`` adds the refinement.
        refine: ``"ecc"`` or ``None``.
        image_a, image_b: the ``(H, W) uint8`` grayscale images that were aligned.
        H_a_from_b: ``(3, 3)`` float64 normalized so that ``H[2, 2] = 1`` (maps B into A), or
            ``None`` when the method failed (``reason`` says why).
        seconds: wall time of the estimation (and refinement), without reading the files or
            loading a model.
        path_a, path_b, checkpoint: where the inputs came from (``None`` when not from files).
        matches, inliers: keypoint methods: matches after the ratio test, inliers of the fit.
        correlation, overlap: of the final estimate: ZNCC between B and A warped onto B over
            the pixels of B that map inside A, and the fraction of B they cover
            (:func:`hdreg.baselines.refine.alignment_correlation`).
        refined: with ``refine``: whether ECC's estimate was kept; ``refine_note`` why not;
            ``refine_check`` the comparison that decided (``correlation_start``,
            ``correlation_refined``: ZNCC of the two estimates on the part of B inside A under
            both, ``common``; see :func:`hdreg.baselines.refine.compare_estimates`).
        details: the base method's extras (keypoints, matches, inliers, ECC levels); keypoints
            in full-resolution pixels.
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
    matches: int | None = None
    inliers: int | None = None
    correlation: float | None = None
    overlap: float | None = None
    refined: bool | None = None
    refine_note: str = ""
    refine_check: dict[str, float] = field(default_factory=dict)
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
        return normalized_homography(np.linalg.inv(self.H_a_from_b))

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
        if self.matches is not None:
            out["matches"] = self.matches
            out["inliers"] = self.inliers
        if self.refine:
            out["refined"] = self.refined
            out["refine_note"] = self.refine_note
            out["refine_check"] = {
                "correlation_start": _finite_or_none(self.refine_check.get("correlation_start")),
                "correlation_refined": _finite_or_none(
                    self.refine_check.get("correlation_refined")
                ),
                "common": self.refine_check.get("common"),
            }
        return out

    def summary(self) -> str:
        """One line: method, inliers/matches when relevant, refinement, time."""
        parts = [self.label]
        if self.matches is not None:
            parts.append(f"{self.inliers} inliers / {self.matches} matches")
        if self.refine:
            parts.append("ECC refinement kept" if self.refined else "ECC refinement not kept")
        if self.correlation is not None and math.isfinite(self.correlation):
            parts.append(f"correlation {self.correlation:.3f}")
        parts.append(f"{self.seconds:.2f} s")
        return ", ".join(parts)


def _finite_or_none(x: float | None) -> float | None:
    # JSON has no NaN: an unmeasurable correlation is null.
    return x if x is not None and math.isfinite(x) else None


def make_estimator(
    method: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    ratio: float | None = None,
    robust: str | None = None,
    reproj_threshold: float | None = None,
) -> tuple[str, Estimator]:
    """The method's name and its estimator, with the defaults of ``configs/method/<name>.yaml``.

    ``method=None`` means ``"model"`` when a checkpoint is given, else ``"sift"``. ``ratio``,
    ``robust`` and ``reproj_threshold`` override the keypoint methods' defaults (``None``: keep
    them). Raises ``ValueError`` for an unknown method or an option that does not apply, and
    ``FileNotFoundError`` for a missing checkpoint.
    """
    if method is None:
        method = "model" if checkpoint is not None else "sift"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: valid methods are {', '.join(METHODS)}")
    keypoint_options = {"ratio": ratio, "robust": robust, "reproj_threshold": reproj_threshold}
    given = [k for k, v in keypoint_options.items() if v is not None]
    if given and method not in KEYPOINT_METHODS:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(
            f"{flags} only apply to the keypoint methods ({', '.join(KEYPOINT_METHODS)}), "
            f"not to {method!r}"
        )
    if method == "model":
        if checkpoint is None:
            raise ValueError("--method model needs --checkpoint FILE (a checkpoint from train.py)")
        from hdreg.models.estimator import load_checkpoint_estimator

        return method, load_checkpoint_estimator(checkpoint, device=device)
    if checkpoint is not None:
        raise ValueError(f"--checkpoint is only used with --method model, not with {method!r}")
    options = {k: v for k, v in keypoint_options.items() if v is not None}
    return method, method_estimator(method, **options)


def align_images(
    image_a: np.ndarray,
    image_b: np.ndarray,
    estimator: Estimator,
    *,
    method: str | None = None,
    refine: str | None = None,
) -> AlignResult:
    """Estimate ``H_a_from_b`` for one pair of ``(H, W) uint8`` images with ``estimator``, then,
    with ``refine="ecc"``, refine it with the ECC of ``configs/method/ecc.yaml`` (kept only when it
    does not lower the photometric agreement; a failed refinement is not a failure)."""
    if refine is not None and refine not in REFINEMENTS:
        raise ValueError(
            f"unknown refinement {refine!r}: valid refinements are {', '.join(REFINEMENTS)}"
        )
    method = method or estimator.name
    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    if isinstance(estimator, PairwiseEstimator):
        # One pair at a time gives the details (matches, inliers) that the batch API drops.
        pair = estimator.run_pair(image_a, image_b)
        H_a_from_b, reason, details = pair.H_a_from_b, pair.reason, pair.details
    else:
        estimate = estimator.estimate([image_a], [image_b])
        failed = bool(estimate.failed[0])
        H_a_from_b = None if failed else estimate.H_a_from_b[0]
        reason = (estimate.reasons[0] or "failed") if failed else None
    result = AlignResult(method, refine, image_a, image_b, None, 0.0, reason, details=details)
    if "matches" in details:
        result.matches = len(details["matches"])
        result.inliers = int(np.count_nonzero(details["inliers"]))
    if H_a_from_b is not None:
        H_a_from_b = np.asarray(H_a_from_b, np.float64)
        if refine is not None:
            outcome = RefinedEstimator(estimator, method_estimator("ecc")).refine_pair(
                image_a, image_b, H_a_from_b
            )
            H_a_from_b = outcome.H_a_from_b
            result.refined = outcome.kept
            result.refine_note = outcome.note
            result.refine_check = {
                "correlation_start": outcome.correlation_start,
                "correlation_refined": outcome.correlation_refined,
                "common": outcome.common,
            }
        result.H_a_from_b = normalized_homography(H_a_from_b)
    result.seconds = time.perf_counter() - t0
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
        H = torch.from_numpy(result.H_a_from_b)[None]
        H = rescale_homography(H, small_a, full_a, small_b, full_b)[0].numpy()
        result.H_a_from_b = normalized_homography(H)
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
    if refine is not None and refine not in REFINEMENTS:
        raise ValueError(
            f"unknown refinement {refine!r}: valid refinements are {', '.join(REFINEMENTS)}"
        )
    if max_side and max_side < MIN_MAX_SIDE:
        raise ValueError(
            f"--max-side must be 0 (full resolution) or at least {MIN_MAX_SIDE} px, got {max_side}"
        )
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        # Before decoding possibly large images: the cheapest error first.
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    image_a, image_b = load_gray(path_a), load_gray(path_b)
    name, estimator = make_estimator(
        method,
        checkpoint=checkpoint,
        device=device,
        ratio=ratio,
        robust=robust,
        reproj_threshold=reproj_threshold,
    )
    small_a, small_b = _downsized(image_a, max_side), _downsized(image_b, max_side)
    result = align_images(small_a, small_b, estimator, method=name, refine=refine)
    if small_a is not image_a or small_b is not image_b:
        result = _to_full_resolution(result, image_a, image_b)
    result.path_a, result.path_b = str(path_a), str(path_b)
    result.checkpoint = None if checkpoint is None else str(checkpoint)
    return result


def _bgr(gray: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def warp_b_to_a(result: AlignResult) -> tuple[np.ndarray, np.ndarray]:
    """B resampled into A's frame (A's size, bilinear: ``B(H_b_from_a @ p_a)``) and the mask of
    A's pixels that B covers."""
    if result.H_a_from_b is None:
        raise ValueError(f"{result.label} failed ({result.reason}): there is no homography")
    # warpPerspective(src, M) samples src at M⁻¹ p: with M = H_a_from_b it samples B at
    # H_b_from_a @ p_a, which is B seen in A's frame.
    warped = cv2.warpPerspective(
        result.image_b, result.H_a_from_b, result.size_a, flags=cv2.INTER_LINEAR
    )
    full = np.full_like(result.image_b, 255)
    covered = cv2.warpPerspective(full, result.H_a_from_b, result.size_a, flags=cv2.INTER_LINEAR)
    return warped, covered == 255


def overlay_image(image_a: np.ndarray, warped_b: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """False-colour overlay ``(H_a, W_a, 3) uint8`` BGR: A in magenta (red + blue), warped B in
    green. Where the two agree the channels are equal and the picture is gray; an edge that is
    misaligned shows a green and a magenta fringe; where B does not cover A the picture is
    magenta. Warped B's gain and offset are first matched to A's over the covered region, so
    that a change of exposure between the photos tints nothing."""
    b = warped_b.astype(np.float64)
    if covered.any():
        a_in, b_in = image_a[covered].astype(np.float64), b[covered]
        gain = a_in.std() / b_in.std() if b_in.std() > 0 else 1.0
        b = (b - b_in.mean()) * gain + a_in.mean()
    b = np.where(covered, np.clip(b, 0, 255), 0).astype(np.uint8)
    return np.dstack([image_a, b, image_a])  # B, G, R channels


def matches_image(result: AlignResult) -> np.ndarray | None:
    """A and B side by side with the inlier matches drawn (green), ``(h, w, 3) uint8`` BGR;
    ``None`` for a method without keypoints. When the fit failed, the matches that passed the
    ratio test are drawn faint red instead, for diagnosis. Wide panels are downscaled to
    ``MATCHES_MAX_WIDTH`` and at most ``MATCHES_MAX_LINES`` lines are drawn."""
    d = result.details
    if "keypoints_a" not in d:
        return None
    (wa, ha), (wb, hb) = result.size_a, result.size_b
    gap = 8
    scale = min(1.0, MATCHES_MAX_WIDTH / (wa + gap + wb))
    size_a = (max(1, round(wa * scale)), max(1, round(ha * scale)))
    size_b = (max(1, round(wb * scale)), max(1, round(hb * scale)))
    canvas = np.full((max(size_a[1], size_b[1]), size_a[0] + gap + size_b[0], 3), 255, np.uint8)
    canvas[: size_a[1], : size_a[0]] = _bgr(
        cv2.resize(result.image_a, size_a, interpolation=cv2.INTER_AREA)
    )
    x0 = size_a[0] + gap
    canvas[: size_b[1], x0 : x0 + size_b[0]] = _bgr(
        cv2.resize(result.image_b, size_b, interpolation=cv2.INTER_AREA)
    )
    matches, inliers = d["matches"], d["inliers"]
    if result.failed:
        chosen, color, text = matches, (80, 80, 255), f"FAILED: {result.reason}"
    else:
        chosen, color = matches[inliers], (60, 200, 60)
        text = f"{result.label}: {len(chosen)} inliers of {len(matches)} matches"
    if len(chosen) > MATCHES_MAX_LINES:
        chosen = chosen[np.linspace(0, len(chosen) - 1, MATCHES_MAX_LINES).round().astype(int)]
        text += f" ({MATCHES_MAX_LINES} drawn)"
    # Pixel centre x maps to (x + 0.5) * s - 0.5 in a resized image (cv2.resize's convention).
    to_a = (d["keypoints_a"] + 0.5) * np.array(size_a) / (wa, ha) - 0.5
    to_b = (d["keypoints_b"] + 0.5) * np.array(size_b) / (wb, hb) - 0.5 + (x0, 0)
    layer = canvas.copy()
    shift = 4  # sub-pixel drawing at 1/16 px
    for ia, ib in chosen:
        pa = tuple(int(v) for v in np.round(to_a[ia] * (1 << shift)))
        pb = tuple(int(v) for v in np.round(to_b[ib] * (1 << shift)))
        cv2.line(layer, pa, pb, color, 1, cv2.LINE_AA, shift)
        cv2.circle(layer, pa, 2 << shift, color, 1, cv2.LINE_AA, shift)
        cv2.circle(layer, pb, 2 << shift, color, 1, cv2.LINE_AA, shift)
    alpha = 0.4 if result.failed else 0.85
    canvas = cv2.addWeighted(layer, alpha, canvas, 1 - alpha, 0)
    banner = np.full((28, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(
        banner, text[:160], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.vstack([banner, canvas])


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
    ``overlay.png`` (:func:`overlay_image`) and, for keypoint methods, ``matches.png``; files
    named in ``OUTPUT_FILES`` that this run does not write (a ``matches.png`` of an earlier
    keypoint run) are removed, so that the folder shows one result.
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
    if (matches := matches_image(result)) is not None:
        _imwrite(out / "matches.png", matches)
        written.append(out / "matches.png")
    if not result.failed:
        warped, covered = warp_b_to_a(result)
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
