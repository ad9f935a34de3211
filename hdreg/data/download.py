"""Fetch the public datasets hdreg uses: COCO, HPatches sequences, the Oxford affine sequences.

``hdreg data list`` prints :data:`DATASETS`; ``hdreg data download NAME --root data/`` fetches a
dataset's archives from their official URLs into ``ROOT/.downloads/``, checks each one's size and
SHA-256 where they are published, and extracts it where hdreg's loaders expect it:

* ``coco2014-train`` … ``coco2017-test`` → ``ROOT/coco/train2014/`` … (a COCO root for
  ``data.source=ROOT/coco``);
* ``hpatches`` → ``ROOT/hpatches-sequences-release/`` (116 sequences in the HPatches layout);
* ``oxford-affine`` → ``ROOT/oxford-affine/<sequence>/`` (8 sequences in the Oxford layout).

A download is resumable: bytes arrive in ``<archive>.part`` and an interrupted transfer continues
from where it stopped (an HTTP ``Range`` request) when the command is run again. An archive is
extracted only once it is complete and verified, into a staging folder beside its target that is
renamed into place only after every member (and the compressed stream, and a zip's CRCs) read
cleanly; a truncated or corrupt archive is deleted and leaves nothing behind. A stamp file then
records it, so that running the same command again downloads and extracts nothing. An archive
already placed by hand in ``ROOT/.downloads/`` is verified and used as is. Archives are deleted
after extraction unless ``keep_archives``.

Checksums come from published sources (noted beside each entry); where none is known the entry
holds ``None`` and the downloader says, in one line, that the file is not verified.
"""

from __future__ import annotations

import hashlib
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
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASETS",
    "Archive",
    "Dataset",
    "DownloadError",
    "download_dataset",
    "format_dataset_list",
    "free_space_warning",
]

DOWNLOAD_DIR = ".downloads"
CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(RuntimeError):
    """A download or verification failed; the message is one line naming the URL and the place."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch.

    Attributes:
        url: official address.
        size: expected size in bytes, or None when unpublished.
        sha256: expected SHA-256 (hex), or None when unpublished.
        into: folder (relative to the dataset's ``ROOT``) the archive is extracted into.
        creates: folder (relative to ``ROOT``) that exists once the archive is extracted.
    """

    url: str
    size: int | None
    sha256: str | None
    into: str
    creates: str

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Dataset:
    """A named dataset: its archives, where it lands under ``ROOT``, and its terms of use."""

    name: str
    description: str
    archives: tuple[Archive, ...]
    target: str  # the folder (relative to ROOT) that hdreg's loaders read
    licence: str


