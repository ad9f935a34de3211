"""Real image pairs with ground-truth homographies: HPatches and Oxford layouts.

A *sequence* is a folder (found at any depth under a root) holding a reference image and, for
each other image ``k`` that has ground truth, a 3×3 matrix ``H_b_from_a`` mapping pixels of the
reference image (A = "1") into image ``k`` (B):

* HPatches: ``1.<ext>``, ``2.<ext>``, …, with ``H_1_2``, ``H_1_3``, …
* Oxford (Mikolajczyk et al.): ``img1.<ext>``, ``img2.<ext>``, …, with ``H1to2p``, ``H1to3p``, …

Each matrix is either plain text (nine whitespace-separated numbers, row-major, any scale) or
OpenCV's XML/YAML storage (``H1to3p.xml``: the first matrix node is read).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hdreg.data.sources import IMAGE_EXTENSIONS, load_gray
from hdreg.geometry_np import check_homography, normalize_homography

__all__ = ["RealPair", "check_ground_truth", "find_real_pairs", "read_homography_file"]

# (image pattern, H-file pattern) of each layout; the groups capture the image index k.
_LAYOUTS = {
    "hpatches": (re.compile(r"^(\d+)$"), re.compile(r"^H_1_(\d+)(?:\.(?:txt|xml|ya?ml))?$")),
    "oxford": (re.compile(r"^img(\d+)$"), re.compile(r"^H1to(\d+)p(?:\.(?:txt|xml|ya?ml))?$")),
}


@dataclass
class RealPair:
    """One (1, k) pair: images A (the reference) and B, and the true ``H_b_from_a``."""

    sequence: str
    index_b: int
    path_a: Path
    path_b: Path
    H_b_from_a: np.ndarray
    path_h: Path | None = None  # the ground-truth file, named in errors

    @property
    def pair_id(self) -> str:
        return f"{self.sequence}/1-{self.index_b}"


def _parse_text_matrix(text: str, path: Path) -> np.ndarray:
    tokens = text.split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise ValueError(
            f"homography file {path}: {bad!r} is not a number (expected 9 whitespace-separated "
            "numbers, row-major)"
        ) from None
    if len(values) != 9:
        raise ValueError(
            f"homography file {path}: found {len(values)} numbers, expected 9 (a 3x3 matrix, "
            "row-major)"
        )
    return np.array(values, np.float64).reshape(3, 3)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_opencv_storage(path: Path) -> np.ndarray:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_FORMAT_AUTO)
    try:
        if not fs.isOpened():
            raise ValueError(f"homography file {path}: OpenCV cannot open it as XML/YAML storage")
        root = fs.root()
        for key in root.keys():  # noqa: SIM118 (a cv2.FileNode, not a dict: it has no __iter__)
            mat = root.getNode(key).mat()
            if mat is not None:
                mat = np.asarray(mat, np.float64)
                if mat.shape != (3, 3):
                    raise ValueError(
                        f"homography file {path}: matrix {key!r} is {mat.shape}, expected (3, 3)"
                    )
                return mat
        raise ValueError(f"homography file {path}: no matrix node found in the OpenCV storage")
    finally:
        fs.release()


def read_homography_file(path: str | Path) -> np.ndarray:
    """Read a 3×3 homography (text or OpenCV XML/YAML), normalized so that ``H[2, 2] = 1``.

    Raises ``ValueError`` naming the file if it is malformed, not finite or not invertible.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"homography file {path} does not exist")
    raw = path.read_bytes()
    head = raw.lstrip()[:16]
    if path.suffix.lower() in (".xml", ".yml", ".yaml") or head.startswith((b"<?xml", b"%YAML")):
        H = _read_opencv_storage(path)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"homography file {path} is not text") from None
        H = _parse_text_matrix(text, path)
    if (problem := check_homography(H)) is not None:
        raise ValueError(f"homography file {path}: {problem}")
    return normalize_homography(H)


