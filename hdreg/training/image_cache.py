"""On-disk image cache: decode, convert and resize a source's images once, memory-map them after.

:func:`load_cached_images` returns the same :class:`~hdreg.data.decoding.ImageSet` as
:func:`~hdreg.data.decoding.load_images` (same files skipped with the same single warning, same
pixels: the same ``load_gray`` and ``resize_gray``), but the images live in a ``.npy`` file
opened with ``mmap_mode="r"``: the second call costs one ``stat`` per file and opening a map, and
every process that maps the file shares one copy in the page cache (COCO train2014 at 320×240:
about 83k images, 6.4 GB).

Files in ``cache_dir``, per source root and image size (``<base>`` = root name, a hash of the
root's absolute path, ``<W>x<H>``):

* ``<base>.json``: the index: format version, key, data file name, image size, file names (relative
  to the root, in order), their split groups, and the files skipped as unreadable;
* ``<base>-<key16>.npy``: the images, ``(N, H, W) uint8``, in the index's order;
* ``<base>.lock``: serializes building between processes (POSIX ``flock``).

The key hashes the format version, the image size, the root and every file's relative path, size
and modification time (ns). When it changes (a file added, removed, rewritten or touched) the
cache is rebuilt: the images are written to a staging file (:func:`hdreg.files.atomic_write`),
renamed into place when complete, the index is replaced atomically, and the stale ``.npy`` file is
deleted (processes that still map it keep reading their copy); so are staging files that a killed
builder left. A different image size is a different cache (``<W>x<H>`` in the name), so two sizes
of one source can coexist.

Decoding runs in ``workers`` processes started by forkserver (spawn where there is none), never
forked from the caller: a child forked while the caller's OpenCV thread pool is busy can deadlock
in OpenCV. Such processes re-import the main module, so call this from a guarded script
(``if __name__ == "__main__":``), an interactive session or a notebook, not from stdin, or pass
``workers=1``.

A ``np.memmap`` is copied whole when it is pickled (spawn or forkserver DataLoader workers, DDP's
spawn launcher); ``lazy=True`` returns :class:`~hdreg.training.mapped_images.MappedImages` instead,
which pickles as its path (see :mod:`hdreg.training.mapped_images`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import numpy as np

from hdreg.data.decoding import (
    ImageSet,
    check_image_size,
    decode_resized,
    no_usable_image,
    warn_skipped,
)
from hdreg.data.sources import ImageSource
from hdreg.files import STAGING_MARK, atomic_write
from hdreg.training.mapped_images import MappedImages

__all__ = ["CACHE_VERSION", "cache_key", "load_cached_images"]

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes what a cached image holds: every cache is then rebuilt.
CACHE_VERSION = 1
_CHUNK = 1024  # files per round trip to the decoding processes (bounds the memory in flight)


def _file_stats(source: ImageSource) -> list[tuple[str, int, int]]:
    out = []
    for rel in source.files:
        st = os.stat(source.root / rel)
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def cache_key(source: ImageSource, image_size: tuple[int, int]) -> str:
    """Hex SHA-256 of what the cached images depend on: format version, image size, the root,
    and every file's relative path, size and modification time."""
    return _key(source, image_size, _file_stats(source))


