"""Learned models behind the estimator interface: a checkpoint becomes an :class:`Estimator`.

A pair of any sizes is resized (``cv2.resize``, area) to the model's ``patch_size``², the network
predicts the four-point offsets there, the Tensor DLT turns them into ``H_a_from_b`` in that
frame, and :func:`~hdreg.geometry.rescale_homography` takes it back to the pair's full
resolution (exactly, with the pixel-centre convention of ``cv2.resize``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hdreg.device import resolve_device
from hdreg.estimators.base import Estimate, Estimator
from hdreg.estimators.confidence import blank_reason, judge_confidence
from hdreg.geometry import offsets_to_homography, rescale_homography
from hdreg.models.checkpoint import (
    ESTIMATORS,
    load_net,
    net_from_checkpoint,
    read_checkpoint,
    require_pair_net,
    resolve_checkpoint,
)
from hdreg.models.scale_search import ScaleSpaceSearch
from hdreg.models.similarity import SimilarityNet

__all__ = [
    "ConfidenceGate",
    "HomographyNetEstimator",
    "load_checkpoint_estimator",
    "resolve_checkpoint",
]


class HomographyNetEstimator(Estimator):
    """Runs a trained network on batches of image pairs.

    Args:
        model: the network (``forward(patch_a, patch_b)`` → dict with ``offsets``; attribute
            ``patch_size``), or a LightningModule holding it as ``net``; used in eval mode.
        name: name in evaluation tables (default: the model's own name).
        device: where the network runs.
        min_texture: a photo whose mean gradient at the network's input size is under this
            many gray levels per pixel (blank, flat) fails the pair with that reason.
        min_confidence: when set, a pair whose alignment confidence (ZNCC of B and the warped A
            times √overlap, :func:`~hdreg.estimators.confidence.alignment_confidence`) is
            under it is reported as failed: unrelated photos, motion beyond reach. ``None``
            (the evaluation default): the confidence is only reported in the details.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        name: str | None = None,
        device: str | torch.device = "auto",
        *,
        min_texture: float = 0.25,
        min_confidence: float | None = None,
    ) -> None:
        self.device = resolve_device(device)
        net = getattr(model, "net", model)
        self.net = net.to(self.device).eval()
        self.patch_size = int(self.net.patch_size)
        own = getattr(model, "name", None) or getattr(net, "hdreg_name", None)
        self.name = name or (str(own) if isinstance(own, str) else "model")
        self.min_texture = float(min_texture)
        self.min_confidence = min_confidence

    def _resize(self, image: np.ndarray) -> np.ndarray:
        p = self.patch_size
        if image.shape == (p, p):
            return image
        return cv2.resize(image, (p, p), interpolation=cv2.INTER_AREA)

    @torch.inference_mode()
    def predict_offsets(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]):
        """Offsets ``(N, 4, 2)`` float32 (tensor on the device) in the ``patch_size`` frame."""
        a = torch.from_numpy(np.stack([self._resize(x) for x in images_a]))[:, None]
        b = torch.from_numpy(np.stack([self._resize(x) for x in images_b]))[:, None]
        a = a.to(self.device, non_blocking=True).float().div_(255.0)
        b = b.to(self.device, non_blocking=True).float().div_(255.0)
        return self.net(a, b)["offsets"].float()

    def _check_pair(
        self, a: np.ndarray, b: np.ndarray, H_a_from_b: np.ndarray, details: dict[str, Any]
    ) -> str | None:
        """Why this pair's estimate must not be trusted (``None``: it may)."""
        for label, image in (("A", a), ("B", b)):
            reason = blank_reason(self._resize(image), label, self.min_texture)
            if reason:
                return reason
        if self.min_confidence is None:
            return None
        return judge_confidence(a, b, H_a_from_b, self.min_confidence, details)

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        n = len(images_a)
        if n == 0:
            return Estimate(np.zeros((0, 3, 3)), np.zeros(0, bool), np.zeros(0), [])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        # A pair with NaN or inf pixels is failed, and the network sees zeros in its place: the
        # network would answer such input with offsets that look like an estimate.
        unusable = [_non_finite_reason(a, b) for a, b in zip(images_a, images_b, strict=True)]
        blank = np.zeros((self.patch_size, self.patch_size), np.uint8)
        net_a = [blank if why else x for x, why in zip(images_a, unusable, strict=True)]
        net_b = [blank if why else x for x, why in zip(images_b, unusable, strict=True)]
        offsets = self.predict_offsets(net_a, net_b).double()
        finite = torch.isfinite(offsets).all(dim=(1, 2)).cpu().numpy()
        p = self.patch_size
        H_patch, valid = offsets_to_homography(offsets, p)
        H_patch = H_patch.cpu()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        H = np.empty((n, 3, 3))
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            size_a, size_b = (a.shape[1], a.shape[0]), (b.shape[1], b.shape[0])
            H[i] = rescale_homography(H_patch[i : i + 1], (p, p), size_a, (p, p), size_b)[0].numpy()
        failed = ~valid.cpu().numpy()
        reasons = ["degenerate four-point prediction" if f else "" for f in failed]
        for i, why in enumerate(unusable):
            if why or not finite[i]:
                failed[i] = True
                reasons[i] = why or "the network predicted non-finite offsets"
        details: list[dict[str, Any]] = [{} for _ in range(n)]
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            reason = self._check_pair(a, b, H[i], details[i]) if not failed[i] else None
            if reason:
                failed[i], reasons[i] = True, reason
        H[failed] = np.eye(3)
        seconds = np.full(n, (time.perf_counter() - t0) / n)
        return Estimate(H, failed, seconds, reasons, details)


