"""Evaluation sets: the image pairs every method sees, and how their corner errors are taken.

:class:`EvalPairs` is built from a synthetic benchmark (a ``.npz`` file, or pairs generated on the
fly from an image source) or from real HPatches/Oxford pairs. Whatever its origin, a method
receives the same ``(A, B)`` images and its ``H_a_from_b`` is scored by the same function. A real
pair whose ground truth or images cannot be used is left out of the scores and listed, with the
reason, in :attr:`EvalPairs.skipped`; the other pairs are scored all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdreg.data.benchmarks.synthetic import (
    SyntheticBenchmark,
    make_synthetic_benchmark,
    read_synthetic_benchmarks,
)
from hdreg.data.decoding import load_gray, load_images, min_source_side
from hdreg.data.real.pairs import (
    RealPair,
    check_ground_truth,
    crosses_horizon,
    find_real_pairs,
    overlap_polygon,
)
from hdreg.data.sources import resolve_source
from hdreg.data.splits import images_of_split
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter
from hdreg.evaluation.metrics import corner_error
from hdreg.geometry_np import folds, project, rect_corners

__all__ = [
    "EvalPairs",
    "LoadedPair",
    "SkippedPair",
    "in_pair_order",
    "load_real_pairs",
    "real_pairs",
    "synthetic_pairs",
]


@dataclass(frozen=True)
class SkippedPair:
    """A pair left out of the scores: ``id`` and ``group`` as in :class:`EvalPairs`, and why
    (its ground truth or one of its images cannot be used)."""

    id: str
    group: str
    reason: str


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
        points_src, points_dst_true: ``(N, K, 2)`` reference points and their true images: the
            four corners (``K = 4``), unless a real pair is scored on a polygon (see
            :meth:`from_real`); shorter polygons are padded by repeating their last vertex.
        counts: ``(N,)`` how many of the ``K`` points each pair uses; ``None``: all of them.
        clipped: ``(N,)`` True for a real pair scored on the polygon of the part of A that lands
            in B instead of A's corners; ``None``: none is.
        skipped: the pairs left out of the scores, with the reason.
    """

    name: str
    kind: str
    ids: list[str]
    groups: list[str]
    images_a: list[np.ndarray]
    images_b: list[np.ndarray]
    points_src: np.ndarray
    points_dst_true: np.ndarray
    counts: np.ndarray | None = None
    clipped: np.ndarray | None = None
    skipped: list[SkippedPair] = field(default_factory=list)

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
        return corner_error(H, self.points_src, self.points_dst_true, counts=self.counts)

    def folds(self, H_a_from_b: np.ndarray) -> np.ndarray:
        """``(N,)`` True where an estimate sends a reference point through infinity or maps the
        (convex) reference polygon to a non-convex (folded) one. No view of a plane does that,
        and such an estimate would give an infinite or meaningless corner error."""
        H = self.scoring_homographies(H_a_from_b)
        if self.clipped is None:
            return folds(H, self.points_src[:, :4])
        out = np.zeros(len(self), bool)
        corners = ~self.clipped
        out[corners] = folds(H[corners], self.points_src[corners, :4])
        for i in np.flatnonzero(self.clipped):
            out[i] = _polygon_folds(H[i], self.points_src[i, : self.counts[i]])
        return out

    @classmethod
    def from_real(
        cls,
        name: str,
        pairs: Sequence[RealPair],
        images_a: list[np.ndarray],
        images_b: list[np.ndarray],
        H_b_from_a: np.ndarray,
        skipped: Sequence[SkippedPair] = (),
    ) -> EvalPairs:
        """Real pairs scored in pixels of B on points of A mapped by ``H_b_from_a (N, 3, 3)``
        (the ground truth for the images as given): the four corners of image A, or, when the
        ground truth sends one of them behind the camera, the vertices of the part of A that
        lands inside B (:func:`hdreg.data.real.pairs.overlap_polygon`). A pair with no such part
        cannot be scored: it joins ``skipped`` (after the ones given)."""
        H_b_from_a = np.asarray(H_b_from_a, np.float64).reshape(-1, 3, 3)
        skipped = list(skipped)
        keep: list[int] = []
        points: list[np.ndarray] = []
        clipped: list[bool] = []
        for i, (pair, a, b) in enumerate(zip(pairs, images_a, images_b, strict=True)):
            size_a, size_b = _size(a), _size(b)
            crosses = crosses_horizon(H_b_from_a[i], size_a)
            if not crosses:
                region = rect_corners(size_a)
            elif len(region := overlap_polygon(H_b_from_a[i], size_a, size_b)) == 0:
                reason = (
                    f"homography file {pair.path_h}: it maps part of {pair.path_a.name} "
                    f"({size_a[0]}x{size_a[1]}) behind the camera and no part of it inside "
                    f"{pair.path_b.name} ({size_b[0]}x{size_b[1]}): nothing to score"
                )
                skipped.append(SkippedPair(pair.pair_id, pair.sequence, reason))
                continue
            keep.append(i)
            points.append(region)
            clipped.append(crosses)
        k = max((len(p) for p in points), default=4)
        src = np.zeros((0, k, 2))
        if points:
            src = np.stack([np.concatenate([p, np.repeat(p[-1:], k - len(p), 0)]) for p in points])
        any_clipped = any(clipped)
        return cls(
            name=name,
            kind="real",
            ids=[pairs[i].pair_id for i in keep],
            groups=[pairs[i].sequence for i in keep],
            images_a=[images_a[i] for i in keep],
            images_b=[images_b[i] for i in keep],
            points_src=src,
            points_dst_true=project(H_b_from_a[keep], src),
            counts=np.array([len(p) for p in points]) if any_clipped else None,
            clipped=np.array(clipped) if any_clipped else None,
            skipped=skipped,
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


def _folder_as_benchmark(folder: Path) -> str:
    """Why a folder given as ``benchmark.path`` is refused, and what to give instead."""
    shards = sorted(folder.glob("*.npz"))
    if shards:
        hint = (
            f"; it holds {len(shards)} .npz file(s): name one (benchmark.path={shards[0]}) or a "
            f"glob of one run's shards (benchmark.path='{folder}/<name>-*.npz')"
        )
    else:
        hint = f"; for a folder of real image pairs use benchmark=pairs benchmark.root={folder}"
    return f"benchmark.path={folder} is a folder: expected an .npz benchmark file{hint}"


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
    :meth:`~hdreg.data.synthetic.detone.PhotometricJitter.from_spec`."""
    if path:  # one file, or a glob of shards
        if Path(path).expanduser().is_dir():
            raise IsADirectoryError(_folder_as_benchmark(Path(path).expanduser()))
        return EvalPairs.from_synthetic(read_synthetic_benchmarks(path))
    jitter = PhotometricJitter.from_spec(jitter)
    protocol = DeToneProtocol(tuple(image_size), int(patch_size), float(rho), jitter)
    min_side = min_source_side(protocol.patch_size, protocol.rho)  # as make-benchmark
    images = load_images(
        resolve_source(source, coco_split=coco_split), protocol.image_size, min_side=min_side
    )
    if split != "all":
        options = ("benchmark.split", "benchmark.split_fractions")
        images = images_of_split(images, split, split_fractions, split_seed, options=options)
    bench = make_synthetic_benchmark(images, n, seed, protocol)
    extra = ", jitter" if jitter else ""
    label = f"{n} synthetic pairs from {source} (seed {seed}, rho {rho:g}{extra})"
    return EvalPairs.from_synthetic(bench, name=label)


def _size(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]


def _polygon_folds(H_dst_from_src: np.ndarray, polygon: np.ndarray) -> bool:
    """Whether ``H_dst_from_src (3, 3)`` sends a vertex of the convex ``polygon (K, 2)`` through
    the horizon or maps it to a non-convex polygon (:func:`hdreg.geometry_np.folds` for K
    vertices)."""
    q = np.concatenate([polygon, np.ones((len(polygon), 1))], axis=1) @ H_dst_from_src.T
    w = q[:, 2]
    if not (np.all(w > 0) or np.all(w < 0)):
        return True
    mapped = q[:, :2] / w[:, None]
    edges = np.roll(mapped, -1, axis=0) - mapped
    nxt = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * nxt[:, 1] - edges[:, 1] * nxt[:, 0]
    convex = np.all(cross > 0) or np.all(cross < 0)
    return not (convex and np.isfinite(mapped).all())


@dataclass
class LoadedPair:
    """A real pair whose images could be read: the images as scored, and the ``(width,
    height)`` of the files (the resolution of the H file)."""

    pair: RealPair
    image_a: np.ndarray
    image_b: np.ndarray
    size_a: tuple[int, int]
    size_b: tuple[int, int]


def load_real_pairs(
    pairs: Sequence[RealPair],
    load: Callable[[Path], tuple[np.ndarray, tuple[int, int]]],
) -> tuple[list[LoadedPair], list[SkippedPair]]:
    """Read the images of ``pairs`` (from :func:`hdreg.data.real.pairs.find_real_pairs` with
    ``keep_unusable=True``) with ``load`` (path -> image as scored, file's ``(width,
    height)``). A pair whose ground truth is unusable (its ``problem``) or one of whose images
    cannot be read is skipped, with the reason; the others are returned, in order."""
    loaded: list[LoadedPair] = []
    skipped: list[SkippedPair] = []
    cache: dict[Path, tuple[np.ndarray, tuple[int, int]]] = {}  # a sequence's reference image
    for p in pairs:
        if p.problem is not None:
            skipped.append(SkippedPair(p.pair_id, p.sequence, p.problem))
            continue
        try:
            if p.path_a not in cache:
                cache[p.path_a] = load(p.path_a)
            (a, size_a), (b, size_b) = cache[p.path_a], load(p.path_b)
        except (ValueError, OSError) as exc:  # load_gray: "cannot read image <path>: ..."
            skipped.append(SkippedPair(p.pair_id, p.sequence, " ".join(str(exc).split())))
            continue
        loaded.append(LoadedPair(p, a, b, size_a, size_b))
    return loaded, skipped


def in_pair_order(skipped: list[SkippedPair], pairs: Sequence[RealPair]) -> list[SkippedPair]:
    """``skipped`` sorted as their pairs are in ``pairs``."""
    order = {p.pair_id: i for i, p in enumerate(pairs)}
    return sorted(skipped, key=lambda s: order.get(s.id, len(order)))


def real_pairs(root: str) -> EvalPairs:
    """Every (1, k) pair with ground truth under ``root`` (HPatches or Oxford layout), at full
    resolution; the two images of a pair may differ in size. Pairs whose ground truth or images
    cannot be used are skipped (:attr:`EvalPairs.skipped`), the others scored."""
    found = find_real_pairs(root, keep_unusable=True)

    def load(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        image = load_gray(path)
        return image, _size(image)

    loaded, skipped = load_real_pairs(found, load)
    usable = [x.pair for x in loaded]
    check_ground_truth(usable, [x.size_a for x in loaded], [x.size_b for x in loaded])
    H_true = np.array([p.H_b_from_a for p in usable]).reshape(-1, 3, 3)
    pairs = EvalPairs.from_real(
        f"real pairs under {root}",
        usable,
        [x.image_a for x in loaded],
        [x.image_b for x in loaded],
        H_true,
        skipped,
    )
    pairs.skipped = in_pair_order(pairs.skipped, found)
    return pairs
