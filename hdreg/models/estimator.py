"""Learned models behind the estimator interface: a checkpoint becomes an :class:`Estimator`.

A pair of any sizes is resized (``cv2.resize``, area) to the model's ``patch_size``², the network
predicts the four-point offsets there, the Tensor DLT turns them into ``H_a_from_b`` in that
frame, and :func:`~hdreg.geometry.rescale_homography` takes it back to the pair's full
resolution (exactly, with the pixel-centre convention of ``cv2.resize``).
"""

from __future__ import annotations

import importlib
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from hdreg.estimators import Estimate, Estimator
from hdreg.geometry import (
    four_point_to_homography_ex,
    patch_corners,
    rescale_homography,
)
from hdreg.models.base import HomographyModule

__all__ = ["HomographyNetEstimator", "load_checkpoint_estimator", "load_module", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


class HomographyNetEstimator(Estimator):
    """Runs a trained :class:`HomographyModule` on batches of image pairs.

    Args:
        module: the trained LightningModule (its ``net`` is used in eval mode).
        name: name in evaluation tables.
        device: where the network runs.
    """

    def __init__(
        self, module: HomographyModule, name: str | None = None, device: str | torch.device = "auto"
    ) -> None:
        self.device = resolve_device(device)
        self.net = module.net.to(self.device).eval()
        self.patch_size = int(self.net.patch_size)
        self.name = name or module.display_name

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


def load_module(path: str | Path, device: str | torch.device = "cpu") -> HomographyModule:
    """Rebuild the LightningModule saved in an hdreg checkpoint (weights and hyperparameters)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hdreg_module" not in ckpt:
        raise ValueError(
            f"{path} is not an hdreg checkpoint (no 'hdreg_module' entry): train it with train.py"
        )
    module_path, _, cls_name = ckpt["hdreg_module"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), cls_name)
    module = cls(**ckpt.get("hyper_parameters", {}))
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    return module.to(resolve_device(device)).eval()


def load_checkpoint_estimator(
    path: str | Path, device: str | torch.device = "auto", name: str | None = None
) -> HomographyNetEstimator:
    """An :class:`HomographyNetEstimator` from a checkpoint written by ``train.py``."""
    module = load_module(path, device="cpu")
    return HomographyNetEstimator(module, name=name, device=device)
