"""The HPatches homography protocol of LightGlue / glue-factory, as an evaluation set.

Protocol: every sequence of ``hpatches-sequences-release`` except the 8 with very large images
(the ones LoFTR also drops), so 108 sequences × 5 pairs (1, k), k = 2…6 = 540 pairs; both images
of a pair resized so that their short side is 480 px (area interpolation); the error of a pair is
the mean distance of the four corners of image A mapped by the estimated and the true
homography, in pixels of the resized image B; the figures reported are the AUC of that error at
1, 3 and 5 px (:func:`hdreg.evaluation.metrics.error_auc`).

The ground truth is carried to the resized images with the pixel-centre convention of
docs/conventions.md (``hdreg.geometry.rescale_homography``). hdreg's methods see grayscale
images; glue-factory's matchers see RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from hdreg.data.decoding import load_gray, resize_gray
from hdreg.data.real.pairs import check_ground_truth, find_real_pairs
from hdreg.evaluation.benchmarks import EvalPairs, in_pair_order, load_real_pairs
from hdreg.geometry import rescale_homography

__all__ = [
    "LARGE_SEQUENCES",
    "PROTOCOL_PAIRS",
    "PROTOCOL_SEQUENCES",
    "hpatches_pairs",
    "short_side_size",
]

# Sequences left out by the protocol: their images are far larger than the others.
LARGE_SEQUENCES = (
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
)  # fmt: skip
PROTOCOL_SEQUENCES = 108
PROTOCOL_PAIRS = 540


def short_side_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the shorter side is ``short_side`` (rounded)."""
    w, h = size
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def hpatches_pairs(
    root: str,
    *,
    short_side: int = 480,
    exclude: tuple[str, ...] | list[str] = LARGE_SEQUENCES,
) -> EvalPairs:
    """The HPatches pairs under ``root`` (a folder of sequences in the HPatches layout, e.g.
    ``data/hpatches-sequences-release`` from ``hdreg data download hpatches``), resized so that the
    short side is ``short_side`` (0 keeps full resolution), without the sequences named in
    ``exclude``.

    A pair whose ground truth or images cannot be used is skipped, with the reason
    (:attr:`EvalPairs.skipped`). Warns when the pairs scored are not the protocol's 540 (e.g. a
    partial copy), so that a figure on a subset is never mistaken for the published protocol.
    """
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0 (0 = full resolution), got {short_side}")
    found = find_real_pairs(root, keep_unusable=True)
    excluded = set(exclude)
    kept = [p for p in found if Path(p.sequence).name not in excluded]
    if not kept:
        raise ValueError(
            f"no pairs left under {root} once the sequences {', '.join(sorted(excluded))} are "
            "left out"
        )

    def load(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        full = load_gray(path)
        size = (full.shape[1], full.shape[0])
        if short_side == 0:
            return full, size
        return resize_gray(full, short_side_size(size, short_side)), size

    loaded, skipped = load_real_pairs(kept, load)
    H_true = []
    for x in loaded:
        H = torch.from_numpy(np.asarray(x.pair.H_b_from_a, np.float64))[None]
        new_a = (x.image_a.shape[1], x.image_a.shape[0])
        new_b = (x.image_b.shape[1], x.image_b.shape[0])
        H_true.append(rescale_homography(H, x.size_b, new_b, x.size_a, new_a)[0].numpy())
    usable = [x.pair for x in loaded]
    # at full resolution, as the H files are
    check_ground_truth(usable, [x.size_a for x in loaded], [x.size_b for x in loaded])
    resized = f"short side {short_side} px" if short_side else "full resolution"
    sequences = sorted({p.sequence for p in kept})
    pairs = EvalPairs.from_real(
        f"HPatches protocol ({len(sequences)} sequences, {resized}) under {root}",
        usable,
        [x.image_a for x in loaded],
        [x.image_b for x in loaded],
        np.array(H_true).reshape(-1, 3, 3),
        skipped,
    )
    pairs.skipped = in_pair_order(pairs.skipped, kept)
    if len(pairs) != PROTOCOL_PAIRS:
        scored = sorted(set(pairs.groups))
        left_out = f" ({len(pairs.skipped)} skipped)" if pairs.skipped else ""
        warnings.warn(
            f"{root}: {len(pairs)} pairs in {len(scored)} sequences{left_out}, while the HPatches "
            f"protocol has {PROTOCOL_PAIRS} pairs in {PROTOCOL_SEQUENCES} sequences; the figures "
            "are for this subset only",
            UserWarning,
            stacklevel=2,
        )
    return pairs