# Sizes and SHA-256 of the COCO zips: TensorFlow Datasets' url_checksums/coco.txt.
_COCO = {
    "train2014": (13510573713, "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775"),
    "val2014": (6645013297, "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0"),
    "test2014": (6660437059, "ead40c62230cb2cf70ff4c8b4c70abdc260a7556e77b3282621d06d8e2e35bdf"),
    "train2017": (19336861798, "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929"),
    "val2017": (815585330, "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
    "test2017": (6646970404, "c7908c3c9f94ba2f3340ebbeec58c25db6be8774f18d68c2f15d0e369d95baba"),
}
_COCO_IMAGES = {
    "train2014": "82,783",
    "val2014": "40,504",
    "test2014": "40,775",
    "train2017": "118,287",
    "val2017": "5,000",
    "test2017": "40,670",
}
_COCO_LICENCE = (
    "COCO Terms of Use: annotations CC BY 4.0; the images belong to their Flickr owners under "
    "their own licences (https://cocodataset.org/#termsofuse)"
)

OXFORD_SEQUENCES = ("bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall")
# SHA-256 published for two of the archives (by a project that pins them in its fetch script);
# no published size or hash was found for the others.
_OXFORD_SHA256 = {
    "graf": "999871b945ee968a00a0d5f9af957d1382fb9dae1511cdee9553366817b53b5b",
    "boat": "6e5721f37fbf9c3e974fd05935a42c1670f3e71aa3e5b218807ea046a068c603",
}
_OXFORD_URL = "https://www.robots.ox.ac.uk/~vgg/research/affine/det_eval_files/{}.tar.gz"


def _coco(split: str) -> Dataset:
    size, sha = _COCO[split]
    year, part = split[-4:], split[:-4]
    return Dataset(
        name=f"coco{year}-{part}",
        description=f"COCO {year} {part} images ({_COCO_IMAGES[split]} JPEGs)",
        archives=(
            Archive(
                url=f"http://images.cocodataset.org/zips/{split}.zip",
                size=size,
                sha256=sha,
                into="coco",
                creates=f"coco/{split}",
            ),
        ),
        target=f"coco/{split}",
        licence=_COCO_LICENCE,
    )


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        *(_coco(s) for s in _COCO),
        Dataset(
            name="hpatches",
            description="HPatches sequences: 116 scenes x 6 images with H_1_k ground truth "
            "(57 illumination, 59 viewpoint)",
            archives=(
                Archive(
                    "http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz",
                    None,
                    None,
                    "",
                    "hpatches-sequences-release",
                ),
            ),
            target="hpatches-sequences-release",
            licence="HPatches (Balntas et al., CVPR 2017): released for research; no licence "
            "file in the archive (https://github.com/hpatches/hpatches-dataset)",
        ),
        Dataset(
            name="oxford-affine",
            description="Oxford affine sequences (Mikolajczyk et al. 2005): "
            + ", ".join(OXFORD_SEQUENCES)
            + "; img1..img6 with H1to2p..H1to6p",
            archives=tuple(
                Archive(
                    _OXFORD_URL.format(s),
                    None,
                    _OXFORD_SHA256.get(s),
                    f"oxford-affine/{s}",
                    f"oxford-affine/{s}",
                )
                for s in OXFORD_SEQUENCES
            ),
            target="oxford-affine",
            licence="Visual Geometry Group, University of Oxford: free for research; cite "
            "Mikolajczyk et al., IJCV 65(1/2), 2005 (https://www.robots.ox.ac.uk/~vgg/research/affine/)",
        ),
    )
}


def _human(n: int | None) -> str:
    if n is None:
        return "size unpublished"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # unreachable


def format_dataset_list(datasets: dict[str, Dataset] = DATASETS) -> str:
    """The table ``hdreg data list`` prints: name, size, whether verified, where it lands."""
    lines = []
    for d in datasets.values():
        sizes = [a.size for a in d.archives]
        total = None if None in sizes else sum(s for s in sizes if s is not None)
        hashed = sum(a.sha256 is not None for a in d.archives)
        check = (
            "SHA-256 checked"
            if hashed == len(d.archives)
            else f"SHA-256 checked for {hashed} of {len(d.archives)} archives"
            if hashed
            else "no published checksum"
        )
        lines.append(f"{d.name:<15} {d.description}")
        lines.append(f"{'':<15} {_human(total)}, {check}; -> ROOT/{d.target}/")
        lines.append(f"{'':<15} licence: {d.licence}")
    return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


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
            part.replace(dest)  # the server has no byte after ours: the part is the whole file
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
    part.replace(dest)


def _verify(archive: Archive, path: Path, url: str, say: Callable[[str], None]) -> None:
    """Check size and SHA-256 where known; a mismatching file is deleted (DownloadError)."""
    size = path.stat().st_size
    problems = []
    if archive.size is not None and size != archive.size:
        problems.append(f"size {size} bytes, expected {archive.size}")
    if not problems and archive.sha256 is not None:
        digest = _sha256(path)
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


def free_space_warning(dataset: Dataset, root: str | Path) -> str | None:
    """A warning when the archives' published size exceeds the free space under ``root``."""
    root = Path(root).expanduser()
    sizes = [a.size for a in dataset.archives]
    if None in sizes:
        return None
    need = 2 * sum(s for s in sizes if s is not None)  # the archive, then its extracted files
    probe = root if root.exists() else Path(os.path.abspath(root)).parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        return (
            f"warning: {dataset.name} needs about {_human(need)} under {root} (archive plus "
            f"extracted files) and {_human(free)} is free"
        )
    return None
