"""The synthetic MS-COCO test protocol of IHN, RHWF and MCNet, written as fixed benchmark files.

Those papers score on COCO test2017 (40,670 images): each image, in sorted order, gives one pair —
resized to 320×240, a 128×128 patch whose top-left corner leaves a margin of 32 px, its four
corners moved by integer offsets in [−32, 32] — and report the MACE over all of them. They draw
the pairs on the fly in shuffled DataLoader workers and never save them, so their exact pairs
cannot be rebuilt; hdreg writes the same protocol once, seeded, to ordinary benchmark files
(docs/conventions.md), so that every method is scored on identical pairs. Differences that remain:
those papers feed RGB images to their networks, hdreg's benchmark files hold grayscale.

Pair ``i`` depends only on ``(seed, i)`` and image ``i``: a ``limit`` gives the first pairs of
the full set, and shards concatenate to it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hdreg.data.benchmarks.synthetic import SyntheticBenchmark, write_synthetic_benchmark
from hdreg.data.decoding import load_gray, resize_gray
from hdreg.data.seeding import STREAMS, pair_rng
from hdreg.data.sources import ImageSource, folder_source, sample_source
from hdreg.data.synthetic.detone import DeToneProtocol, generate_pair
from hdreg.files import atomic_write

__all__ = ["COCO_TEST2017", "PROTOCOLS", "coco_test_images", "write_coco_test2017"]

COCO_TEST2017 = DeToneProtocol(image_size=(320, 240), patch_size=128, rho=32.0)
PROTOCOLS = ("coco-test2017",)


def coco_test_images(source: str | Path) -> ImageSource:
    """The images of the protocol: ``source/test2017/`` when ``source`` is a COCO root holding
    it, scikit-image's photos for ``"samples"``, otherwise every image under ``source`` (sorted
    by path)."""
    if str(source) == "samples":
        return sample_source()
    root = Path(source).expanduser()
    if (root / "test2017").is_dir():
        root = root / "test2017"
    return folder_source(root)


def _shard_paths(out: Path, n: int, shard_size: int | None) -> list[tuple[Path, int, int]]:
    """``(path, first pair, end)`` of each output file: ``out`` itself, or ``<stem>-00000.npz``…"""
    if shard_size is None:
        return [(out, 0, n)]
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    return [
        (out.with_name(f"{out.stem}-{i:05d}.npz"), start, min(start + shard_size, n))
        for i, start in enumerate(range(0, n, shard_size))
    ]


def _run_id(files: list[str], seed: int, shard_size: int | None) -> str:
    """The same for every shard of one run and for a rerun with the same arguments and images;
    different for another seed, limit, shard size or image list."""
    key = json.dumps(["coco-test2017", int(seed), shard_size, files])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _earlier_shards(out: Path) -> list[Path]:
    """Shards of an earlier run into the same ``out`` (``<stem>-NNNNN.npz``)."""
    return sorted(out.parent.glob(f"{glob.escape(out.stem)}-[0-9][0-9][0-9][0-9][0-9].npz"))


def write_coco_test2017(
    source: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write one pair per image of ``source`` (sorted) under the COCO test protocol.

    Args:
        source: a folder of images, or a COCO root holding ``test2017/``.
        out: the ``.npz`` to write; with ``shard_size``, files ``<stem>-00000.npz``, … instead.
        seed: seed of the pairs.
        limit: use only the first ``limit`` images (a quick subset).
        shard_size: pairs per file (e.g. 10,000 for the 40,670 pairs of test2017).
        progress: called as ``progress(done, total)`` after each pair.

    Returns the paths written. Each file is a complete benchmark; its extra key ``index`` holds
    each pair's image index in the sorted list, and ``protocol`` the protocol's name.
    Unreadable images are skipped with one warning (their index is simply absent).

    Shards also hold ``run`` (an identifier of the arguments and image list), ``shard`` and
    ``shards`` (its position and the count), so that a reader can tell that a glob matched
    exactly one whole run. They are written under hidden names and renamed only once every shard
    is written, replacing the shards of an earlier run into the same ``out``; a failure leaves
    the earlier files as they were.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"benchmark files end in .npz, got {out}")
    images = coco_test_images(source)
    files = images.files
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        files = files[:limit]
    shards = _shard_paths(out, len(files), shard_size)
    run = _run_id(list(files), seed, shard_size)
    skipped: list[str] = []
    if shard_size is None:  # one file, written atomically by write_synthetic_benchmark
        skipped += _write_part(
            images, files, 0, len(files), out, seed=seed, extra={}, progress=progress
        )
    else:
        # Every shard is staged (hidden: no glob meets it) and put in place only once all are
        # written: the stack's exits rename them all, or remove them all on an exception.
        with contextlib.ExitStack() as stack:
            for k, (path, start, end) in enumerate(shards):
                staging = stack.enter_context(atomic_write(path))
                extra = {
                    "run": np.array(run), "shard": np.int64(k), "shards": np.int64(len(shards)),
                }  # fmt: skip
                skipped += _write_part(
                    images, files, start, end, staging, seed=seed, extra=extra, progress=progress
                )
            finals = {path for path, _, _ in shards}
            for old in _earlier_shards(out):
                if old not in finals:
                    old.unlink()
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) under {images.root}: "
            + "; ".join(skipped[:20]),
            UserWarning,
            stacklevel=2,
        )
    return [path for path, _, _ in shards]


def _write_part(
    images: ImageSource,
    files: list[str],
    start: int,
    end: int,
    path: Path,
    *,
    seed: int,
    extra: dict[str, np.ndarray],
    progress: Callable[[int, int], None] | None,
) -> list[str]:
    """Write pairs ``start..end-1`` to ``path``; returns the images skipped as unreadable.
    ``ValueError`` naming them when none of the range is readable."""
    protocol = COCO_TEST2017
    p = protocol.patch_size
    skipped: list[str] = []
    m = end - start
    patch_a = np.empty((m, p, p), np.uint8)
    patch_b = np.empty((m, p, p), np.uint8)
    offsets = np.empty((m, 4, 2), np.float32)
    corners = np.empty((m, 4, 2), np.float32)
    index = np.empty(m, np.int64)
    names: list[str] = []
    j = 0
    for i in range(start, end):
        try:
            gray = load_gray(images.root / files[i])
        except ValueError as exc:
            skipped.append(f"{files[i]} ({exc.__cause__ or exc})")
            continue
        image = resize_gray(gray, protocol.image_size)
        rng = pair_rng(seed, STREAMS["benchmark"], i)
        pair = generate_pair(image, protocol, rng, integer_offsets=True)
        patch_a[j], patch_b[j] = pair["patch_a"], pair["patch_b"]
        offsets[j], corners[j] = pair["offsets"], pair["corners"]
        index[j] = i
        names.append(files[i])
        j += 1
        if progress is not None:
            progress(i + 1, len(files))
    if j == 0:
        raise ValueError(
            f"no readable image among pairs {start}..{end - 1} of {images.root}: "
            + "; ".join(skipped[:5])
            + (f"; … ({len(skipped)} in all)" if len(skipped) > 5 else "")
        )
    bench = SyntheticBenchmark(
        patch_a[:j], patch_b[:j], offsets[:j], corners[:j], np.array(names, dtype=str),
        rho=protocol.rho, patch_size=p, seed=int(seed), image_size=protocol.image_size,
        extra={"index": index[:j], "protocol": np.array("coco-test2017"), **extra},
    )  # fmt: skip
    write_synthetic_benchmark(bench, path)
    return skipped