def _key(source: ImageSource, image_size: tuple[int, int], stats: list, min_side: int = 0) -> str:
    parts: list = [CACHE_VERSION, list(image_size), str(source.root.resolve()), stats]
    if min_side:  # which images are skipped as too small (absent: the keys of earlier caches)
        parts.append({"min_side": int(min_side)})
    blob = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _base_name(source: ImageSource, image_size: tuple[int, int]) -> str:
    root = source.root.resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name) or "images"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return f"{slug}-{digest}-{image_size[0]}x{image_size[1]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (POSIX ``flock``); yields whether a lock is held."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent builders each write their own staging file
        yield False
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _decode(path: str, image_size: tuple[int, int], min_side: int = 0) -> np.ndarray | str:
    """One resized image, or the reason it cannot be used (as ``load_images`` reports it)."""
    try:
        return decode_resized(path, image_size, min_side)
    except ValueError as exc:
        return str(exc.__cause__ or exc)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one thread per decoding process, or N processes oversubscribe N-fold


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fresh decoding processes, never forked from this one.

    A child forked while this process's OpenCV thread pool is in use can deadlock inside OpenCV
    (seen here: ``cv2.setNumThreads`` in the child hung in ``pthread_cond_destroy``), and the
    caller has usually just used OpenCV. Forkserver (POSIX) or spawn start from a clean process.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _decoded(
    paths: list[str], image_size: tuple[int, int], workers: int, min_side: int = 0
) -> Iterator:
    """``_decode`` of every path, in order, in ``workers`` processes when more than one."""
    if workers <= 1 or len(paths) < 2:
        for p in paths:
            yield _decode(p, image_size, min_side)
        return
    pool = ProcessPoolExecutor(
        min(workers, len(paths)), mp_context=_pool_context(), initializer=_init_worker
    )
    with pool:
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start : start + _CHUNK]
            chunksize = max(1, len(chunk) // (4 * workers))
            try:
                yield from pool.map(
                    _decode, chunk, [image_size] * len(chunk), [min_side] * len(chunk),
                    chunksize=chunksize,
                )  # fmt: skip
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "an image decoding process died. New processes re-import the main module: "
                    "run from a script file whose entry point is guarded by "
                    "`if __name__ == '__main__':` (not from stdin), or pass workers=1"
                ) from exc


def _read_index(path: Path, key: str, image_size: tuple[int, int]) -> dict | None:
    """The index at ``path`` if it is current (same key) and its data file is intact."""
    try:
        index = json.loads(path.read_text())
        if index.get("version") != CACHE_VERSION or index.get("key") != key:
            return None
        w, h = image_size
        data = np.load(path.parent / index["data"], mmap_mode="r")
        if data.dtype != np.uint8 or data.shape != (len(index["names"]), h, w):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing, half-written or foreign files
        return None
    return index


def _build(
    source: ImageSource,
    image_size: tuple[int, int],
    key: str,
    cache_dir: Path,
    base: str,
    workers: int,
    warn: bool,
    min_side: int = 0,
) -> dict:
    """Decode every file into ``<base>-<key16>.npy`` and write the index; returns the index."""
    w, h = image_size
    n_files = len(source.files)
    log.info("caching %d images of %s at %dx%d in %s", n_files, source.root, w, h, cache_dir)
    t0 = time.perf_counter()
    names: list[str] = []
    groups: list[str] = []
    skipped: list[str] = []
    final = cache_dir / f"{base}-{key[:16]}.npy"
    with atomic_write(final, durable=False) as staging:
        data: np.memmap | None = np.lib.format.open_memmap(
            staging, mode="w+", dtype=np.uint8, shape=(n_files, h, w)
        )
        try:
            paths = [str(source.root / rel) for rel in source.files]
            for i, result in enumerate(_decoded(paths, image_size, workers, min_side)):
                rel = source.files[i]
                if isinstance(result, str):
                    skipped.append(f"{rel} ({result})")
                    continue
                data[len(names)] = result
                names.append(rel)
                groups.append(source.group_of(i))
            if not names:
                if skipped and warn:
                    warn_skipped(source, skipped, stacklevel=3)
                raise no_usable_image(source)
            if len(names) < n_files:  # unreadable files: keep only the rows written
                with atomic_write(staging, durable=False) as smaller:
                    _write_first_rows(data, len(names), smaller)
                    data = None  # closes the larger map before its file is replaced
            else:
                data.flush()
        finally:
            data = None  # closes the map before its file is renamed or removed
    index = {
        "version": CACHE_VERSION,
        "key": key,
        "data": final.name,
        "image_size": [w, h],
        "root": str(source.root),
        "names": names,
        "groups": groups,
        "skipped": skipped,
    }
    with atomic_write(cache_dir / f"{base}.json", durable=False) as index_tmp:
        index_tmp.write_text(json.dumps(index))
    log.info("cached %d images in %.1f s", len(names), time.perf_counter() - t0)
    return index


