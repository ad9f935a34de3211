"""Real image pairs with ground-truth homographies: HPatches and Oxford layouts.

A *sequence* is a folder (found at any depth under a root) holding a reference image and, for
each other image ``k`` that has ground truth, a 3×3 matrix ``H_b_from_a`` mapping pixels of the
reference image (A = "1") into image ``k`` (B):

* HPatches: ``1.<ext>``, ``2.<ext>``, …, with ``H_1_2``, ``H_1_3``, …
* Oxford (Mikolajczyk et al.): ``img1.<ext>``, ``img2.<ext>``, …, with ``H1to2p``, ``H1to3p``, …

Each matrix is either plain text (nine whitespace-separated numbers, row-major, any scale) or
OpenCV's XML/YAML storage (``H1to3p.xml``: the first matrix node is read). Two files for one
pair (``H_1_2`` and ``H_1_2.txt``) give one pair when they hold the same matrix, and are an error
naming both when they do not.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hdreg.data.decoding import load_gray
from hdreg.data.sources import IMAGE_EXTENSIONS
from hdreg.geometry_np import check_homography, normalize_homography, project, rect_corners

__all__ = [
    "RealPair",
    "check_ground_truth",
    "crosses_horizon",
    "find_real_pairs",
    "overlap_polygon",
    "polygon_area",
    "read_homography_file",
]

# (image pattern, H-file pattern) of each layout; the groups capture the image index k.
_LAYOUTS = {
    "hpatches": (re.compile(r"^(\d+)$"), re.compile(r"^H_1_(\d+)(?:\.(?:txt|xml|ya?ml))?$")),
    "oxford": (re.compile(r"^img(\d+)$"), re.compile(r"^H1to(\d+)p(?:\.(?:txt|xml|ya?ml))?$")),
}


@dataclass
class RealPair:
    """One (1, k) pair: images A (the reference) and B, and the true ``H_b_from_a``.

    ``problem`` says why the ground truth cannot be used (``H_b_from_a`` is then ``None``); only
    :func:`find_real_pairs` with ``keep_unusable=True`` returns such pairs."""

    sequence: str
    index_b: int
    path_a: Path
    path_b: Path
    H_b_from_a: np.ndarray | None
    path_h: Path | None = None  # the ground-truth file, named in errors
    problem: str | None = None

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
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_FORMAT_AUTO)
    except (cv2.error, SystemError):  # a parse error surfaces as SystemError from the binding
        raise ValueError(
            f"homography file {path}: OpenCV cannot parse it as XML/YAML storage"
        ) from None
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


def _same_matrix(H: np.ndarray, other: np.ndarray) -> bool:
    """Equal to the precision a text file keeps (both scaled so that ``H[2, 2] = 1``)."""
    return bool(np.allclose(H, other, rtol=1e-6, atol=1e-12 * np.abs(H).max()))


def _read_pair(
    name: str, k: int, candidates: list[tuple[Path, Path, Path]], keep_unusable: bool
) -> RealPair:
    """The pair (1, k) of a sequence from its ground-truth file(s): ``candidates`` holds
    ``(path_a, path_b, path_h)`` for each file found for it, the one to name first."""
    path_a, path_b, path_h = candidates[0]
    pair = RealPair(name, k, path_a, path_b, None, path_h)
    try:
        H = read_homography_file(path_h)
        for other_a, other_b, other_h in candidates[1:]:
            if (other_a, other_b) != (path_a, path_b) or not _same_matrix(
                H, read_homography_file(other_h)
            ):
                raise ValueError(
                    f"homography files {path_h} and {other_h} are two different ground truths "
                    f"of pair {pair.pair_id}; keep one of them"
                )
    except (ValueError, OSError) as exc:
        if not keep_unusable:
            raise
        pair.problem = " ".join(str(exc).split())
        return pair
    pair.H_b_from_a = H
    return pair


def find_real_pairs(root: str | Path, *, keep_unusable: bool = False) -> list[RealPair]:
    """Every (1, k) pair with ground truth in the sequences under ``root`` (any depth).

    Sequences are sorted by their path relative to ``root``, pairs by ``k``. An H file whose image
    is missing is skipped with a warning. An H file that cannot be read (not nine numbers, not
    finite, singular), or two files for one pair that hold different matrices (``H_1_2`` and
    ``H_1_2.txt``), is an error naming the file(s); with ``keep_unusable`` such a pair is
    returned instead, that message as its ``problem``. Two files with the same matrix give one
    pair (named after the first, ``H_1_2``).
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
        name = folder.relative_to(root).as_posix() if folder != root else folder.name
        found: dict[int, list[tuple[Path, Path, Path]]] = {}  # k -> (image 1, image k, H file)
        for image_pat, h_pat in _LAYOUTS.values():
            h_files = sorted(
                ((int(m.group(1)), p) for p in files if (m := h_pat.match(p.name))),
                key=lambda t: (t[0], t[1].name),
            )
            if not h_files:
                continue
            images = _images_by_index(folder, image_pat)
            if 1 not in images:
                skipped.append(f"{folder} (no reference image 1)")
                continue
            for k, h_path in h_files:
                if k not in images:
                    skipped.append(f"{h_path} (no image {k})")
                    continue
                found.setdefault(k, []).append((images[1], images[k], h_path))
        pairs += [_read_pair(name, k, found[k], keep_unusable) for k in sorted(found)]
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


