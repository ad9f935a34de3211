"""Whole-image, coarse-to-fine estimation with a learned network, at the photos' own resolution.

A network that takes ``P×P`` patches (P = 128) sees a whole photo at a fraction of its pixels,
and only the motion it was trained on. :class:`CoarseToFineEstimator` makes it an estimator for
two photos of any size and aspect ratio, and any rotation:

1. **Global stage.** Both photos are resized to ``P×P``. For each hypothesis ``G`` (a rotation
   and a zoom about the centre), A is resampled as ``A'(p) = A(G p)``, the network estimates
   ``H_a'_from_b``, and ``H_a_from_b = G · H_a'_from_b``; each result is scored by its
   *confidence* (below) and the best is kept. Which hypotheses: with a *proposal network*
   (``proposal_net``) its rotation × zoom classes, scored once per pair from learned features,
   and only the ``proposals`` likeliest are tried; without one — or when the proposals'
   estimate is under ``fallback_confidence`` — every ``rotations`` × ``zooms`` hypothesis, as one
   batch. A proposal network that places its classes as well
   (:class:`hdreg.models.scale_search.ScaleSpaceSearch`, ``gives_homographies``: a whole
   similarity per class, from a scale space of both photos) gives starts, not centred
   hypotheses: the photo that shows the shared content smaller is resampled into the other's
   ``P×P`` frame by each start from its own pixels (sharp, at the same scale as the other), and
   the network estimates what remains. (:class:`hdreg.models.similarity.SimilarityNet` scores
   classes about the centres.)
2. **Refinement levels.** At each level (B's longer side 256, 512, 1024, …, up to full
   resolution or ``max_side``) both photos are resized by the same factor, A is warped into B's
   frame by the current estimate, and the network estimates the residual on a grid of
   ``P×P`` windows taken at that level's own pixels (windows without texture are skipped).
   Each window's four corners give four correspondences; a robust fit of all of them
   (``cv2.findHomography``, RANSAC) is the residual ``R``, and ``H ← H · R`` — kept only if
   the correlation at that level does not drop and all of A stays in front of the horizon
   (:func:`keeps_a_in_front`). The final
   precision is thus set by the photos' pixels, not by the network's input size.
   With a *dense matcher* (``dense_net``, :class:`hdreg.models.dense_matcher.DenseMatcher`)
   the windows are replaced by matching every cell: the matcher's features of the whole
   warped A and B at the level (B's computed once per level), the match of each cell of B in
   the warped A read by a parabola, and the robust fit of the distinct matches (those whose
   softmax peaks over ``dense_min_peak``, where the warped A covers) is the residual. A level
   larger than ``dense_max_pixels`` (a photo of many megapixels at full resolution) is
   matched inside the ``P×P`` windows instead of whole.
   When the global estimate shows B zoomed out by more than ``swap_zoom`` (A's content small in
   B: few windows of B are covered by the warped A), the levels run on the swapped pair — B
   warped into A's frame, where the shared part fills the windows — and the result is inverted.
3. **Confidence.** The zero-mean normalised cross-correlation between band-passed B and A
   warped onto B over their overlap, at B's longer side ``score_side`` (invariant to gain and
   offset of either photo, blind to the smooth shading unrelated photos share), times the
   square root of the overlap's share of B. A pair whose confidence
   is under ``min_confidence`` — unrelated photos, a blank or textureless photo, motion beyond
   reach — is reported as failed with the reason, not as a confident wrong homography
   (:mod:`hdreg.estimators.confidence`).

Nothing here is hand-crafted matching: every correspondence comes from the network.
All homographies follow docs/conventions.md: ``H_a_from_b`` maps B's pixels into A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from hdreg.device import resolve_device
from hdreg.estimators.base import PairResult, PairwiseEstimator
from hdreg.estimators.confidence import (
    alignment_confidence,
    band_passed,
    blank_reason,
    judge_confidence,
    texture,
    zncc_masked,
)
from hdreg.geometry_np import (
    check_homography,
    coverage_mask,
    local_similarity,
    normalize_homography,
    rect_corners,
    scale_matrix,
    scale_size,
    scaled_size,
)
from hdreg.images import resize_area, size_of
from hdreg.models.homographynet import standardize

__all__ = ["CoarseToFineEstimator", "keeps_a_in_front", "letterbox", "scale_matrix"]


#: robust fits of the residual: OpenCV's RANSAC, or MAGSAC++ (USAC)
_ROBUST = {"ransac": cv2.RANSAC, "magsac": cv2.USAC_MAGSAC}


def _centre_transform(size: int, angle_deg: float, zoom: float) -> np.ndarray:
    """``G`` (3×3) rotating by ``angle_deg`` and scaling by ``zoom`` about the centre of a
    ``size×size`` image: ``A'(p) = A(G p)`` shows A rotated by −angle, zoomed out by ``zoom``."""
    c = (size - 1) / 2.0
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    scale = np.diag([zoom, zoom, 1.0])
    shift = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    return shift @ rot @ scale @ np.linalg.inv(shift)


