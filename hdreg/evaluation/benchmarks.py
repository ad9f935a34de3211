"""Evaluation sets: the image pairs every method sees, and how their corner errors are taken.

:class:`EvalPairs` is built from a synthetic benchmark (a ``.npz`` file, or pairs generated on the
fly from an image source) or from real HPatches/Oxford pairs. Whatever its origin, a method
receives the same ``(A, B)`` images and its ``H_a_from_b`` is scored by the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdreg.data.benchmark import (
    SyntheticBenchmark,
    make_synthetic_benchmark,
    read_synthetic_benchmarks,
)
from hdreg.data.pairs import RealPair, find_real_pairs
from hdreg.data.sources import (
    load_gray,
    load_images,
    min_source_side,
    resolve_source,
    split_by_image,
)
from hdreg.data.synthetic import DeToneProtocol, PhotometricJitter
from hdreg.evaluation.metrics import corner_error
from hdreg.geometry_np import folds, image_corners, project, rect_corners

__all__ = ["EvalPairs", "real_pairs", "synthetic_pairs"]


@dataclass
class EvalPairs:
    """Pairs to evaluate on.

    Attributes:
        name: what the set is (shown in reports).
        kind: ``"synthetic"`` (patch pairs, error in A's frame) or ``"real"`` (full images, error
            in B's frame, see :mod:`hdreg.evaluation.metrics`).
        ids: one identifier per pair (``pairs.csv``).
        groups: per pair, the sequence (real pairs) or source image (synthetic) it comes from.
        images_a, images_b: ``(H, W) uint8`` arrays, one per pair.
        points_src, points_dst_true: ``(N, 4, 2)`` reference points and their true images.
    """

    name: str
    kind: str
    ids: list[str]
    groups: list[str]
    images_a: list[np.ndarray]
    images_b: list[np.ndarray]
    points_src: np.ndarray
    points_dst_true: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def scoring_homographies(self, H_a_from_b: np.ndarray) -> np.ndarray:
        """The estimates in the direction the reference points are mapped: ``H_a_from_b`` for
        synthetic pairs, ``H_b_from_a`` (the inverse) for real pairs, whose ground truth maps A
        into B. Estimates reach here checked to be invertible (:mod:`hdreg.estimators`)."""
        H = np.asarray(H_a_from_b, np.float64)
        if H.shape != (len(self), 3, 3):
            raise ValueError(f"expected {len(self)} homographies (N, 3, 3), got {H.shape}")
        return H if self.kind == "synthetic" else np.linalg.inv(H)

    def errors(self, H_a_from_b: np.ndarray) -> np.ndarray:
        """Corner error of each pair ``(N,)`` for estimates ``H_a_from_b (N, 3, 3)``."""
        H = self.scoring_homographies(H_a_from_b)
        return corner_error(H, self.points_src, self.points_dst_true)

    def folds(self, H_a_from_b: np.ndarray) -> np.ndarray:
        """``(N,)`` True where an estimate sends a reference corner through infinity or maps the
        four corners to a non-convex (folded) quadrilateral. No view of a plane does that, and
        such an estimate would give an infinite or meaningless corner error."""
        return folds(self.scoring_homographies(H_a_from_b), self.points_src)

    @classmethod
    def from_real(
        cls,
        name: str,
        pairs: Sequence[RealPair],
        images_a: list[np.ndarray],
        images_b: list[np.ndarray],
        H_b_from_a: np.ndarray,
    ) -> EvalPairs:
        """Real pairs scored on the four corners of image A mapped by ``H_b_from_a (N, 3, 3)``
        (the ground truth for images as given, in pixels of B)."""
        corners_a = image_corners([(a.shape[1], a.shape[0]) for a in images_a])
        return cls(
            name=name,
            kind="real",
            ids=[p.pair_id for p in pairs],
            groups=[p.sequence for p in pairs],
            images_a=images_a,
            images_b=images_b,
            points_src=corners_a,
            points_dst_true=project(np.asarray(H_b_from_a), corners_a),
        )

    @classmethod
    def from_synthetic(cls, bench: SyntheticBenchmark, name: str | None = None) -> EvalPairs:
        p = bench.patch_size
        src = np.broadcast_to(rect_corners((p, p)), (len(bench), 4, 2)).copy()
        return cls(
            name=name or (str(bench.path) if bench.path else f"synthetic (seed {bench.seed})"),
            kind="synthetic",
            ids=[str(i) for i in range(len(bench))],
            groups=[str(s) for s in bench.sources],
            images_a=list(bench.patch_a),
            images_b=list(bench.patch_b),
            points_src=src,
            points_dst_true=src + bench.offsets.astype(np.float64),
        )


def synthetic_pairs(
    path: str | None,
    *,
    source: str,
    n: int,
    seed: int,
    split: str,
    split_seed: int,
    split_fractions: tuple[float, float, float],
    coco_split: str,
    rho: float,
    patch_size: int,
    image_size: tuple[int, int],
    jitter: bool | dict[str, float] | None,
) -> EvalPairs:
    """A synthetic evaluation set: read from ``path`` (a ``.npz`` as in docs/conventions.md, whoever
    wrote it), or, when ``path`` is None, ``n`` pairs generated from ``source`` with ``seed`` —
    the same pairs ``hdreg make-benchmark`` writes for those arguments. Built from
    ``hdreg/configs/benchmark/synthetic.yaml``, which holds every default; ``jitter`` as for
    :meth:`~hdreg.data.synthetic.PhotometricJitter.from_spec`."""
    if path:  # one file, or a glob of shards
        return EvalPairs.from_synthetic(read_synthetic_benchmarks(path))
    jitter = PhotometricJitter.from_spec(jitter)
    protocol = DeToneProtocol(tuple(image_size), int(patch_size), float(rho), jitter)
    min_side = min_source_side(protocol.patch_size, protocol.rho)  # as make-benchmark
    images = load_images(
        resolve_source(source, coco_split=coco_split), protocol.image_size, min_side=min_side
    )
    if split != "all":
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be all, train, val or test, got {split!r}")
        idx = split_by_image(images.groups, tuple(split_fractions), split_seed)
        images = images.subset(idx[("train", "val", "test").index(split)])
    bench = make_synthetic_benchmark(images, n, seed, protocol)
    extra = ", jitter" if jitter else ""
    label = f"{n} synthetic pairs from {source} (seed {seed}, rho {rho:g}{extra})"
    return EvalPairs.from_synthetic(bench, name=label)


def real_pairs(root: str) -> EvalPairs:
    """Every (1, k) pair with ground truth under ``root`` (HPatches or Oxford layout), at full
    resolution; the two images of a pair may differ in size."""
    pairs = find_real_pairs(root)
    cache: dict[Path, np.ndarray] = {}  # the reference image is shared by a sequence's pairs
    for p in pairs:
        if p.path_a not in cache:
            cache[p.path_a] = load_gray(p.path_a)
    images_a = [cache[p.path_a] for p in pairs]
    images_b = [load_gray(p.path_b) for p in pairs]
    H_true = np.stack([p.H_b_from_a for p in pairs])
    return EvalPairs.from_real(f"real pairs under {root}", pairs, images_a, images_b, H_true)
