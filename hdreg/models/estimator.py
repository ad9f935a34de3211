"""Learned models behind the estimator interface: a checkpoint becomes an :class:`Estimator`.

A pair of any sizes is resized (``cv2.resize``, area) to the model's ``patch_size``², the network
predicts the four-point offsets there, the Tensor DLT turns them into ``H_a_from_b`` in that
frame, and :func:`~hdreg.geometry.rescale_homography` takes it back to the pair's full
resolution (exactly, with the pixel-centre convention of ``cv2.resize``).
"""

from __future__ import annotations

import pickle
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
from hdreg.models.base import HomographyModule, build_module

__all__ = [
    "HomographyNetEstimator",
    "load_checkpoint_estimator",
    "load_module",
    "resolve_checkpoint",
    "resolve_device",
    "save_weights",
]


def resolve_checkpoint(spec: str | Path) -> Path:
    """The checkpoint file a user's ``spec`` names: the path itself (``~`` expanded), or the
    file of weights shipped with hdreg (:mod:`hdreg.weights`) when ``spec`` names them and is not
    an existing file.

    Every place that accepts a checkpoint (``evaluate.py``'s ``checkpoints=[...]``, ``hdreg
    align --checkpoint``) resolves it through this one function. Whether the file exists is
    checked by the loader (:func:`load_module`).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from hdreg.weights import shipped_weights

    found = shipped_weights().get(str(spec))
    return found.path if found else path


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    check_device(device)
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
        self.name = name or module.name

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


#: ``_target_`` prefix of everything a checkpoint's model config may build
MODEL_TARGET_PREFIX = "hdreg.models."


def _targets(node: Any) -> list[str]:
    """Every ``_target_`` in a config tree."""
    if isinstance(node, dict):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def load_module(path: str | Path, device: str | torch.device = "cpu") -> HomographyModule:
    """Rebuild the LightningModule saved in an hdreg checkpoint, in eval mode.

    Any file with the model's config under ``"hdreg_model"`` (a ``_target_`` tree of the module
    with its ``net`` and ``loss``, see :func:`~hdreg.models.base.build_module`) and its weights
    under ``"state_dict"`` is read: a checkpoint written by ``train.py``, or a weights-only file
    of just those two keys (and optional metadata such as ``"val_mace_best"``, as
    :func:`save_weights` writes). The module is ``instantiate(hdreg_model)`` with the weights
    loaded strictly; every ``_target_`` in the config must lie under ``hdreg.models.`` (reading a
    file never runs other code). Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the file for one that is not such a checkpoint (corrupt, foreign, or
    from an older hdreg). ``path`` may also name weights shipped with hdreg (``hdreg weights``).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hdreg_model" not in ckpt:
        older = isinstance(ckpt, dict) and "hdreg_module" in ckpt
        raise ValueError(
            f"{path} is not an hdreg checkpoint: it has no 'hdreg_model' config and "
            "'state_dict' weights"
            + (" (it was written by an older hdreg; retrain it with train.py)" if older else "")
        )
    foreign = [t for t in _targets(ckpt["hdreg_model"]) if not t.startswith(MODEL_TARGET_PREFIX)]
    if foreign:  # loading a file must not run arbitrary code
        raise ValueError(
            f"{path}: its 'hdreg_model' may only build classes under {MODEL_TARGET_PREFIX}, "
            f"got _target_ {', '.join(foreign)}"
        )
    try:
        module = build_module(ckpt["hdreg_model"])
    except Exception as exc:  # a config that names what this hdreg does not have
        raise ValueError(
            f"cannot rebuild the model of {path} from its 'hdreg_model': {exc}"
        ) from exc
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path} do not fit its model config: {exc}") from exc
    module.on_load_checkpoint(ckpt)
    return module.to(resolve_device(device)).eval()


def save_weights(module: HomographyModule, path: str | Path) -> Path:
    """Write the weights-only file :func:`load_module` reads: ``hdreg_model``, ``state_dict``
    and ``val_mace_best`` (no optimizer state; a fraction of a training checkpoint's size)."""
    if module.hdreg_model is None:
        raise ValueError("the module has no hdreg_model config: build it with build_module")
    path = Path(path).expanduser()
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # adds hdreg_model and val_mace_best
    torch.save(checkpoint, path)
    return path


def load_checkpoint_estimator(
    path: str | Path, device: str | torch.device = "auto", name: str | None = None
) -> HomographyNetEstimator:
    """An :class:`HomographyNetEstimator` from a checkpoint written by ``train.py``."""
    module = load_module(path, device="cpu")
    return HomographyNetEstimator(module, name=name, device=device)
