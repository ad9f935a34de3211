"""On-disk image cache: decode, convert and resize a source's images once, memory-map them after.

:func:`load_cached_images` returns the same :class:`~hdreg.data.sources.ImageSet` as
:func:`~hdreg.data.sources.load_images` (same files skipped with the same single warning, same
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
cache is rebuilt: the images are written to a temporary file, renamed into place when complete,
the index is replaced atomically, and the stale ``.npy`` file is deleted (processes that still map
it keep reading their copy). A different image size is a different cache (``<W>x<H>`` in the name),
so two sizes of one source can coexist.

Decoding runs in ``workers`` processes started by forkserver (spawn where there is none), never
forked from the caller: a child forked while the caller's OpenCV thread pool is busy can deadlock
in OpenCV. Such processes re-import the main module, so call this from a guarded script
(``if __name__ == "__main__":``), an interactive session or a notebook, not from stdin, or pass
``workers=1``.

Processes and pickling: on Linux, DataLoader workers are forked and share the parent's map. A
``np.memmap`` that gets *pickled* (spawn or forkserver start methods, the default on macOS and
Windows and from Python 3.14 on Linux, or DDP's spawn launcher) is sent as a full in-memory copy
of the data, and ``ImageSet.subset`` (fancy indexing) copies the selected images into memory.
Rows of a read-only map are read-only, and ``torch.from_numpy`` warns on them (``SyntheticPairs``
with ``with_full_image`` and no jitter hands the source image itself to torch). ``lazy=True``
returns :class:`MappedImages` instead: an array-like that pickles as its path and re-opens the map
in the receiving process, whose subsets stay index lists over the one file, and whose images come
out as small writable copies.
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
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hdreg.data.sources import (
    ImageSet,
    ImageSource,
    check_image_size,
    decode_resized,
    no_usable_image,
    warn_skipped,
)

__all__ = ["CACHE_VERSION", "MappedImages", "cache_key", "load_cached_images"]

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes what a cached image holds: every cache is then rebuilt.
CACHE_VERSION = 1
_CHUNK = 1024  # files per round trip to the decoding processes (bounds the memory in flight)


class MappedImages:
    """Read-only ``(N, H, W) uint8`` images in a ``.npy`` file, mapped on first use per process.

    Behaves like the array where the pair generators need it: ``shape``, ``dtype``, ``ndim``,
    ``len``; ``images[k]`` gives image ``k`` as a writable ``(H, W)`` copy (77 KB at 320×240, so
    that ``torch.from_numpy`` never aliases read-only mapped pages); ``images[list]`` or
    ``images[slice]`` gives another ``MappedImages`` over the same file (no copy), and
    ``np.asarray(images)`` reads the selected images into memory.

    Pickling sends the path and the selected indices only; the receiving process maps the file
    itself.

    Args:
        path: a ``.npy`` file of shape ``(N, H, W)`` and dtype ``uint8``.
        indices: optional selection of images (default: all, in file order).
    """

    def __init__(self, path: str | Path, indices: Sequence[int] | np.ndarray | None = None) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None
        full = self.array
        if full.ndim != 3 or full.dtype != np.uint8:
            raise ValueError(
                f"{self.path} must hold (N, H, W) uint8 images, got {full.dtype} {full.shape}"
            )
        self._indices: np.ndarray | None = None
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < -len(full) or idx.max() >= len(full)):
                raise IndexError(f"image index out of range for {len(full)} images in {self.path}")
            self._indices = np.where(idx < 0, idx + len(full), idx)

    @property
    def array(self) -> np.ndarray:
        """The whole file, memory-mapped read-only (opened on first use in this process)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, int, int]:
        n, h, w = self.array.shape
        return (n if self._indices is None else len(self._indices), h, w)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray | MappedImages:
        if isinstance(index, int | np.integer):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"image index {index} out of range for {n} images")
            k = int(index) if self._indices is None else int(self._indices[index])
            return np.array(self.array[k])
        selection = np.arange(len(self))[index]  # slices, lists, integer or boolean arrays
        if selection.ndim != 1:
            raise TypeError(f"MappedImages takes an int, a slice or a 1-D selection, got {index!r}")
        return self._child(selection if self._indices is None else self._indices[selection])

    def _child(self, indices: np.ndarray) -> MappedImages:
        """A selection of this one's images sharing its map (validated already)."""
        child = object.__new__(MappedImages)
        child.path, child._array, child._indices = self.path, self._array, indices
        return child

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.array(self.array) if self._indices is None else self.array[self._indices]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "indices": self._indices}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._indices, self._array = state["path"], state["indices"], None

    def __repr__(self) -> str:
        n, h, w = self.shape
        return f"MappedImages({n} images {w}x{h} from {self.path})"


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
    except ImportError:  # Windows: no lock; concurrent builders each write their own temp file
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
    tmp = cache_dir / f"{base}.tmp-{os.getpid()}.npy"
    log.info("caching %d images of %s at %dx%d in %s", n_files, source.root, w, h, cache_dir)
    t0 = time.perf_counter()
    names: list[str] = []
    groups: list[str] = []
    skipped: list[str] = []
    data: np.memmap | None = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(n_files, h, w)
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
            small = cache_dir / f"{base}.tmp-{os.getpid()}-n.npy"
            data = _first_rows(data, len(names), small)  # the larger map closes here
            tmp.unlink()
            tmp = small
        data.flush()
        data = None  # closes the map
        final = cache_dir / f"{base}-{key[:16]}.npy"
        os.replace(tmp, final)
    except BaseException:
        data = None  # close the map before removing its file
        for leftover in cache_dir.glob(f"{base}.tmp-{os.getpid()}*"):
            leftover.unlink(missing_ok=True)
        raise
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
    index_tmp = cache_dir / f"{base}.tmp-{os.getpid()}.json"
    index_tmp.write_text(json.dumps(index))
    os.replace(index_tmp, cache_dir / f"{base}.json")
    log.info("cached %d images in %.1f s", len(names), time.perf_counter() - t0)
    return index


def _first_rows(data: np.memmap, n: int, path: Path) -> np.memmap:
    """The first ``n`` rows of ``data`` copied into a new ``.npy`` file at ``path``."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *data.shape[1:]))
    for start in range(0, n, _CHUNK):
        out[start : start + _CHUNK] = data[start : min(n, start + _CHUNK)]
    return out


def _remove_stale(cache_dir: Path, base: str, keep: str, temp_files: bool) -> None:
    """Delete data files of ``base`` other than ``keep`` (and dead builders' temp files)."""
    stale = [p for p in cache_dir.glob(f"{base}-*.npy") if p.name != keep]
    if temp_files:
        stale += list(cache_dir.glob(f"{base}.tmp-*"))
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
    """:func:`~hdreg.data.sources.load_images`, decoded once into a memory-mapped cache.

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
            # Only under a lock can no other process be writing a temp file right now.
            _remove_stale(cache_dir, base, index["data"], temp_files=locked)
    if index["skipped"] and warn:
        warn_skipped(source, index["skipped"], stacklevel=2)
    path = cache_dir / index["data"]
    images = MappedImages(path) if lazy else np.load(path, mmap_mode="r")
    # Groups come from the source as it is now (a changed grouping needs no re-decoding).
    position = {rel: i for i, rel in enumerate(source.files)}
    groups = [source.group_of(position[rel]) for rel in index["names"]]
    return ImageSet(images, list(index["names"]), groups, source.root)  # type: ignore[arg-type]