def _images_by_index(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            m = pattern.match(p.stem)
            if m:
                out.setdefault(int(m.group(1)), p)
    return out


def find_real_pairs(root: str | Path) -> list[RealPair]:
    """Every (1, k) pair with ground truth in the sequences under ``root`` (any depth).

    Sequences are sorted by their path relative to ``root``, pairs by ``k``. An H file whose image
    is missing is skipped with a warning; a malformed H file is an error naming it.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"real-pairs root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"real-pairs root {root} is not a folder")
    pairs: list[RealPair] = []
    skipped: list[str] = []
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        files = [p for p in folder.iterdir() if p.is_file()]
        for image_pat, h_pat in _LAYOUTS.values():
            h_files = sorted(
                ((int(m.group(1)), p) for p in files if (m := h_pat.match(p.name))),
                key=lambda t: t[0],
            )
            if not h_files:
                continue
            images = _images_by_index(folder, image_pat)
            name = folder.relative_to(root).as_posix() if folder != root else folder.name
            if 1 not in images:
                skipped.append(f"{folder} (no reference image 1)")
                continue
            for k, h_path in h_files:
                if k not in images:
                    skipped.append(f"{h_path} (no image {k})")
                    continue
                H = read_homography_file(h_path)
                pairs.append(RealPair(name, k, images[1], images[k], H, h_path))
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} ground-truth file(s) under {root} without their images: "
            + "; ".join(skipped[:10]),
            UserWarning,
            stacklevel=2,
        )
    if not pairs:
        raise ValueError(
            f"no image pairs with ground truth under {root}: expected sequences in the HPatches "
            "layout (1.ppm, 2.ppm, ..., H_1_2, ...) or the Oxford layout "
            "(img1.ppm, ..., H1to2p, ...)"
        )
    return pairs


#: the ground truth of a pair is implausible for its images (a warning) when A's corners, mapped
#: into B, span an area this many times larger or smaller than B's ...
IMPLAUSIBLE_AREA_RATIO = 16.0
#: ... or every mapped corner lies more than this many B-diagonals outside B
IMPLAUSIBLE_DISTANCE = 1.0


def check_ground_truth(
    pairs: list[RealPair], sizes_a: list[tuple[int, int]], sizes_b: list[tuple[int, int]]
) -> None:
    """Check each pair's ``H_b_from_a`` against its images' ``(width, height)``.

    ``ValueError`` naming the H file when a corner of A maps to infinity or behind the camera
    (last homogeneous coordinate not > 0, as for the corner (0, 0)): no corner error can be
    scored. One ``UserWarning`` naming the files when B is far smaller or larger than the ground
    truth implies (A's mapped corners span over 16x or under 1/16 of B's area, or all lie more
    than one B-diagonal outside B): such pairs are scored, but an H file probably belongs to
    other images (or another resolution).
    """
    notes = []
    for pair, (wa, ha), (wb, hb) in zip(pairs, sizes_a, sizes_b, strict=True):
        where = pair.path_h or f"the ground truth of {pair.pair_id}"
        corners = np.array([[0, 0, 1], [wa - 1, 0, 1], [wa - 1, ha - 1, 1], [0, ha - 1, 1]], float)
        mapped = corners @ np.asarray(pair.H_b_from_a, np.float64).T
        w = mapped[:, 2]
        scale = np.abs(mapped).max()
        if not np.isfinite(mapped).all() or (w <= 1e-9 * scale).any():
            bad = int(np.argmin(w)) if np.isfinite(w).all() else 0
            raise ValueError(
                f"homography file {where}: it maps corner {corners[bad, :2].tolist()} of "
                f"{pair.path_a.name} ({wa}x{ha}) to infinity or behind the camera (last "
                f"coordinate {w[bad]:.3g}); this is not the ground truth of these images"
            )
        q = mapped[:, :2] / w[:, None]
        x, y = q[:, 0], q[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        ratio = area / (wb * hb)
        dx = np.maximum(0.0, np.maximum(-0.5 - x, x - (wb - 0.5)))
        dy = np.maximum(0.0, np.maximum(-0.5 - y, y - (hb - 0.5)))
        outside = np.hypot(dx, dy).min() / np.hypot(wb, hb)
        if (
            not 1 / IMPLAUSIBLE_AREA_RATIO <= ratio <= IMPLAUSIBLE_AREA_RATIO
            or outside > IMPLAUSIBLE_DISTANCE
        ):
            notes.append(
                f"{where} (image B {wb}x{hb}: A's corners map to {ratio:.3g}x its area, "
                f"{outside:.2f} diagonals outside)"
            )
    if notes:
        warnings.warn(
            f"{len(notes)} ground truth(s) implausible for the size of image B (scored anyway; "
            "check that each H file belongs to these images at this resolution): "
            + "; ".join(notes[:10]),
            UserWarning,
            stacklevel=2,
        )


def load_pair_images(pair: RealPair) -> tuple[np.ndarray, np.ndarray]:
    """The two images of a pair as 8-bit grayscale arrays at full resolution."""
    return load_gray(pair.path_a), load_gray(pair.path_b)
