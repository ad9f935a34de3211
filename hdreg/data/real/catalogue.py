"""The public datasets that ``hdreg data`` fetches: COCO, HPatches, the Oxford affine sequences.

:data:`DATASETS` names each one's archives (official URL, published size and SHA-256), where it
lands under the data root and its terms of use; ``hdreg data list`` prints it
(:func:`format_dataset_list`). Once extracted (:func:`hdreg.data.real.download.download_dataset`):

* ``coco2014-train`` … ``coco2017-test`` → ``ROOT/coco/train2014/`` … (a COCO root for
  ``data.source=ROOT/coco``);
* ``hpatches`` → ``ROOT/hpatches-sequences-release/`` (116 sequences in the HPatches layout);
* ``oxford-affine`` → ``ROOT/oxford-affine/<sequence>/`` (8 sequences in the Oxford layout).

Checksums come from published sources (noted beside each entry); where none is known the entry
holds ``None`` and the downloader says, in one line, that the file is not verified.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASETS",
    "OXFORD_SEQUENCES",
    "Archive",
    "Dataset",
    "format_dataset_list",
    "free_space_warning",
]


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
