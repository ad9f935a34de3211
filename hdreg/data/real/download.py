"""Fetch, verify and extract the public datasets of :data:`~hdreg.data.real.catalogue.DATASETS`.

``hdreg data download NAME --root data/`` fetches a dataset's archives from their official URLs
into ``ROOT/.downloads/``, checks each one's size and SHA-256 where they are published, and
extracts it where hdreg's loaders expect it (:mod:`hdreg.data.real.catalogue` lists the places).

A download is resumable: bytes arrive in ``<archive>.part`` and an interrupted transfer continues
from where it stopped (an HTTP ``Range`` request) when the command is run again; the complete file
is then moved to its final name (:func:`hdreg.files.atomic_write`, flushed to disk). An archive is
extracted only once it is complete and verified, into a staging folder beside its target that is
renamed into place only after every member (and the compressed stream, and a zip's CRCs) read
cleanly; a truncated or corrupt archive is deleted and leaves nothing behind. A stamp file then
records it, so that running the same command again downloads and extracts nothing. An archive
already placed by hand in ``ROOT/.downloads/`` is verified and used as is. Archives are deleted
after extraction unless ``keep_archives``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from hdreg.data.real.catalogue import DATASETS, Archive, Dataset
from hdreg.files import atomic_write, file_sha256

__all__ = ["DownloadError", "download_dataset"]

DOWNLOAD_DIR = ".downloads"
CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(RuntimeError):
    """A download or verification failed; the message is one line naming the URL and the place."""


def _progress_bar(total: int | None, initial: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, disable=not enabled, file=sys.stderr, leave=False,
    )  # fmt: skip


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header (None if unreadable)."""
    if not content_range or not content_range.strip().startswith("bytes "):
        return None
    try:
        return int(content_range.strip()[6:].split("-", 1)[0])
    except ValueError:
        return None


def _fetch(archive: Archive, dest: Path, *, url: str, progress: bool) -> None:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present. Raises DownloadError."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if archive.size is not None and have > archive.size:
        part.unlink()  # longer than the real file: not a prefix of it
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": "hdreg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    hint = f"or put the file at {dest} yourself and run the command again"
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and (archive.size is None or have == archive.size):
            _complete(part, dest)  # the server has no byte after ours: the part is the whole file
            return
        raise DownloadError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; retry later {hint}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url} ({reason}); check the network and run the command again, {hint}"
        ) from None
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range request: start over
        elif have:
            start = _range_start(response.headers.get("Content-Range"))
            if start == 0:
                have = 0  # a 206 from byte 0: the server ignored the offset, start over
            elif start != have:
                part.unlink()
                raise DownloadError(
                    f"{url} answered a request for bytes {have}- with Content-Range "
                    f"{response.headers.get('Content-Range')!r}; the partial file {part} was "
                    "deleted, run the command again to download it afresh"
                )
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else archive.size
        received = have
        bar = _progress_bar(total, have, archive.filename, progress)
        try:
            with part.open("ab" if have else "wb") as f:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:  # cut, reset, timeout
                        if received < (total or 0):
                            break
                        raise DownloadError(
                            f"transfer of {url} failed after {received} bytes ({exc}); run the "
                            f"same command again to resume (partial file: {part})"
                        ) from None
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and received < total:
        raise DownloadError(
            f"transfer of {url} stopped after {received} of {total} bytes; run the same command "
            f"again to resume (partial file: {part})"
        )
    _complete(part, dest)


def _complete(part: Path, dest: Path) -> None:
    """Give the finished download ``part`` its final name ``dest``, flushed to disk first. The
    staging file is a second link to ``part``, not ``part`` moved: an interruption before ``dest``
    is in place leaves the whole ``part``, which the next run completes without downloading."""
    with atomic_write(dest) as staging:
        try:
            os.link(part, staging)
        except OSError:  # a filesystem without hard links
            part.replace(staging)
    part.unlink(missing_ok=True)


def _verify(archive: Archive, path: Path, url: str, say: Callable[[str], None]) -> None:
    """Check size and SHA-256 where known; a mismatching file is deleted (DownloadError)."""
    size = path.stat().st_size
    problems = []
    if archive.size is not None and size != archive.size:
        problems.append(f"size {size} bytes, expected {archive.size}")
    if not problems and archive.sha256 is not None:
        digest = file_sha256(path)
        if digest != archive.sha256:
            problems.append(f"SHA-256 {digest}, expected {archive.sha256}")
    if problems:
        path.unlink()
        raise DownloadError(
            f"{url}: {'; '.join(problems)}; the file {path} was deleted, run the command "
            "again to download it afresh"
        )
    if archive.sha256 is None:
        what = "size checked" if archive.size is not None else "size unpublished"
        say(f"{archive.filename}: no published SHA-256, not verified ({what}, {size} bytes)")
    else:
        say(f"{archive.filename}: verified (SHA-256 {archive.sha256[:12]}…, {size} bytes)")


def _check_zip(path: Path, z: zipfile.ZipFile, into: Path) -> None:
    """Refuse members outside ``into``; read every member and check its CRC (``testzip``)."""
    base = into.resolve()
    for member in z.namelist():
        if not (into / member).resolve().is_relative_to(base):
            raise DownloadError(f"{path}: refusing member {member!r} outside {into}")
    bad = z.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad!r} fails its CRC check")


