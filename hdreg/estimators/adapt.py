"""Per-pair adaptation: a few optimisation steps of the unsupervised loss on the pair itself.

The unsupervised models learn by warping image A onto B through their estimate (Tensor DLT and a
spatial transformer) and scoring the photometric agreement on standardized intensities
(:func:`hdreg.models.losses.masked_standardize`: unchanged by a global brightness and contrast
change of either view). :class:`PhotometricAdapter` applies that loss to *one* pair at test
time: starting from any estimate (a network's, SIFT's), it moves the four points where B's
corners land in A with Adam to lower the loss, coarse to fine, and returns the iterate with the
lowest loss — only when that loss is lower than the start's, so it never returns a worse
photometric score than its start. As a refinement suffix (``iterative+adapt``,
``wide+adapt+ecc``) the estimate is then also kept only if the correlation does not drop
(:class:`~hdreg.estimators.refinement.RefinedEstimator`). ``hdreg align --adapt N`` runs it with
N steps per level.

What is optimised is the homography (eight numbers), not the network's weights: UDIS2 adapts the
weights of its network per pair; optimising the estimate directly needs no network, composes
with every estimator, and costs a fraction of a second on a photo. docs/methods.md records what
it gives on real pairs.

Example:
    >>> import cv2, numpy as np
    >>> noise = np.random.default_rng(0).integers(0, 256, (120, 160), np.uint8)
    >>> a = cv2.GaussianBlur(noise, (0, 0), 2)
    >>> b = cv2.warpAffine(a, np.float32([[1, 0, -3], [0, 1, -2]]), (160, 120))
    >>> from hdreg.config import method_estimator  # hdreg/configs/method/adapt.yaml
    >>> start = np.array([[1, 0, 2.0], [0, 1, 1.0], [0, 0, 1]])  # 1 px off in x and y
    >>> result = method_estimator("adapt").refine(a, b, start)
    >>> bool(np.abs(result.H_a_from_b[:2, 2] - [3.0, 2.0]).max() < 0.1)  # the true shift
    True
    >>> result.details["adapt_loss"] < result.details["adapt_loss_start"]
    True
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch

from hdreg.estimators._checks import check_float, check_gray_u8, check_int
from hdreg.estimators.base import PairResult, PairwiseEstimator
from hdreg.geometry import (
    four_point_to_homography_ex,
    inside_mask,
    sample_at,
    transform_points,
    warp_grid,
)
from hdreg.geometry_np import (
    check_homography,
    normalize_homography,
    rect_corners,
    scale_matrix,
    scaled_size,
)
from hdreg.models.losses import masked_standardize

__all__ = ["PhotometricAdapter", "photometric_agreement"]


def _size(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]


def _level(image: np.ndarray, side: int, blur: float) -> tuple[torch.Tensor, np.ndarray]:
    """``image`` resized so that its longer side is at most ``side`` (never enlarged), blurred
    (σ = ``blur`` px) and in [0, 1] as ``(1, 1, h, w)`` float64; and the resize map (3, 3)."""
    w, h = _size(image)
    size = scaled_size((w, h), min(side, max(w, h)), min_side=8)
    small = image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32) / 255.0
    if blur > 0:
        small = cv2.GaussianBlur(small, (0, 0), blur)
    S = scale_matrix((w, h), size)
    return torch.from_numpy(small.astype(np.float64))[None, None], S


def _loss(
    a: torch.Tensor, b: torch.Tensor, H_a_from_b: torch.Tensor, stride: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unsupervised loss of one pair: mean L1 between B and A warped onto B, both
    standardized over the samples of B that land inside A (every ``stride``-th pixel), and the
    share of those samples."""
    h, w = b.shape[-2:]
    b_from_q = torch.tensor(
        [[stride, 0.0, 0.0], [0.0, stride, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    grid = warp_grid(
        (H_a_from_b @ b_from_q)[None], (len(range(0, w, stride)), len(range(0, h, stride)))
    )
    warped = sample_at(a, grid)
    mask = inside_mask(grid, (a.shape[-1], a.shape[-2]))
    target = b[..., ::stride, ::stride]
    n = mask.sum().clamp_min(1.0)
    standardized = masked_standardize(warped, mask, eps) - masked_standardize(target, mask, eps)
    loss = (standardized.abs() * mask).sum() / n
    return loss, mask.mean()


def photometric_agreement(
    image_a: np.ndarray,
    image_b: np.ndarray,
    H_a_from_b: np.ndarray,
    *,
    max_side: int = 1024,
    stride: int = 2,
    eps: float = 0.02,
) -> float:
    """The unsupervised loss of ``H_a_from_b`` on a pair of ``(H, W) uint8`` images, at a
    longer side of at most ``max_side`` (lower is better; NaN when under 1 % of B lands in A).
    What :class:`PhotometricAdapter` lowers, at its finest level."""
    a, S_a = _level(check_gray_u8(image_a, "image_a"), max_side, 0.0)
    b, S_b = _level(check_gray_u8(image_b, "image_b"), max_side, 0.0)
    H = torch.from_numpy(S_a @ np.asarray(H_a_from_b, np.float64) @ np.linalg.inv(S_b))
    with torch.no_grad():
        loss, inside = _loss(a, b, H, stride, eps)
    return float(loss) if float(inside) >= 0.01 else float("nan")


class PhotometricAdapter(PairwiseEstimator):
    """Lower the unsupervised photometric loss of one pair, starting from an estimate.

    Every parameter is explicit: the defaults are ``hdreg/configs/method/adapt.yaml``, built by
    ``hdreg.config.method_estimator("adapt")``.

    Args:
        steps: Adam steps per level (``hdreg align --adapt N``).
        levels: working resolutions, coarsest first: B's longer side at each (A is resized by
            the same rule; photos smaller than a level are used as they are).
        lr: Adam's learning rate in pixels of each level (the four points move by about this
            much per step at first); it decays to a twentieth over a level's steps (cosine).
        blur: Gaussian blur (σ, pixels of the level) of both images, which widens the basin.
        stride: the loss on every ``stride``-th pixel of B in x and y.
        eps: regularizer of the standardization (intensities in [0, 1]).
        patience: a level stops after this many steps without a lower loss.
        min_overlap: fail when less than this share of B lands inside A at the start.
        name: name in result tables.

    :meth:`refine` returns the iterate with the lowest loss at the finest level, or fails (so
    that a :class:`~hdreg.estimators.refinement.RefinedEstimator` keeps the start) when no step
    lowered the start's loss. ``details``: ``adapt_loss_start``, ``adapt_loss`` (at the finest
    level), ``adapt_steps`` (steps run, all levels). :meth:`estimate_pair` starts from the
    identity: a local method, for small motion only.
    """

    def __init__(
        self,
        *,
        steps: int,
        levels: list[int] | tuple[int, ...],
        lr: float,
        blur: float,
        stride: int,
        eps: float,
        patience: int,
        min_overlap: float,
        name: str = "adapt",
    ) -> None:
        self.steps = check_int("steps", steps, 1)
        if isinstance(levels, int | str) or not levels:
            raise ValueError(f"levels must be a non-empty list of image sides, got {levels!r}")
        self.levels = tuple(check_int("levels", side, 16) for side in levels)
        self.lr = check_float("lr", lr, above=0.0)
        self.blur = check_float("blur", blur, at_least=0.0)
        self.stride = check_int("stride", stride, 1)
        self.eps = check_float("eps", eps, above=0.0)
        self.patience = check_int("patience", patience, 1)
        self.min_overlap = check_float("min_overlap", min_overlap, above=0.0, at_most=1.0)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return (
            f"PhotometricAdapter(steps={self.steps}, levels={self.levels}, lr={self.lr:g}, "
            f"blur={self.blur:g}, stride={self.stride}, eps={self.eps:g}, "
            f"patience={self.patience}, min_overlap={self.min_overlap}, name={self.name!r})"
        )

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        return self.refine(image_a, image_b, np.eye(3))

    def refine(
        self, image_a: np.ndarray, image_b: np.ndarray, H_init_a_from_b: np.ndarray
    ) -> PairResult:
        """Adapt the estimate ``H_init_a_from_b (3, 3)`` (maps B into A) to the pair."""
        image_a = check_gray_u8(image_a, "image_a")
        image_b = check_gray_u8(image_b, "image_b")
        H = np.asarray(H_init_a_from_b, np.float64)
        problem = check_homography(H)
        if problem is not None:
            return PairResult(None, f"cannot adapt the start: {problem}")
        steps_run, start_loss, best_loss = 0, math.nan, math.nan
        with torch.enable_grad():
            for i, side in enumerate(self.levels):
                finest = i == len(self.levels) - 1
                blur = self.blur if not finest else 0.0
                a, S_a = _level(image_a, side, blur)
                b, S_b = _level(image_b, side, blur)
                H_level = S_a @ H @ np.linalg.inv(S_b)
                result = self._adapt_level(a, b, H_level)
                if result is None:
                    return PairResult(
                        None, f"under {self.min_overlap:.0%} of B lands inside A at the start"
                    )
                H_level, start, best, ran = result
                steps_run += ran
                H = np.linalg.inv(S_a) @ H_level @ S_b
                if finest:
                    start_loss, best_loss = start, best
        details: dict[str, Any] = {
            "adapt_loss_start": start_loss,
            "adapt_loss": best_loss,
            "adapt_steps": steps_run,
        }
        # The coarse levels only prepare the finest: the result is judged there, against the
        # start's loss at that level (measured on the start itself, below).
        a, S_a = _level(image_a, self.levels[-1], 0.0)
        b, S_b = _level(image_b, self.levels[-1], 0.0)
        with torch.no_grad():
            H0 = torch.from_numpy(
                S_a @ np.asarray(H_init_a_from_b, np.float64) @ np.linalg.inv(S_b)
            )
            loss0 = float(_loss(a, b, H0, self.stride, self.eps)[0])
        details["adapt_loss_start"] = loss0
        if not best_loss < loss0:
            return PairResult(
                None, f"no step lowered the photometric loss ({best_loss:.4f} >= {loss0:.4f})",
                details,
            )  # fmt: skip
        return PairResult(normalize_homography(H), None, details)

    def _adapt_level(
        self, a: torch.Tensor, b: torch.Tensor, H_a_from_b: np.ndarray
    ) -> tuple[np.ndarray, float, float, int] | None:
        """Adam on where B's corners land in A, at one level. Returns the best homography, the
        start's and the best loss, and the steps run; None when too little of B is in A."""
        w, h = b.shape[-1], b.shape[-2]
        corners_b = torch.from_numpy(rect_corners((w, h)))[None]
        H0 = torch.from_numpy(H_a_from_b)[None]
        start_points = transform_points(H0, corners_b).detach()
        delta = torch.zeros_like(start_points, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)

        def homography() -> tuple[torch.Tensor, bool]:
            H, valid = four_point_to_homography_ex(corners_b, start_points + delta)
            return H[0], bool(valid[0])

        with torch.no_grad():
            start_loss, inside = _loss(a, b, homography()[0], self.stride, self.eps)
        if float(inside) < self.min_overlap:
            return None
        best_loss, best_delta, since_best, ran = float(start_loss), delta.detach().clone(), 0, 0
        for step in range(self.steps):
            for group in optimizer.param_groups:
                group["lr"] = self.lr * (
                    0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / self.steps))
                )
            H, valid = homography()
            if not valid:
                break
            loss, inside = _loss(a, b, H, self.stride, self.eps)
            if not torch.isfinite(loss) or float(inside) < self.min_overlap:
                break
            ran += 1
            if float(loss.detach()) < best_loss:
                best_loss, best_delta, since_best = float(loss.detach()), delta.detach().clone(), 0
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            # the last step's update was never scored
            with torch.no_grad():
                H, valid = homography()
                if valid:
                    loss, inside = _loss(a, b, H, self.stride, self.eps)
                    if (
                        torch.isfinite(loss)
                        and float(inside) >= self.min_overlap
                        and float(loss) < best_loss
                    ):
                        best_loss, best_delta = float(loss), delta.detach().clone()
        with torch.no_grad():
            H, _ = four_point_to_homography_ex(corners_b, start_points + best_delta)
        return H[0].numpy(), float(start_loss), best_loss, ran