def _non_finite_reason(image_a: np.ndarray, image_b: np.ndarray) -> str:
    """Why a pair cannot be estimated: a float image with NaN or inf pixels (``""``: it can)."""
    for label, image in (("A", image_a), ("B", image_b)):
        if np.issubdtype(np.asarray(image).dtype, np.floating) and not np.isfinite(image).all():
            return f"image {label} has non-finite pixels (NaN or inf)"
    return ""


class ConfidenceGate(Estimator):
    """Another estimator's answers, with those whose alignment confidence is under
    ``min_confidence`` reported as failed (``hdreg align`` and :func:`hdreg.estimate` put a
    refined learned estimate, ``model.ckpt+ecc``, behind one: the refined result is judged)."""

    def __init__(self, inner: Estimator, min_confidence: float) -> None:
        self.inner = inner
        self.min_confidence = float(min_confidence)
        self.name = inner.name

    @property
    def per_pair(self) -> bool:  # type: ignore[override]
        return self.inner.per_pair

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        est = self.inner.estimate(images_a, images_b)
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            if est.failed[i]:
                continue
            reason = judge_confidence(a, b, est.H_a_from_b[i], self.min_confidence, est.details[i])
            if reason:
                est.failed[i], est.reasons[i] = True, reason
                est.H_a_from_b[i] = np.eye(3)
        return est


def load_checkpoint_estimator(
    path: str | Path,
    device: str | torch.device = "auto",
    name: str | None = None,
    min_confidence: float | None = None,
) -> Estimator:
    """The estimator a checkpoint (a path or a shipped name) stands for: its network on
    whole photos resized to its input (:class:`HomographyNetEstimator`), or, when the file
    carries an ``hdreg_estimator`` (shipped ``wide``), the whole-image estimator it names
    (:class:`~hdreg.estimators.coarse_to_fine.CoarseToFineEstimator`) with its settings.
    Builds plain networks (no PyTorch Lightning). ``min_confidence`` applies to a plain
    network (:class:`HomographyNetEstimator`); a whole-image estimator has its own."""
    ckpt = read_checkpoint(path)
    net = require_pair_net(net_from_checkpoint(ckpt), ckpt.path)
    spec = ckpt.meta.get("hdreg_estimator")
    if spec is None:
        return HomographyNetEstimator(net, name=name, device=device, min_confidence=min_confidence)
    named = ("kind", "refine", "name", "proposal", "dense")  # (not constructor arguments)
    params = {k: v for k, v in spec.items() if k not in named}
    # the scale-space search's own settings (search_rotations: 16 -> rotations=16)
    search = {k[len("search_") :]: params.pop(k) for k in list(params) if k.startswith("search_")}
    module, cls_name = ESTIMATORS[spec["kind"]]
    cls = getattr(importlib.import_module(module), cls_name)
    refine = load_net(spec["refine"]) if spec.get("refine") else None
    if spec.get("dense"):  # the refinement levels' dense matcher, a shipped network
        params["dense_net"] = load_net(spec["dense"])
    proposal = spec.get("proposal")  # what proposes rotation × zoom classes
    if proposal == "global-encoder":  # the global network's own encoder, untrained head
        params["proposal_net"] = SimilarityNet.around(
            net.coarse.encoder, patch_size=net.patch_size, input_size=net.input_size
        )
    elif proposal == "scale-search":  # the global network's encoder over a scale space
        try:
            params["proposal_net"] = ScaleSpaceSearch(net.coarse.encoder, **search)
        except TypeError as exc:
            raise ValueError(f"{ckpt.path}: its hdreg_estimator search_* settings: {exc}") from None
    elif proposal:  # a shipped proposal network
        params["proposal_net"] = load_net(proposal)
    if search and proposal != "scale-search":
        raise ValueError(
            f"{ckpt.path}: its hdreg_estimator has {', '.join('search_' + k for k in search)} "
            f"but its proposal is {proposal!r}, not 'scale-search'"
        )
    for key in ("rotations", "zooms", "levels"):
        if key in params:
            params[key] = tuple(params[key])
    try:
        label = name or spec.get("name") or ckpt.name
        return cls(net, refine, name=label, device=device, **params)
    except TypeError as exc:
        raise ValueError(
            f"{ckpt.path}: its hdreg_estimator does not fit {cls_name}: {exc}"
        ) from None