def keeps_a_in_front(H_a_from_b: np.ndarray, size_a: tuple[int, int], ratio: float = 0.25) -> bool:
    """Whether ``H_b_from_a`` keeps all of image A in front of the horizon: the projective depth
    ``w`` of each of A's corners is at least ``ratio`` times that of A's centre (same sign).

    A residual fitted on the part of A that B shows constrains the perspective terms only
    there; a fit that sends a corner of A towards the horizon (thousands of pixels away) is not
    a plausible photo pair, and a refinement level that produces one is not kept.
    """
    try:
        b_from_a = np.linalg.inv(H_a_from_b)
    except np.linalg.LinAlgError:
        return False
    w, h = size_a
    points = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1.0]])
    depth = points @ b_from_a[2]
    centre = float(np.array([(w - 1) / 2, (h - 1) / 2, 1.0]) @ b_from_a[2])
    return bool(centre != 0 and np.all(depth / centre >= ratio))


def letterbox(image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` shown whole on an ``n×n`` square at its own aspect ratio (its longer side
    ``n``, centred, the rest its mean gray): the square, the ``(n, n)`` float32 mask of the
    pixels that show the photo, and ``photo_from_square`` (3×3)."""
    size = scaled_size(size_of(image), n)
    x0, y0 = (n - size[0]) // 2, (n - size[1]) // 2
    square = np.full((n, n), round(float(image.mean())), np.uint8)
    square[y0 : y0 + size[1], x0 : x0 + size[0]] = resize_area(image, size)
    valid = np.zeros((n, n), np.float32)
    valid[y0 : y0 + size[1], x0 : x0 + size[0]] = 1.0
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return square, valid, scale_matrix(size, size_of(image)) @ shift


def _centre(size: tuple[int, int]) -> tuple[float, float]:
    return (size[0] - 1) / 2, (size[1] - 1) / 2


@dataclass
class _Pair:
    """Per-pair state: the photos, their sizes, and the running ``H_a_from_b`` (full res)."""

    a: np.ndarray
    b: np.ndarray
    H: np.ndarray
    details: dict[str, Any]
    features_b: dict[Any, torch.Tensor] = field(default_factory=dict)  # the dense matcher's


_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


@dataclass
class _Level:
    """One refinement level of a pair: both photos resized by the factor that gives B's longer
    side ``side`` (``S_a``, ``S_b``: full resolution → level), the current estimate at this
    level ``H`` (``a_level_from_b_level``), A warped into B's level frame and where it covers."""

    a: np.ndarray
    b: np.ndarray
    S_a: np.ndarray
    S_b: np.ndarray
    H: np.ndarray
    warped: np.ndarray
    inside: np.ndarray

    @classmethod
    def of(cls, pair: _Pair, side: int) -> _Level:
        f = side / max(size_of(pair.b))
        size_a, size_b = scale_size(size_of(pair.a), f), scale_size(size_of(pair.b), f)
        a, b = resize_area(pair.a, size_a), resize_area(pair.b, size_b)
        S_a, S_b = scale_matrix(size_of(pair.a), size_a), scale_matrix(size_of(pair.b), size_b)
        H = S_a @ pair.H @ np.linalg.inv(S_b)
        warped = cv2.warpPerspective(a, H, size_b, flags=_WARP)
        return cls(a, b, S_a, S_b, H, warped, coverage_mask(H, size_a, size_b))


class CoarseToFineEstimator(PairwiseEstimator):
    """A patch network as a whole-image estimator (see the module docstring).

    Args:
        global_net: network of the global stage (``forward(patch_a, patch_b)`` → dict with
            ``offsets (B, 4, 2)``; attribute ``patch_size``), trained on wide motion.
        refine_net: network of the refinement levels (default: ``global_net``).
        name: name in evaluation tables.
        rotations: hypotheses of the global stage, in degrees.
        zooms: zoom hypotheses of the global stage (``2``: one pixel of B spans two of A, B is
            zoomed out ×0.5).
        levels: B's longer side at each refinement level, coarse to fine; levels beyond
            ``max_side`` (or the photo's own size) are replaced by one level at that size.
        max_side: finest resolution used (B's longer side); ``None``: full resolution.
        grid: windows per side at each refinement level (``grid²`` windows, overlapping).
        final_passes: refinement passes at the finest level (each starts from the last; one
            that kept no residual ends them, as the next would repeat it exactly).
        refine_iterations: ``(coarse, fine)`` iterations of an iterative refinement network
            (default: as trained).
        min_coverage: share of a window that the warped A must cover for it to be used.
        min_texture: windows (and photos) with a mean gradient under this many gray levels
            per pixel carry no information and are skipped (a photo: failed).
        min_confidence: pairs with a confidence under this are reported as failed.
        ransac_threshold: inlier threshold of the residual fit, in pixels of the level.
        robust: the residual fit, ``"ransac"`` or ``"magsac"`` (MAGSAC++).
        window_points: where each window's estimate is sampled, as fractions of its side on
            both axes (a grid of ``len²`` points; interior points extrapolate less).
        score_side: resolution of the confidence (B's longer side).
        global_stage: ``"hypotheses"`` (the network on the whole photos, one batch over the
            rotation × zoom hypotheses, the best by confidence) or ``"dense"`` (the global
            network's coarse encoder as a dense matcher: mutual nearest neighbours of its
            features on both photos at ``dense_side``, then MAGSAC++, per rotation hypothesis;
            the fit with the most inliers). ``"dense"`` needs an iterative network.
        dense_side: B's longer side for the dense matcher.
        proposal_net: a network that scores rotation × zoom classes of the pair once
            (:class:`hdreg.models.similarity.SimilarityNet`, about the centres; or
            :class:`hdreg.models.scale_search.ScaleSpaceSearch`, each class placed): the global
            stage then tries only its ``proposals`` likeliest classes (``rotations`` × ``zooms``
            become the fallback).
        proposals: how many of the proposal network's classes the global stage tries.
        fallback_confidence: with a proposal network, when the best proposal's estimate has a
            confidence (band-passed, as the final one) under this, the proposals are dropped and
            the global stage tries every ``rotations`` × ``zooms`` hypothesis instead, as
            without a proposal network (``None``: never).
        dense_net: a dense matcher (:class:`hdreg.models.dense_matcher.DenseMatcher`): the
            refinement levels match every cell with it instead of asking ``refine_net`` about
            windows (see the module docstring); ``None``: windows.
        dense_min_peak: a cell's match is used when its softmax peaks over this.
        dense_max_points: at most this many matches per level (the most distinct) are fitted.
        dense_max_pixels: a level with more pixels in B is matched inside the ``P×P`` windows
            of the ``grid`` (textured, covered) instead of whole.
        swap_zoom: when the global estimate shows B zoomed out by more than this factor (one
            pixel of B spans more than ``swap_zoom`` pixels of A), the refinement levels run on
            the swapped pair (B warped into A's frame, where the shared part is large), and the
            result is inverted back (``None``: never swap).
        device: where the networks run.
    """

    def __init__(
        self,
        global_net: torch.nn.Module,
        refine_net: torch.nn.Module | None = None,
        *,
        name: str = "wide",
        rotations: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
        zooms: Sequence[float] = (1.0,),
        levels: Sequence[int] = (256, 512, 1024),
        max_side: int | None = None,
        grid: int = 4,
        final_passes: int = 1,
        refine_iterations: Sequence[int] | None = None,
        min_coverage: float = 0.8,
        min_texture: float = 1.0,
        min_confidence: float = 0.2,
        ransac_threshold: float = 3.0,
        robust: str = "ransac",
        window_points: Sequence[float] = (0.2, 0.5, 0.8),
        score_side: int = 256,
        global_stage: str = "hypotheses",
        dense_side: int = 256,
        proposal_net: torch.nn.Module | None = None,
        proposals: int = 3,
        fallback_confidence: float | None = None,
        swap_zoom: float | None = None,
        dense_net: torch.nn.Module | None = None,
        dense_min_peak: float = 0.3,
        dense_max_points: int = 3000,
        dense_max_pixels: int = 1_500_000,
        device: str | torch.device = "cpu",
    ) -> None:
        if not rotations or not zooms:
            raise ValueError("rotations and zooms need at least one hypothesis each")
        if any(z <= 0 for z in zooms):
            raise ValueError(f"zooms must be positive, got {list(zooms)}")
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels (or None), got {max_side}")
        self.device = resolve_device(device)
        self.global_net = global_net.to(self.device).eval()
        self.refine_net = (refine_net or global_net).to(self.device).eval()
        self.patch = int(self.global_net.patch_size)
        if int(self.refine_net.patch_size) != self.patch:
            raise ValueError("the global and refinement networks must take the same patch size")
        self.name = name
        self.hypotheses = [(float(r), float(z)) for r in rotations for z in zooms]
        self.levels = sorted(int(s) for s in levels)
        self.max_side = max_side
        self.grid = int(grid)
        if final_passes < 1:
            raise ValueError(f"final_passes must be >= 1, got {final_passes}")
        self.final_passes = int(final_passes)
        self.refine_iterations: dict[str, int] = {}
        if refine_iterations is not None:  # (coarse, fine) iterations of an iterative network
            coarse, fine = (int(v) for v in refine_iterations)
            self.refine_iterations = {"iterations": coarse, "fine_iterations": fine}
        self.min_coverage = float(min_coverage)
        self.min_texture = float(min_texture)
        self.min_confidence = float(min_confidence)
        self.ransac_threshold = float(ransac_threshold)
        if robust not in _ROBUST:
            raise ValueError(f"robust must be one of {', '.join(_ROBUST)}, got {robust!r}")
        self.robust = robust
        self.window_points = tuple(float(v) for v in window_points)
        self.score_side = int(score_side)
        if global_stage not in ("hypotheses", "dense"):
            raise ValueError(f"global_stage must be 'hypotheses' or 'dense', got {global_stage!r}")
        if global_stage == "dense" and not hasattr(self.global_net, "coarse"):
            raise ValueError("global_stage='dense' needs an iterative network (its coarse encoder)")
        self.global_stage = global_stage
        self.dense_side = int(dense_side)
        self.proposal_net = None if proposal_net is None else proposal_net.to(self.device).eval()
        if self.proposal_net is not None and global_stage != "hypotheses":
            raise ValueError("a proposal network needs global_stage='hypotheses'")
        #: the proposal network's classes (``[]`` without one)
        self.classes = (
            []
            if self.proposal_net is None
            else [(float(r), float(z)) for r, z in self.proposal_net.hypotheses()]
        )
        if proposals < 1:
            raise ValueError(f"proposals must be >= 1, got {proposals}")
        self.proposals = int(proposals)
        self.fallback_confidence = (
            None if fallback_confidence is None else float(fallback_confidence)
        )
        if swap_zoom is not None and not swap_zoom >= 1:
            raise ValueError(f"swap_zoom must be >= 1 (or None), got {swap_zoom}")
        self.swap_zoom = None if swap_zoom is None else float(swap_zoom)
        self.dense_net = None if dense_net is None else dense_net.to(self.device).eval()
        if not 0 <= dense_min_peak < 1:
            raise ValueError(f"dense_min_peak must be in [0, 1), got {dense_min_peak}")
        if dense_max_points < 8 or dense_max_pixels < self.patch**2:
            raise ValueError(
                f"dense_max_points must be >= 8 and dense_max_pixels >= {self.patch**2}, got "
                f"{dense_max_points} and {dense_max_pixels}"
            )
        self.dense_min_peak = float(dense_min_peak)
        self.dense_max_points = int(dense_max_points)
        self.dense_max_pixels = int(dense_max_pixels)

    def __repr__(self) -> str:
        return f"CoarseToFineEstimator(name={self.name!r}, levels={self.levels})"

    # -- the network on batches of P×P patches -------------------------------------------------
    @torch.inference_mode()
    def _offsets(
        self, net: torch.nn.Module, a: np.ndarray, b: np.ndarray, **kwargs: Any
    ) -> np.ndarray:
        """``(N, 4, 2)`` float64 offsets for ``(N, P, P)`` uint8 patch stacks."""
        ta = torch.from_numpy(a)[:, None].to(self.device).float().div_(255.0)
        tb = torch.from_numpy(b)[:, None].to(self.device).float().div_(255.0)
        return net(ta, tb, **kwargs)["offsets"].float().cpu().double().numpy()

    def _corners(self) -> np.ndarray:
        return rect_corners((self.patch, self.patch))

    def _patch_homography(self, offsets: np.ndarray) -> np.ndarray | None:
        """``H_a_from_b`` of one patch pair from its offsets (``None`` if degenerate)."""
        # OpenCV's solve of the four-point system, not geometry_np.four_point_homography: the
        # two LU solves differ in the last bits, which moves RANSAC's inlier set on some pairs,
        # and the measured numbers of the shipped wide (docs/results.md) come from this one
        c = self._corners().astype(np.float32)
        H = cv2.getPerspectiveTransform(c, (c + offsets).astype(np.float32))
        return None if check_homography(H) else H

    # -- stages ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _proposal_order(self, a: np.ndarray, b: np.ndarray) -> list[int]:
        """Indices of ``self.classes``, likeliest first, by the proposal network (one pass on
        the ``P×P`` photos)."""
        ta = torch.from_numpy(a)[None, None].to(self.device).float().div_(255.0)
        tb = torch.from_numpy(b)[None, None].to(self.device).float().div_(255.0)
        logits = self.proposal_net(ta, tb)["logits"][0].float().cpu()
        return torch.argsort(logits, descending=True).tolist()

    def _try_hypotheses(
        self, pair: _Pair, a: np.ndarray, b: np.ndarray, hypotheses: Sequence[tuple[float, float]]
    ) -> tuple[list[float], tuple | None]:
        """The global network on the ``P×P`` photos under each ``(rotation, zoom)`` hypothesis,
        A resampled as ``A'(p) = A(G p)`` (:meth:`_best_of`: each result's confidence and the
        best)."""
        p = self.patch
        Gs = [_centre_transform(p, r, z) for r, z in hypotheses]
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        stack_a = np.stack(
            [cv2.warpPerspective(a, G, (p, p), flags=flags, borderMode=cv2.BORDER_REFLECT)
             for G in Gs]
        )  # fmt: skip
        to_full = scale_matrix((p, p), size_of(pair.a))
        from_full = scale_matrix(size_of(pair.b), (p, p))
        frames = [(to_full @ G, from_full) for G in Gs]
        return self._best_of(pair, stack_a, np.repeat(b[None], len(Gs), 0), frames, hypotheses)

    def _best_of(
        self,
        pair: _Pair,
        stack_a: np.ndarray,
        stack_b: np.ndarray,
        frames: Sequence[tuple[np.ndarray, np.ndarray]],
        labels: Sequence[tuple[float, float]],
    ) -> tuple[list[float], tuple | None]:
        """The global network on the ``(N, P, P)`` view stacks (one batch); each view pair's
        ``H_a_from_b = left · H_patch · right`` (its ``frames``), scored by its confidence (raw
        intensities: forgiving of the few pixels a global estimate is off by; ``-1`` for a
        degenerate one); and the best ``(confidence, H_a_from_b, rotation, zoom)`` with its
        ``(rotation, zoom)`` label (``None`` if all are degenerate)."""
        offsets = self._offsets(self.global_net, stack_a, stack_b)
        scores, best = [], None
        for (left, right), label, off in zip(frames, labels, offsets, strict=True):
            H_patch = self._patch_homography(off)
            if H_patch is None:
                scores.append(-1.0)
                continue
            H = normalize_homography(left @ H_patch @ right)
            conf = alignment_confidence(pair.a, pair.b, H, self.score_side, band_pass=None)[0]
            scores.append(conf)
            if best is None or conf > best[0]:
                best = (conf, H, *label)
        return scores, best

    @torch.inference_mode()
    def _search(self, pair: _Pair) -> tuple[list[int], np.ndarray]:
        """The search network's classes, likeliest first, and each class's ``H_a_from_b``
        ``(K, 3, 3)`` in full-resolution pixels (one pass on square thumbnails that show each
        photo at its own aspect ratio: :func:`letterbox`)."""
        n = int(self.proposal_net.input_size)
        (a, valid_a, photo_a), (b, valid_b, photo_b) = letterbox(pair.a, n), letterbox(pair.b, n)
        tensor = lambda x: torch.from_numpy(x)[None, None].to(self.device).float()  # noqa: E731
        out = self.proposal_net(
            tensor(a) / 255.0, tensor(b) / 255.0, tensor(valid_a), tensor(valid_b)
        )
        order = torch.argsort(out["scores"].float().cpu(), descending=True).tolist()
        H = out["H_a_from_b"].cpu().double().numpy()
        return order, photo_a @ H @ np.linalg.inv(photo_b)

    def _render(self, image: np.ndarray, K: np.ndarray) -> np.ndarray:
        """``image`` resampled into a ``P×P`` view, ``view(q) = image(K q)``, from the pyramid
        level of ``image`` where one view pixel spans about one pixel (sharp where the view
        magnifies, not aliased where it minifies)."""
        p = self.patch
        spread = local_similarity(K, ((p - 1) / 2, (p - 1) / 2))[0]
        if spread > 1.0:
            size = scale_size(size_of(image), 1.0 / spread, min_side=8)
            K = scale_matrix(size_of(image), size) @ K
            image = resize_area(image, size)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpPerspective(image, K, (p, p), flags=flags, borderMode=cv2.BORDER_REFLECT)

    def _try_homographies(
        self, pair: _Pair, a: np.ndarray, b: np.ndarray, starts: np.ndarray
    ) -> tuple[list[float], tuple | None]:
        """The global network from each start ``H_a_from_b`` (full resolution; ``a``, ``b`` the
        ``P×P`` photos), in one batch: the photo that shows the shared content smaller is
        resampled into the other's ``P×P`` frame by the start, from its own pixels, and the
        network estimates what remains (:meth:`_best_of`: each result's confidence and the best,
        labelled by its start's rotation and zoom)."""
        p = self.patch
        to_a, from_b = scale_matrix((p, p), size_of(pair.a)), scale_matrix(size_of(pair.b), (p, p))
        stack_a, stack_b, frames, labels = [], [], [], []
        for H0 in starts:
            zoom, angle = local_similarity(H0, _centre(size_of(pair.b)))
            labels.append((angle, zoom))
            if zoom >= 1:  # B zoomed out: B into A's frame, K: a_p -> b
                K = np.linalg.inv(H0) @ to_a
                view_a, view_b, frame = a, self._render(pair.b, K), (to_a, np.linalg.inv(K))
            else:  # B zoomed in: A into B's frame, K: b_p -> a
                K = H0 @ np.linalg.inv(from_b)
                view_a, view_b, frame = self._render(pair.a, K), b, (K, from_b)
            stack_a.append(view_a)
            stack_b.append(view_b)
            frames.append(frame)
        return self._best_of(pair, np.stack(stack_a), np.stack(stack_b), frames, labels)

    def _global(self, pair: _Pair) -> None:
        p = self.patch
        a, b = resize_area(pair.a, (p, p)), resize_area(pair.b, (p, p))
        best = None
        if self.proposal_net is not None:
            if getattr(self.proposal_net, "gives_homographies", False):
                order, starts = self._search(pair)
                order = order[: self.proposals]
                tried, best = self._try_homographies(pair, a, b, starts[order])
            else:
                order = self._proposal_order(a, b)[: self.proposals]
                tried, best = self._try_hypotheses(pair, a, b, [self.classes[i] for i in order])
            scores = np.full(len(self.classes), np.nan)
            scores[order] = tried
            pair.details["proposal_scores"] = scores
            floor = self.fallback_confidence
            # judged as the final answer is (band-passed): proposals whose estimate would fail
            # the pair are dropped, and the rotation × zoom hypotheses are all tried instead
            if floor is not None and best is not None:
                confidence = alignment_confidence(pair.a, pair.b, best[1], self.score_side)[0]
                pair.details["confidence_global"] = confidence  # of the estimate kept, if kept
            if floor is not None and (best is None or confidence < floor):
                best = None
                pair.details["global_fallback"] = True
                pair.details.pop("confidence_global", None)
        if self.proposal_net is None or pair.details.get("global_fallback"):
            scores_all, best = self._try_hypotheses(pair, a, b, self.hypotheses)
            pair.details["hypothesis_scores"] = np.array(scores_all)
        if best is not None:
            pair.H = best[1]
            pair.details.update(hypothesis_rotation=best[2], hypothesis_zoom=best[3])

    @torch.inference_mode()
    def _dense_features(self, images: np.ndarray) -> tuple[torch.Tensor, int]:
        """L2-normalised coarse-encoder features ``(N, D, h, w)`` of ``(N, H, W)`` uint8 images
        (each standardised as the network standardises its inputs) and the encoder's stride."""
        encoder = self.global_net.coarse.encoder
        x = torch.from_numpy(images)[:, None].to(self.device).float().div_(255.0)
        x = standardize(x)
        return torch.nn.functional.normalize(encoder(x), dim=1), int(encoder.stride)

    def _global_dense(self, pair: _Pair) -> None:
        """The global stage as dense matching (see ``global_stage``): per rotation hypothesis,
        mutual nearest neighbours between the features of B and of the rotated A, MAGSAC++."""
        f = self.dense_side / max(size_of(pair.b))
        size_b = scale_size(size_of(pair.b), f, min_side=32)
        b = resize_area(pair.b, size_b)
        # A at B's scale (smaller if it would not fit), centred on a square canvas of B's longer
        # side, rotated about the canvas centre by each hypothesis
        side = max(size_b)
        fa = min(f, side / pair.a.shape[1], side / pair.a.shape[0])
        a = resize_area(pair.a, scale_size(size_of(pair.a), fa, min_side=8))
        ya, xa = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
        canvas_a = np.zeros((side, side), np.uint8)
        canvas_a[ya : ya + a.shape[0], xa : xa + a.shape[1]] = a
        canvas_from_a = np.array([[1.0, 0, xa], [0, 1, ya], [0, 0, 1]]) @ scale_matrix(
            size_of(pair.a), size_of(a)
        )
        inside = np.zeros((side, side), np.uint8)
        inside[ya : ya + a.shape[0], xa : xa + a.shape[1]] = 1
        rotations = sorted({r for r, _ in self.hypotheses})
        Gs = [_centre_transform(side, r, 1.0) for r in rotations]
        inv = cv2.WARP_INVERSE_MAP
        warp = lambda im, G, interp: cv2.warpPerspective(im, G, (side, side), flags=interp | inv)  # noqa: E731
        stack_a = np.stack([warp(canvas_a, G, cv2.INTER_LINEAR) for G in Gs])
        stack_in = np.stack([warp(inside, G, cv2.INTER_NEAREST) for G in Gs], -1).astype(np.float32)
        feats_a, stride = self._dense_features(stack_a)
        feats_b, _ = self._dense_features(b[None])
        fb = feats_b[0].flatten(1)  # (D, n_b)
        hb, wb = feats_b.shape[2:]
        ha, wa = feats_a.shape[2:]
        cells_b = np.stack(np.meshgrid(np.arange(wb), np.arange(hb)), -1).reshape(-1, 2)
        cells_a = np.stack(np.meshgrid(np.arange(wa), np.arange(ha)), -1).reshape(-1, 2)
        to_px = lambda cells: (cells + 0.5) * stride - 0.5  # noqa: E731 (cell centre, pixels)
        valid_a = cv2.resize(stack_in, (wa, ha), interpolation=cv2.INTER_AREA)
        valid_a = valid_a.reshape(ha * wa, -1) > 0.99  # cells of the rotated A inside A
        b_full_from_b = scale_matrix(size_b, size_of(pair.b))
        best, counts = None, []
        for k, (r, G) in enumerate(zip(rotations, Gs, strict=True)):
            sim = fb.T @ feats_a[k].flatten(1)  # (n_b, n_a)
            sim[:, ~torch.from_numpy(valid_a[:, k])] = -2.0
            nn_ab = sim.argmax(dim=1)
            nn_ba = sim.argmax(dim=0)
            mutual = (nn_ba[nn_ab] == torch.arange(len(nn_ab))).numpy()
            mutual &= valid_a[nn_ab.numpy(), k]
            idx_b = np.flatnonzero(mutual)
            if len(idx_b) < 8:
                counts.append(0)
                continue
            pts_b = to_px(cells_b[idx_b]).astype(np.float64)
            pts_a = to_px(cells_a[nn_ab.numpy()[idx_b]]).astype(np.float64)
            H, mask = cv2.findHomography(pts_b, pts_a, cv2.USAC_MAGSAC, 1.0 * stride, maxIters=2000,
                                         confidence=0.999)  # fmt: skip
            n = 0 if H is None or mask is None else int(mask.sum())
            counts.append(n)
            if H is None or n < 8 or check_homography(H):
                continue
            # a_full <- canvas <- rotated canvas <- b level <- b full
            H_full = normalize_homography(
                np.linalg.inv(canvas_from_a) @ G @ H @ np.linalg.inv(b_full_from_b)
            )
            if best is None or n > best[0]:
                best = (n, H_full, r)
        if best is not None:
            pair.H = best[1]
            pair.details.update(hypothesis_rotation=best[2], hypothesis_zoom=1.0)
        pair.details["dense_inliers"] = np.array(counts)

    def _level_sides(self, size_b: tuple[int, int]) -> list[int]:
        full = max(size_b)
        top = min(full, self.max_side) if self.max_side else full
        sides = [s for s in self.levels if s < top]
        return [*sides, *[top] * self.final_passes]

    def _windows(
        self, warped: np.ndarray, b: np.ndarray, inside: np.ndarray
    ) -> list[tuple[int, int]]:
        """Top-left corners of the ``P×P`` windows of B worth asking the network about: on
        :meth:`_lattice`, mostly covered by the warped A, textured in both."""
        p = self.patch
        xs, ys = self._lattice(b.shape, inside)
        out = []
        for y0 in ys:
            for x0 in xs:
                if inside[y0 : y0 + p, x0 : x0 + p].mean() < self.min_coverage:
                    continue
                win_a, win_b = warped[y0 : y0 + p, x0 : x0 + p], b[y0 : y0 + p, x0 : x0 + p]
                if min(texture(win_a), texture(win_b)) >= self.min_texture:
                    out.append((int(x0), int(y0)))
        return out

    def _lattice(self, shape: tuple[int, int], inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left and top edges of the ``grid×grid`` candidate windows, spread over an image of
        ``shape`` (``inside``: where the warped A covers it, for lattices that follow it)."""
        p, (h, w) = self.patch, shape
        xs = np.unique(np.linspace(0, w - p, self.grid).round().astype(int))
        ys = np.unique(np.linspace(0, h - p, self.grid).round().astype(int))
        return xs, ys

    def _refine_level(self, pair: _Pair, side: int) -> bool:
        """One refinement level at B's longer side ``side`` (see the module docstring): the
        residual of the current estimate (:meth:`_residual`), kept only if it does not lower
        the correlation at this level (:meth:`_keeps`). ``level_windows`` records how many
        windows gave it, or with a dense matcher how many matches were its inliers (negative:
        estimated, not kept; 0: none estimated). Returns whether
        the estimate changed."""
        used = pair.details.setdefault("level_windows", [])
        level = _Level.of(pair, side)
        if min(level.b.shape) < self.patch:
            used.append(0)
            return False
        if self.dense_net is not None:
            R, count = self._dense_residual(pair, level, side)
        else:
            R, count = self._residual(level)
        if R is None:
            used.append(0)
            return False
        kept = self._keeps(pair, level, R)
        used.append(count if kept else -count)
        return kept

    def _residual(self, level: _Level) -> tuple[np.ndarray | None, int]:
        """The residual ``R`` (B's level pixels → the warped A's) from the network on the
        level's windows, a robust fit of their correspondences, and how many windows were
        asked (``R`` is ``None`` when too few windows or inliers give none)."""
        p = self.patch
        warped, b = level.warped, level.b
        origins = self._windows(warped, b, level.inside)
        if len(origins) < 2:
            return None, 0
        wins_a = np.stack([warped[y : y + p, x : x + p] for x, y in origins])
        wins_b = np.stack([b[y : y + p, x : x + p] for x, y in origins])
        offsets = self._offsets(self.refine_net, wins_a, wins_b, **self.refine_iterations)
        # Each window's estimate, sampled at four interior points (less extrapolation than at
        # its corners): correspondences between B and the warped A at this level.
        t = np.array(self.window_points)
        inner = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2) * (p - 1)
        pts_b, pts_w = [], []
        for (x0, y0), off in zip(origins, offsets, strict=True):
            H_win = self._patch_homography(off)
            if H_win is None:
                continue
            origin = np.array([x0, y0], np.float64)
            q = np.c_[inner, np.ones(len(inner))] @ H_win.T
            pts_b.append(inner + origin)
            pts_w.append(q[:, :2] / q[:, 2:] + origin)
        if len(pts_b) < 2:
            return None, 0
        R, mask = cv2.findHomography(
            np.concatenate(pts_b), np.concatenate(pts_w), _ROBUST[self.robust],
            self.ransac_threshold, maxIters=2000, confidence=0.999,
        )  # fmt: skip
        if R is None or check_homography(R) or int(mask.sum()) < 6:
            return None, 0
        return R, len(origins)

    @torch.inference_mode()
    def _dense_residual(
        self, pair: _Pair, level: _Level, side: int
    ) -> tuple[np.ndarray | None, int]:
        """The residual ``R`` from the dense matcher (see ``dense_net``) and how many matches
        it keeps as inliers (``R`` is ``None`` when too few matches or inliers give none)."""
        net, p = self.dense_net, self.patch
        assert net is not None
        if level.b.size > self.dense_max_pixels:  # many megapixels: inside the windows
            origins = self._windows(level.warped, level.b, level.inside)
            if not origins:
                return None, 0
            crop = lambda im: np.stack([im[y : y + p, x : x + p] for x, y in origins])  # noqa: E731
            warped, b, inside = crop(level.warped), crop(level.b), crop(level.inside)
        else:
            origins = [(0, 0)]
            warped, b, inside = level.warped[None], level.b[None], level.inside[None]

        def tensor(images: np.ndarray) -> torch.Tensor:  # (a copy where the photo is read-only)
            return (
                torch.from_numpy(np.require(images, requirements="W"))[:, None]
                .to(self.device)
                .float()
                / 255.0
            )

        key = (side, tuple(origins))  # B's features are the same at every pass of a level
        if key not in pair.features_b:
            pair.features_b[key] = net(tensor(b))
        offsets, peaks = net.match(net(tensor(warped)), pair.features_b[key])
        offsets, peaks = offsets.float().cpu().numpy(), peaks.float().cpu().numpy()
        s = int(net.stride)
        pts_b, pts_w, strength = [], [], []
        for (x0, y0), offset, peak, covers in zip(origins, offsets, peaks, inside, strict=True):
            h, w = peak.shape
            # cell j is centred on pixel s·j; kept where the warped A covers its s×s block
            covered = cv2.resize(covers.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            ys, xs = np.nonzero((peak > self.dense_min_peak) & (covered > 0.99))
            at_b = np.c_[xs, ys].astype(np.float64) * s + np.array([x0, y0], np.float64)
            pts_b.append(at_b)
            pts_w.append(at_b + offset[:, ys, xs].T.astype(np.float64) * s)
            strength.append(peak[ys, xs])
        pts_b, pts_w, strength = map(np.concatenate, (pts_b, pts_w, strength))
        if len(pts_b) > self.dense_max_points:
            best = np.argsort(-strength)[: self.dense_max_points]
            pts_b, pts_w = pts_b[best], pts_w[best]
        if len(pts_b) < 8:
            return None, 0
        R, mask = cv2.findHomography(pts_b, pts_w, _ROBUST[self.robust], self.ransac_threshold,
                                     maxIters=2000, confidence=0.999)  # fmt: skip
        if R is None or check_homography(R) or int(mask.sum()) < 8:
            return None, 0
        return R, int(mask.sum())

    def _keeps(self, pair: _Pair, level: _Level, R: np.ndarray) -> bool:
        """Apply the residual ``R`` to ``pair.H`` if the band-passed correlation at this level
        does not drop and all of A stays in front of the horizon; whether it was applied."""
        b_band = band_passed(level.b, 2.0)
        before = zncc_masked(b_band, band_passed(level.warped, 2.0), level.inside)
        H_new = level.H @ R
        size_a, size_b = size_of(level.a), size_of(level.b)
        warped_new = cv2.warpPerspective(level.a, H_new, size_b, flags=_WARP)
        inside_new = coverage_mask(H_new, size_a, size_b)
        after = zncc_masked(b_band, band_passed(warped_new, 2.0), inside_new)
        H_full = normalize_homography(np.linalg.inv(level.S_a) @ H_new @ level.S_b)
        if not after >= before - 1e-3 or not keeps_a_in_front(H_full, size_of(pair.a)):
            return False
        pair.H = H_full
        return True

    def _refine(self, pair: _Pair) -> None:
        """The refinement levels, coarse to fine. A pass at the finest level that left the
        estimate as it was ends them: the next would see the same windows and repeat it."""
        changed, previous = True, None
        for side in self._level_sides(size_of(pair.b)):
            if side == previous and not changed:
                break
            changed, previous = self._refine_level(pair, side), side

    def _refines_swapped(self, pair: _Pair) -> bool:
        """Whether the refinement levels run on the swapped pair: B zoomed out by more than
        ``swap_zoom`` by the global estimate (B warped into A's frame, where the shared part is
        large)."""
        if self.swap_zoom is None:
            return False
        return local_similarity(pair.H, _centre(size_of(pair.b)))[0] > self.swap_zoom

    # -- the estimator ---------------------------------------------------------------------------
    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        pair = _Pair(image_a, image_b, np.eye(3), {})
        for label, image in (("A", image_a), ("B", image_b)):
            reason = blank_reason(
                resize_area(image, (self.patch, self.patch)), label, self.min_texture
            )
            if reason:
                return PairResult(None, reason, pair.details)
        (self._global_dense if self.global_stage == "dense" else self._global)(pair)
        if "confidence_global" not in pair.details:  # (the proposals' check may have it)
            pair.details["confidence_global"] = alignment_confidence(
                image_a, image_b, pair.H, self.score_side
            )[0]
        if self._refines_swapped(pair):
            swapped = _Pair(image_b, image_a, np.linalg.inv(pair.H), pair.details)
            self._refine(swapped)
            pair.H = normalize_homography(np.linalg.inv(swapped.H))
            pair.details["refined_swapped"] = True
        else:
            self._refine(pair)
        reason = judge_confidence(
            image_a, image_b, pair.H, self.min_confidence, pair.details, self.score_side
        )
        return PairResult(None if reason else pair.H, reason, pair.details)
