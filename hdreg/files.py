"""Writing files so that a crash never leaves half of one: the one write-then-rename of hdreg.

Every file hdreg writes for later use (checkpoints, weights, benchmarks, caches, downloads,
exports) is written under a staging name in the same folder — hence on the same filesystem —
flushed, and renamed over its final name in one step. A reader sees the old content or the whole
new one, never a mixture; a failed write leaves no staging file behind.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_write(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('hello', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["STAGING_MARK", "atomic_write", "file_sha256", "fsync_dir", "staging_path"]

#: every staging name ends in this (before the final name's own suffix), so a folder's
#: leftovers of a killed writer are recognisable
STAGING_MARK = ".partial"


def staging_path(path: str | Path) -> Path:
    """A fresh staging name for ``path``, in its folder: hidden, unique to this process and call
    (pid and a random part, so two writers never share one), ending in ``path``'s own suffix
    (OpenCV and NumPy choose a format by it): ``dir/.name.<pid>-<rand>.partial.ext``."""
    path = Path(path)
    return path.with_name(
        f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{STAGING_MARK}{path.suffix}"
    )


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the filesystem allows it."""
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_write(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Write ``path`` all at once: yields a staging path to write (by any means: ``open``,
    ``torch.save``, ``np.savez``, ``cv2.imwrite``); when the block ends without an exception the
    staging file replaces ``path`` in one rename, otherwise it is removed and ``path`` keeps its
    old content. ``durable``: flush the file and the folder to disk first (off for caches that
    can be rebuilt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written for {path} (staging file {tmp.name})")
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
