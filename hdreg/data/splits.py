"""Train / val / test splits by image: whole images (or groups of near-duplicate frames) go to
one split, so that no image feeds two."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from hdreg.data.decoding import ImageSet

__all__ = ["SPLITS", "images_of_split", "split_by_image"]


def split_by_image(
    groups: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Assign image indices to (train, val, test) so that a group never spans two splits.

    Groups are ordered by a seeded hash (stable across Python runs and platforms) and cut by
    cumulative share of images. Every split with a positive fraction gets at least one group when
    there are enough groups.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    unique = sorted(set(groups))
    unique.sort(key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    wanted = [k for k in range(3) if fr[k] > 0]
    if len(unique) < len(wanted):
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        raise ValueError(
            f"cannot split {len(unique)} image group(s) ({shown}; {len(groups)} images) into "
            f"{len(wanted)} non-empty splits (frames named '<scene>_frame-<n>' share a group); "
            "use more images or set a split fraction to 0"
        )
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    n = len(groups)
    # Small splits (val, test) are filled first from the end of the order, then train gets the rest.
    assign: dict[str, int] = {}
    order = list(unique)
    for k in (2, 1):
        if fr[k] <= 0:
            continue
        target = fr[k] * n
        taken = 0
        while order and (taken == 0 or taken + counts[order[-1]] <= target + 0.5):
            if len(order) <= sum(1 for j in range(k) if fr[j] > 0):
                break  # leave at least one group for each remaining split
            g = order.pop()
            assign[g] = k
            taken += counts[g]
    for g in order:
        assign[g] = 0 if fr[0] > 0 else (1 if fr[1] > 0 else 2)
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, g in enumerate(groups):
        out[assign[g]].append(i)
    return out


#: the splits of :func:`split_by_image`, in the order of its fractions
SPLITS = ("train", "val", "test")


def images_of_split(
    images: ImageSet,
    split: str,
    fractions: Sequence[float],
    seed: int,
    *,
    options: tuple[str, str] = ("--split", "--split-fractions"),
) -> ImageSet:
    """The images of ``split`` (train, val or test) of :func:`split_by_image`. ``ValueError``
    naming the split and the ``options`` that set the split and the fractions (``--split``,
    ``--split-fractions``, or ``benchmark.split``, ``benchmark.split_fractions``) when
    ``fractions`` give the split no share, so that it would hold no image."""
    split_option, fractions_option = options
    if split not in SPLITS:
        raise ValueError(f"{split_option} must be all, train, val or test, got {split!r}")
    fractions = tuple(float(f) for f in fractions)
    idx = split_by_image(images.groups, fractions, seed)  # refuses fractions that are no split
    k = SPLITS.index(split)
    if fractions[k] <= 0:
        if fractions_option.startswith("--"):
            given = f"{fractions_option} {' '.join(f'{f:g}' for f in fractions)}"
        else:
            given = f"{fractions_option}=[{', '.join(f'{f:g}' for f in fractions)}]"
        raise ValueError(
            f"split {split!r} has fraction 0 in {given} (train, val, test), so it holds no "
            f"images: give {split} a positive share there, or choose another {split_option}"
        )
    return images.subset(idx[k])