def crosses_horizon(H_b_from_a: np.ndarray, size_a: tuple[int, int]) -> bool:
    """Whether ``H_b_from_a`` sends a corner of an image A of ``size_a = (width, height)`` to
    infinity or behind the camera: the last homogeneous coordinates ``w`` of the four mapped
    corners are not all of one sign (or one is numerically 0). The matrix's own sign does not
    matter: ``H`` and ``-H`` are the same homography.

    >>> crosses_horizon(np.eye(3), (100, 80)), crosses_horizon(-np.eye(3), (100, 80))
    (False, False)
    >>> crosses_horizon(np.array([[1.0, 0, 0], [0, 1, 0], [-0.02, 0, 1]]), (100, 80))  # x = 50
    True
    """
    mapped = _homogeneous(rect_corners(size_a)) @ np.asarray(H_b_from_a, np.float64).T
    if not np.isfinite(mapped).all():
        return True
    w = mapped[:, 2] * np.sign(mapped[0, 2] or 1.0)
    return bool((w <= 1e-9 * np.abs(mapped).max()).any())


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def _clip(polygon: np.ndarray, line: np.ndarray) -> np.ndarray:
    """The part of a convex ``polygon (K, 2)`` where ``line · (x, y, 1) >= 0``, vertices in the
    same order (one step of Sutherland–Hodgman)."""
    f = _homogeneous(polygon) @ line
    out = []
    for i in range(len(polygon)):
        j = (i + 1) % len(polygon)
        if f[i] >= 0:
            out.append(polygon[i])
        if (f[i] >= 0) != (f[j] >= 0):
            out.append(polygon[i] + f[i] / (f[i] - f[j]) * (polygon[j] - polygon[i]))
    return np.array(out, np.float64).reshape(-1, 2)


def _simplify(polygon: np.ndarray, tol: float) -> np.ndarray:
    """``polygon`` without repeated vertices and vertices on the line between their neighbours
    (within ``tol`` pixels); empty when fewer than 3 vertices remain."""
    p = polygon
    i = 0
    while len(p) >= 3 and i < len(p):
        e1, e2 = p[i] - p[i - 1], p[(i + 1) % len(p)] - p[i]
        cross = e1[0] * e2[1] - e1[1] * e2[0]
        if np.hypot(*e1) <= tol or abs(cross) <= tol * (np.hypot(*e1) + np.hypot(*e2)):
            p = np.delete(p, i, axis=0)
            i = 0
        else:
            i += 1
    return p if len(p) >= 3 else np.zeros((0, 2))