def _write_first_rows(data: np.memmap, n: int, path: Path) -> None:
    """Write the first ``n`` rows of ``data`` as a new ``.npy`` file at ``path``."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *data.shape[1:]))
    for start in range(0, n, _CHUNK):
        out[start : start + _CHUNK] = data[start : min(n, start + _CHUNK)]
    out.flush()


def _remove_stale(cache_dir: Path, base: str, keep: str, staging_files: bool) -> None:
    """Delete data files of ``base`` other than ``keep`` (and, with ``staging_files``, the staging
    files of its data and index that killed builders left: hidden names holding ``STAGING_MARK``,
    see :func:`hdreg.files.staging_path`)."""
    stale = [p for p in cache_dir.glob(f"{base}-*.npy") if p.name != keep]
    if staging_files:
        stale += [
            p
            for p in cache_dir.glob(f".*{STAGING_MARK}*")
            if p.name.lstrip(".").startswith((f"{base}-", f"{base}."))
        ]
    for path in stale:
        with contextlib.suppress(OSError):  # e.g. still mapped on Windows: left for next time
            path.unlink()


def load_cached_images(
    source: ImageSource,
    image_size: tuple[int, int],
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    warn: bool = True,
    lazy: bool = False,
    min_side: int = 0,
) -> ImageSet:
    """:func:`~hdreg.data.decoding.load_images`, decoded once into a memory-mapped cache.

    The first call (or the first after the source changed) decodes every file, in ``workers``
    processes, into ``cache_dir``; later calls open the cached file. See the module docstring for
    the layout, the key and what happens on a change.

    Args:
        source: the image files.
        image_size: ``(width, height)`` the images are resized to.
        cache_dir: folder of the cache (created if missing).
        workers: decoding processes (default ``min(8, CPU count)``, fewer for sources of under
            2048 files, one per 256; 1 decodes in this process). The order of the images is the
            source's whatever the number.
        warn: emit one ``UserWarning`` naming the unreadable files (also on a cache hit).
        lazy: return the images as :class:`MappedImages` (pickles by path, subsets without
            copying) instead of a read-only ``np.memmap``.
        min_side: skip images whose shorter side is under this many pixels (as
            ``load_images``).

    Returns:
        An ``ImageSet`` whose ``images`` are the cached ``(N, H, W) uint8`` array, read-only.

    Raises:
        ValueError: no file of the source is a readable image (as ``load_images``).
    """
    image_size = check_image_size(image_size)
    if workers is None:  # starting processes (about a second) pays off from a few hundred files
        workers = max(1, min(8, os.cpu_count() or 1, len(source.files) // 256))
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    base = _base_name(source, image_size)
    key = _key(source, image_size, _file_stats(source), min_side)
    with _locked(cache_dir / f"{base}.lock") as locked:
        index = _read_index(cache_dir / f"{base}.json", key, image_size)
        if index is None:
            index = _build(source, image_size, key, cache_dir, base, workers, warn, min_side)
            # Only under a lock can no other process be writing a staging file right now.
            _remove_stale(cache_dir, base, index["data"], staging_files=locked)
    if index["skipped"] and warn:
        warn_skipped(source, index["skipped"], stacklevel=2)
    path = cache_dir / index["data"]
    images = MappedImages(path) if lazy else np.load(path, mmap_mode="r")
    # Groups come from the source as it is now (a changed grouping needs no re-decoding).
    position = {rel: i for i, rel in enumerate(source.files)}
    groups = [source.group_of(position[rel]) for rel in index["names"]]
    return ImageSet(images, list(index["names"]), groups, source.root)  # type: ignore[arg-type]