def _extract_all(path: Path, into: Path) -> None:
    """Extract ``path`` (zip or tar, any compression) into ``into``, reading the whole archive:
    a truncated or corrupt file raises (``zipfile.BadZipFile``, ``tarfile.TarError``,
    ``EOFError``, ``zlib.error``, ``OSError``)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            _check_zip(path, z, into)
            z.extractall(into)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            try:
                t.extractall(into, filter="data")  # refuses links and paths leaving `into`
            except tarfile.FilterError as exc:
                raise DownloadError(f"{path}: unsafe archive member: {exc}") from None
            # the tar ends at its end-of-archive blocks; read the compressed stream to its end
            # so that a truncated gzip/bz2/xz file (or a bad CRC) is noticed too
            while t.fileobj.read(CHUNK):  # type: ignore[union-attr]
                pass
    else:
        raise DownloadError(
            f"{path} is not a complete zip or tar archive (truncated or corrupt); it was "
            "deleted: run the command again to download it afresh"
        )


def _staging_dir(creates: Path) -> Path:
    """Where an archive is extracted before its folder is renamed into place (beside it)."""
    return creates.parent / f".{creates.name}.extracting"


def _extract(path: Path, into: Path, creates: Path, url: str) -> None:
    """Extract ``path`` (whose members are relative to ``into``) so that ``creates`` appears only
    once the whole archive has read cleanly: members go to a staging folder beside ``creates``,
    which is then renamed. On any failure the staging folder and the archive are deleted and
    ``DownloadError`` says to run the command again."""
    staging = _staging_dir(creates)
    shutil.rmtree(staging, ignore_errors=True)  # left by an extraction that was killed
    rel = Path(os.path.relpath(creates, into))
    try:
        staging.mkdir(parents=True)
        _extract_all(path, staging)
        staged = staging / rel
        if not staged.is_dir():
            raise DownloadError(
                f"{path} (from {url}) holds no folder {rel}; it is not the expected archive"
            )
        if creates.exists():  # a partial folder left without a done-marker: replace it
            shutil.rmtree(creates)
        creates.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(creates)
        if rel != Path("."):  # any other top-level members of the archive
            for entry in staging.iterdir():
                dest = into / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                elif dest.exists():
                    dest.unlink()
                entry.rename(dest)
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)
        path.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno is not None:  # disk full, no permission, ...
            raise DownloadError(
                f"cannot extract {path} into {into}: {exc.strerror or exc}; free space or fix "
                "the permissions and run the command again"
            ) from None
        path.unlink(missing_ok=True)  # a bad gzip stream or CRC is an OSError without errno
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DownloadError(
            f"{path} (from {url}) is truncated or corrupt ({detail}); it was deleted and nothing "
            "was extracted: run the command again to download it afresh"
        ) from None
    shutil.rmtree(staging, ignore_errors=True)


def _writable_downloads(root: Path) -> Path:
    """``root/.downloads``, created; ``ValueError`` naming ``root`` when it cannot be written
    (a read-only file system, no permission, a path under a regular file)."""
    downloads = root / DOWNLOAD_DIR
    try:
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=downloads):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(
            f"data root {root} is not a writable folder ({reason}: {exc.filename}); choose "
            "another --root"
        ) from None
    return downloads


def download_dataset(
    dataset: str | Dataset,
    root: str | Path,
    *,
    mirror: str | None = None,
    keep_archives: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Fetch, verify and extract every archive of ``dataset`` under ``root``; returns the folder
    hdreg reads (``root / dataset.target``).

    Args:
        dataset: a name in :data:`DATASETS`, or a :class:`Dataset`.
        root: the data folder (``data/`` in the README).
        mirror: fetch ``<mirror>/<archive file name>`` instead of the official URL (a local copy
            or a mirror site; the same size and checksum apply).
        keep_archives: keep the downloaded archives in ``root/.downloads/`` after extraction.
        progress: show a progress bar (on stderr, when it is a terminal).
        say: where one-line status messages go.

    Raises:
        ValueError: unknown dataset name, or ``root`` cannot be written.
        DownloadError: no network, an HTTP error, an interrupted transfer (run again to resume),
            a size or checksum mismatch (the file is deleted), or an unreadable archive.
    """
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)} "
                "(`hdreg data list` describes them)"
            )
        dataset = DATASETS[dataset]
    root = Path(root).expanduser()
    downloads = _writable_downloads(root)
    for archive in dataset.archives:
        stamp = downloads / f"{archive.filename}.done"
        into = root / archive.into
        if stamp.is_file() and (root / archive.creates).is_dir():
            say(f"{archive.filename}: already in {root / archive.creates}, nothing to do")
            continue
        dest = downloads / archive.filename
        url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
        if not dest.is_file():
            say(f"{archive.filename}: downloading {url}")
            _fetch(archive, dest, url=url, progress=progress)
        _verify(archive, dest, url, say)
        stamp.unlink(missing_ok=True)
        _extract(dest, into, root / archive.creates, url)
        stamp.write_text(
            json.dumps({"url": url, "size": dest.stat().st_size, "sha256": archive.sha256}) + "\n"
        )
        if not keep_archives:
            dest.unlink()
        say(f"{archive.filename}: extracted into {into}")
    return root / dataset.target