def overlap_polygon(
    H_b_from_a: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int]
) -> np.ndarray:
    """``(K, 2)`` vertices (in A's pixels, in order) of the part of image A that
    ``H_b_from_a`` maps in front of the camera and inside image B; ``(0, 2)`` when there is none.

    Both images are taken as the rectangles of their corners (``(0, 0)`` to ``(W-1, H-1)``,
    docs/conventions.md). With ``(X, Y, w) = H_b_from_a · (x, y, 1)``, a point of A lands inside
    B when ``0 <= X <= (W_b - 1) w`` and ``0 <= Y <= (H_b - 1) w``: four half-planes of A (they
    imply ``w > 0``), so the part is a convex polygon, A's rectangle clipped by them. A matrix's
    sign is arbitrary (a file's is whatever makes ``H[2, 2] = 1``) and decides which side of the
    horizon ``w > 0`` is; the part is the larger of the two it gives, ``H``'s and ``-H``'s: the
    other is the plane behind the camera, which would appear mirrored through its centre.

    >>> H = np.array([[1.0, 0, 0], [0, 1, 0], [-1 / 80, 0, 1]])  # x = 80 maps to infinity
    >>> overlap_polygon(H, (100, 100), (100, 100)).round(2).tolist()
    [[0.0, 0.0], [44.25, 0.0], [44.25, 44.25], [0.0, 99.0]]
    """
    H = np.asarray(H_b_from_a, np.float64)
    tol = 1e-6 * (1 + max(size_a))
    parts = []
    for h1, h2, h3 in (H, -H):
        polygon = rect_corners(size_a)
        for line in (h1, (size_b[0] - 1) * h3 - h1, h2, (size_b[1] - 1) * h3 - h2, h3):
            polygon = _clip(polygon, line)
        parts.append(_simplify(polygon, tol))
    return max(parts, key=polygon_area)


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon ``(K, 2)`` (shoelace formula; 0 for fewer than 3 vertices).

    >>> polygon_area(rect_corners((11, 6)))
    50.0
    """
    x, y = np.asarray(polygon, np.float64).T
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


#: a ground truth is implausible for its images (a warning) when the geometric mean of the share
#: of A it maps inside B and the share of B that A then covers is under this: less overlap than a
#: 16x zoom, or a shift that leaves 1/16 of each image in the other
IMPLAUSIBLE_OVERLAP = 1 / 16


def check_ground_truth(
    pairs: list[RealPair], sizes_a: list[tuple[int, int]], sizes_b: list[tuple[int, int]]
) -> None:
    """Warn (one ``UserWarning`` naming the H files) about ground truths that probably belong to
    other images or another resolution, given the images' ``(width, height)``.

    A pair's overlap is the part of A that its ``H_b_from_a`` maps inside B (and in front of the
    camera, :func:`overlap_polygon`): with ``s_a`` its share of A's area and ``s_b`` the share of
    B's area it covers, the ground truth is implausible when ``sqrt(s_a * s_b)`` is under
    ``IMPLAUSIBLE_OVERLAP`` (1/16). A real zoom by z gives ``1/z`` (Oxford bark 1 -> 6: 0.24),
    and foreshortening keeps the overlap, however large A's image in B; an H file of other
    images, or for B at a far smaller resolution, leaves next to none. Such pairs are scored
    anyway. A pair whose ground truth sends a corner of A behind the camera and no part of A
    into B is not named here: it cannot be scored, and the evaluation skips it.
    """
    notes = []
    for pair, size_a, size_b in zip(pairs, sizes_a, sizes_b, strict=True):
        H = np.asarray(pair.H_b_from_a, np.float64)
        (wa, ha), (wb, hb) = size_a, size_b
        region = overlap_polygon(H, size_a, size_b)
        if len(region) == 0 and crosses_horizon(H, size_a):
            continue
        share_a = polygon_area(region) / ((wa - 1) * (ha - 1))
        share_b = polygon_area(project(H, region)) / ((wb - 1) * (hb - 1)) if len(region) else 0.0
        if np.sqrt(share_a * share_b) < IMPLAUSIBLE_OVERLAP:
            where = pair.path_h or f"the ground truth of {pair.pair_id}"
            notes.append(
                f"{where} (image B {wb}x{hb}: {100 * share_a:.3g}% of A lands in B and covers "
                f"{100 * share_b:.3g}% of it)"
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
