"""Learned models behind the estimator interface: a checkpoint becomes an :class:`Estimator`.

A pair of any sizes is resized (``cv2.resize``, area) to the model's ``patch_size``², the network
predicts the four-point offsets there, the Tensor DLT turns them into ``H_a_from_b`` in that
frame, and :func:`~hdreg.geometry.rescale_homography` takes it back to the pair's full
resolution (exactly, with the pixel-centre convention of ``cv2.resize``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hdreg.errors import check_device
from hdreg.estimators import Estimate, Estimator
from hdreg.geometry import (
    four_point_to_homography_ex,
    patch_corners,
    rescale_homography,
)
from hdreg.models.checkpoint import (
    load_module_checked,
    load_net,
    resolve_checkpoint,
    tensors_sha256,
)

__all__ = [
    "HomographyNetEstimator",
    "load_checkpoint_estimator",
    "load_module",
    "resolve_checkpoint",
    "resolve_device",
    "save_weights",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    check_device(device)
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


class HomographyNetEstimator(Estimator):
    """Runs a trained network on batches of image pairs.

    Args:
        model: the network (``forward(patch_a, patch_b)`` → dict with ``offsets``; attribute
            ``patch_size``), or a LightningModule holding it as ``net``; used in eval mode.
        name: name in evaluation tables (default: the model's own name).
        device: where the network runs.
    """

    def __init__(
        self, model: torch.nn.Module, name: str | None = None, device: str | torch.device = "auto"
    ) -> None:
        self.device = resolve_device(device)
        net = getattr(model, "net", model)
        self.net = net.to(self.device).eval()
        self.patch_size = int(self.net.patch_size)
        own = getattr(model, "name", None) or getattr(net, "hdreg_name", None)
        self.name = name or (str(own) if isinstance(own, str) else "model")

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

    def estimate(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> Estimate:
        if len(images_a) != len(images_b):
            raise ValueError(f"got {len(images_a)} A images but {len(images_b)} B images")
        n = len(images_a)
        if n == 0:
            return Estimate(np.zeros((0, 3, 3)), np.zeros(0, bool), np.zeros(0), [])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        offsets = self.predict_offsets(images_a, images_b).double()
        p = self.patch_size
        corners = patch_corners(offsets.new_zeros(n, 2), p)
        H_patch, valid = four_point_to_homography_ex(corners, corners + offsets)
        H_patch = H_patch.cpu()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        H = np.empty((n, 3, 3))
        for i, (a, b) in enumerate(zip(images_a, images_b, strict=True)):
            size_a, size_b = (a.shape[1], a.shape[0]), (b.shape[1], b.shape[0])
            H[i] = rescale_homography(H_patch[i : i + 1], (p, p), size_a, (p, p), size_b)[0].numpy()
        seconds = np.full(n, (time.perf_counter() - t0) / n)
        failed = ~valid.cpu().numpy()
        H[failed] = np.eye(3)
        reasons = ["degenerate four-point prediction" if f else "" for f in failed]
        return Estimate(H, failed, seconds, reasons)


def load_module(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Rebuild the LightningModule saved in an hdreg checkpoint, in eval mode.

    Any file with the model's config under ``"hdreg_model"`` and its weights under
    ``"state_dict"`` is read: a checkpoint written by ``train.py``, or a weights-only file (as
    :func:`save_weights` writes). The config is checked against hdreg's allow-list of classes
    and plain arguments before anything is built (:mod:`hdreg.models.checkpoint`: reading a
    file never runs code). Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file for one that is not such a checkpoint. ``path`` may also name weights
    shipped with hdreg (``hdreg weights``).
    """
    return load_module_checked(path, device=resolve_device(device))


def save_weights(module: Any, path: str | Path) -> Path:
    """Write the weights-only file :func:`load_module` reads: ``hdreg_model``, ``state_dict``
    and ``val_mace_best`` (no optimizer state; a fraction of a training checkpoint's size)."""
    if module.hdreg_model is None:
        raise ValueError("the module has no hdreg_model config: build it with build_module")
    path = Path(path).expanduser()
    state = module.state_dict()
    checkpoint: dict[str, Any] = {"state_dict": state, "tensors_sha256": tensors_sha256(state)}
    module.on_save_checkpoint(checkpoint)  # adds hdreg_model and val_mace_best
    torch.save(checkpoint, path)
    return path


def load_checkpoint_estimator(
    path: str | Path, device: str | torch.device = "auto", name: str | None = None
) -> HomographyNetEstimator:
    """An :class:`HomographyNetEstimator` from a checkpoint (a path or a shipped name); builds
    the plain network (no PyTorch Lightning)."""
    return HomographyNetEstimator(load_net(path, device="cpu"), name=name, device=device)
