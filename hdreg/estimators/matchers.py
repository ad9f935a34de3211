"""Learned matchers through kornia: DISK, ALIKED and XFeat with LightGlue/LighterGlue, and LoFTR.

The methods researchers compare with (``disk+lightglue``, ``aliked+lightglue``,
``aliked_rot+lightglue``, ``xfeat+lighterglue``, ``loftr``: ``hdreg/configs/method/``), behind
the same contract as SIFT (:class:`~hdreg.estimators.features.FeatureEstimator`). For one pair
``(A, B)`` of ``(H, W) uint8`` images:

1. each image is resized (area) so that its longer side is at most ``max_side`` (the method's
   input-size budget; 0: as it is), to a size the network takes (multiples of ``multiple``);
2. the network finds correspondences: keypoints and descriptors matched by LightGlue (or
   LighterGlue), or LoFTR's dense matches; at most ``max_keypoints`` keypoints per image;
3. the matched points are carried back to full-resolution pixels (docs/conventions.md:
   ``x ↦ (x + 0.5)·W/W′ − 0.5``) and ``cv2.findHomography(points_b, points_a, ...)`` fits
   ``H_a_from_b`` with the same robust settings as ``sift``.

kornia is an optional dependency (``pip install 'hdreg[matchers]'``), imported here only, when a
network is first built. The weights are never fetched by kornia: each file is read from hdreg's
weights folder after its SHA-256 is checked (:mod:`hdreg.weights.external`;
``hdreg weights install --from PATH``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from hdreg.estimators._checks import check_float, check_gray_u8, check_int
from hdreg.estimators.base import PairResult, PairwiseEstimator
from hdreg.estimators.features import ROBUST_METHODS, fit_homography
from hdreg.weights.external import verified_path

__all__ = [
    "EXTRA",
    "FEATURES",
    "MatcherEstimator",
    "MissingExtra",
    "network_size",
    "require_kornia",
]

#: the pip extra that brings kornia
EXTRA = "pip install 'hdreg[matchers]'"

#: feature name → (weights keys: extractor and matcher, LightGlue's feature preset). LoFTR has
#: one network, no separate matcher.
FEATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "disk": (("disk-depth", "disk-lightglue"), "disk"),
    "aliked-n16": (("aliked-n16", "aliked-lightglue"), "aliked"),
    "aliked-n16rot": (("aliked-n16rot", "aliked-lightglue"), "aliked"),
    "xfeat": (("xfeat", "xfeat-lighterglue"), "xfeat"),
    "loftr": (("loftr-outdoor",), None),
}


class MissingExtra(ValueError):
    """An optional dependency is not installed (a one-line user error naming the extra)."""


def require_kornia(method: str) -> Any:
    """The ``kornia.feature`` module; :class:`MissingExtra` naming the extra without it."""
    try:
        return importlib.import_module("kornia.feature")
    except ImportError:
        raise MissingExtra(f"the {method} method needs kornia, not installed: {EXTRA}") from None


def network_size(width: int, height: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The ``(width, height)`` a network sees: longer side at most ``max_side`` (0: no limit),
    the aspect kept, each side rounded down to a multiple of ``multiple`` (at least one).

    >>> network_size(2000, 1500, 1024, 8), network_size(650, 490, 1024, 32)
    ((1024, 768), (640, 480))
    """
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    w, h = (max(multiple, round(s * scale) // multiple * multiple) for s in (width, height))
    return w, h


def _to_full(points: np.ndarray, small: tuple[int, int], full: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates in an image of size ``small`` → in the same image at size ``full``
    (``(width, height)`` each; the pixel-centre rule of ``cv2.resize``)."""
    factor = np.array(full, np.float64) / np.array(small, np.float64)
    return (points.astype(np.float64) + 0.5) * factor - 0.5


class MatcherEstimator(PairwiseEstimator):
    """A learned matcher (through kornia) + robust fit: returns ``H_a_from_b`` (maps B into A).

    Args:
        features: ``"disk"``, ``"aliked-n16"``, ``"aliked-n16rot"`` (ALIKED trained with
            rotations), ``"xfeat"`` (each matched by its LightGlue or LighterGlue) or ``"loftr"``.
        max_side: input-size budget: the longer side, in pixels, of the images the network sees
            (larger images are resized, area); 0: full resolution.
        max_keypoints: keypoints kept per image, the strongest (ignored by LoFTR, which has
            none).
        robust, reproj_threshold, confidence, max_iters, min_matches: the robust fit, as for
            :class:`~hdreg.estimators.features.FeatureEstimator` (``sift``'s settings).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ….
        name: name in result tables.

    ``PairResult.details``: ``matches``, ``inliers`` (counts), ``budget`` (the input-size
    budget, for the tables), and for pictures ``keypoints_a``, ``keypoints_b`` (full-resolution
    pixels), ``match_pairs``, ``inlier_mask`` — the keys of the keypoint methods. LoFTR's
    keypoints are its matched points.
    """

    # a torch model on its device: the evaluation runs the pairs in this process
    per_pair = False

    def __init__(
        self,
        *,
        features: str,
        max_side: int,
        max_keypoints: int,
        robust: str,
        reproj_threshold: float,
        confidence: float,
        max_iters: int,
        min_matches: int,
        device: str = "auto",
        name: str | None = None,
    ) -> None:
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        if robust not in ROBUST_METHODS:
            raise ValueError(
                f"robust must be one of {', '.join(sorted(ROBUST_METHODS))}, got {robust!r}"
            )
        self.features = features
        self.max_side = check_int("max_side", max_side, 0)
        self.max_keypoints = check_int("max_keypoints", max_keypoints, 1)
        self.robust = robust
        self.reproj_threshold = check_float("reproj_threshold", reproj_threshold, above=0.0)
        self.confidence = check_float("confidence", confidence, above=0.0, below=1.0)
        self.max_iters = check_int("max_iters", max_iters, 1)
        self.min_matches = check_int("min_matches", min_matches, 4)
        from hdreg.device import check_device

        check_device(device)
        self.device = str(device)
        self.name = name if name is not None else features
        require_kornia(self.name)  # before any work: the one line that names the extra
        self.multiple = {"xfeat": 32, "loftr": 8}.get(features, 1)
        keypoints = "" if features == "loftr" else f", at most {self.max_keypoints} keypoints"
        side = f"longer side ≤ {self.max_side} px" if self.max_side else "full resolution"
        self.budget = f"{side}{keypoints}"
        self._nets: tuple[Any, ...] | None = None  # built on first use, not pickled

    def __repr__(self) -> str:
        return (
            f"MatcherEstimator(features={self.features!r}, max_side={self.max_side}, "
            f"max_keypoints={self.max_keypoints}, robust={self.robust!r}, "
            f"reproj_threshold={self.reproj_threshold}, name={self.name!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_nets"] = None
        return state

    # -- the networks ------------------------------------------------------------------------
    def _load(self, key: str) -> Any:
        import torch

        # verified against its pin first; weights_only: tensors only, never code
        return torch.load(verified_path(key), map_location="cpu", weights_only=True)

    def _build(self) -> tuple[Any, ...]:
        """``(device, extract, match)``: kornia's networks with hdreg's verified weights."""
        kf = require_kornia(self.name)
        from hdreg.device import resolve_device

        device = resolve_device(self.device)
        keys, preset = FEATURES[self.features]
        if self.features == "loftr":
            net = kf.LoFTR(pretrained=None)
            net.load_state_dict(self._load(keys[0])["state_dict"])
            return device, net.eval().to(device), None
        if self.features == "disk":
            extractor = kf.DISK()
            extractor.load_state_dict(self._load(keys[0])["extractor"])
        elif self.features == "xfeat":
            extractor = kf.XFeat(top_k=self.max_keypoints)
            extractor.net.load_state_dict(self._load(keys[0]))
        else:
            extractor = kf.ALIKED(
                model_name=self.features, max_num_keypoints=self.max_keypoints,
                detection_threshold=0.0,  # top-k mode: the max_keypoints strongest maxima
            )  # fmt: skip
            _load_strict(extractor, self._load(keys[0]), keys[0])
        # LightGlue's own constructor would download; it is built bare and given the file
        conf = {**kf.LightGlue.features[preset], "weights": None}
        matcher = kf.LightGlue(features=None, **conf)
        _load_strict(matcher, _lightglue_state(self._load(keys[1]), conf), keys[1])
        return device, extractor.eval().to(device), matcher.eval().to(device)

    def _get_nets(self) -> tuple[Any, ...]:
        if self._nets is None:
            self._nets = self._build()
        return self._nets

    def _tensor(self, image: np.ndarray, size: tuple[int, int], device: Any) -> Any:
        import torch

        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # a copy: the caller's array may be read-only (a memory-mapped benchmark)
        return torch.from_numpy(np.array(image)).to(device).float().div(255.0)[None, None]

    def correspondences(
        self, image_a: np.ndarray, image_b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``keypoints_a (K_a, 2)``, ``keypoints_b (K_b, 2)`` in full-resolution pixels and the
        matches ``(M, 2) int64`` of ``(index_a, index_b)``."""
        import torch

        device, extract, match = self._get_nets()
        full = [(im.shape[1], im.shape[0]) for im in (image_a, image_b)]
        small = [network_size(w, h, self.max_side, self.multiple) for w, h in full]
        ta, tb = (
            self._tensor(im, s, device) for im, s in zip((image_a, image_b), small, strict=True)
        )
        with torch.inference_mode():
            if match is None:  # LoFTR: dense matches, which are the keypoints
                out = extract({"image0": ta, "image1": tb})
                pa, pb = out["keypoints0"], out["keypoints1"]
                pairs = np.repeat(np.arange(len(pa), dtype=np.int64)[:, None], 2, axis=1)
            else:
                (pa, da), (pb, db) = (self._features(extract, t) for t in (ta, tb))
                sizes = [torch.tensor([s], device=device, dtype=torch.float32) for s in small]
                data = {
                    f"image{i}": {"keypoints": p[None], "descriptors": d[None], "image_size": size}
                    for i, (p, d, size) in enumerate(((pa, da, sizes[0]), (pb, db, sizes[1])))
                }
                out = match(data)
                pairs = out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)
        points = [_to_full(p.float().cpu().numpy().reshape(-1, 2), s, f)
                  for p, s, f in zip((pa, pb), small, full, strict=True)]  # fmt: skip
        return points[0], points[1], pairs

    def _features(self, extract: Callable, image: Any) -> tuple[Any, Any]:
        """Keypoints ``(K, 2)`` (pixels of ``image``) and descriptors ``(K, D)`` of one image."""
        if self.features == "disk":
            f = extract(
                image.expand(-1, 3, -1, -1), n=self.max_keypoints, pad_if_not_divisible=True
            )[0]
            return f.keypoints, f.descriptors
        if self.features == "xfeat":
            f = extract.detectAndCompute(image, top_k=self.max_keypoints)[0]
            return f["keypoints"], f["descriptors"]
        f = extract(image)[0]
        return f.keypoints, f.descriptors

    # -- the estimate -------------------------------------------------------------------------
    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray) -> PairResult:
        image_a = check_gray_u8(image_a, "image_a")
        image_b = check_gray_u8(image_b, "image_b")
        points_a, points_b, matches = self.correspondences(image_a, image_b)
        details: dict[str, Any] = {
            "matches": len(matches),
            "inliers": 0,
            "budget": self.budget,
            "keypoints_a": points_a,
            "keypoints_b": points_b,
            "match_pairs": matches,
            "inlier_mask": np.zeros(len(matches), bool),
        }
        need = self.min_matches
        if len(matches) < need:
            return PairResult(None, f"{len(matches)} matches, need {need}", details)
        return fit_homography(points_a, points_b, matches, details, self)


def _lightglue_state(state: dict[str, Any], conf: dict[str, Any]) -> dict[str, Any]:
    """A LightGlue release file's entries under the names kornia's ``LightGlue`` uses (as its
    own loader renames them: XFeat's ``matcher.`` prefix, the old per-layer attention names)."""
    prefix = "matcher."
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    for i in range(conf.get("n_layers", 9)):
        for old, new in ((f"self_attn.{i}", f"transformers.{i}.self_attn"),
                         (f"cross_attn.{i}", f"transformers.{i}.cross_attn")):  # fmt: skip
            state = {k.replace(old, new): v for k, v in state.items()}
    return state


def _load_strict(module: Any, state: dict[str, Any], key: str) -> None:
    """Load ``state`` into ``module``; ``ValueError`` when a learned parameter is missing (a file
    for another network), while derived buffers the file does not hold may be."""
    result = module.load_state_dict(state, strict=False)
    parameters = dict(module.named_parameters())
    missing = [k for k in result.missing_keys if k in parameters]
    if missing:
        raise ValueError(
            f"the {key} weights do not fit kornia's network: {len(missing)} parameters missing "
            f"(first {missing[0]})"
        )
