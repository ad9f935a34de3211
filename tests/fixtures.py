"""Test data built in a temporary folder from the photos bundled with scikit-image.

Nothing here is downloaded: the real-pair layouts (Oxford and HPatches), an OpenCV XML
homography, a camera-style file list and a folder of photos are all written from scikit-image's
sample photos and homographies chosen here, whose ground truth is therefore exact.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hdreg.data.decoding import load_gray, resize_gray
from hdreg.data.sources import sample_source

# Photos of scikit-image that keypoint detectors find plenty of texture in.
TEXTURED = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "brick.png", "gravel.png")

# Where the four corners of a 320×240 image A land in B (a plane seen from elsewhere), per
# target image; the H files of a fixture sequence are built from these.
CORNERS_A = np.array([[0, 0], [319, 0], [319, 239], [0, 239]], np.float64)
CORNERS_IN_B = (
    np.array([[12, 8], [300, 20], [310, 230], [5, 220]], np.float64),
    np.array([[30, 25], [290, 5], [305, 215], [20, 235]], np.float64),
    np.array([[-10, 15], [280, -5], [330, 250], [15, 230]], np.float64),
)


def sample_photo(name: str = "astronaut.png", size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A scikit-image photo as 8-bit grayscale, resized to ``size`` = (width, height)."""
    src = sample_source()
    return resize_gray(load_gray(src.root / name), size)


def homographies_b_from_a() -> list[np.ndarray]:
    """The fixture's true ``H_b_from_a`` for images 2, 3, 4 of a sequence (last entry 1)."""
    out = []
    for dst in CORNERS_IN_B:
        H = cv2.getPerspectiveTransform(CORNERS_A.astype(np.float32), dst.astype(np.float32))
        out.append(H.astype(np.float64) / H[2, 2])
    return out


def warp_b(image_a: np.ndarray, H_b_from_a: np.ndarray) -> np.ndarray:
    """Image B of a planar scene: ``B(H_b_from_a · p) = A(p)`` (bilinear, same size as A)."""
    h, w = image_a.shape
    return cv2.warpPerspective(image_a, H_b_from_a, (w, h), flags=cv2.INTER_LINEAR)


def write_matrix(path: Path, H: np.ndarray) -> Path:
    """A 3×3 matrix as the datasets write it: three rows of whitespace-separated numbers."""
    path.write_text("\n".join("   ".join(f"{v:.10g}" for v in row) for row in H) + "\n")
    return path


def write_sequence(
    folder: Path, layout: str, photo: str = "astronaut.png", *, ext: str = ".ppm"
) -> list[np.ndarray]:
    """A sequence of 4 images (1 reference + 3 views) in ``layout`` "hpatches" (``1.ppm``,
    ``H_1_2``) or "oxford" (``img1.ppm``, ``H1to2p``); returns the true ``H_b_from_a`` of images
    2, 3 and 4."""
    folder.mkdir(parents=True, exist_ok=True)
    image_a = sample_photo(photo)
    Hs = homographies_b_from_a()
    name = {"hpatches": "{}", "oxford": "img{}"}[layout]
    h_name = {"hpatches": "H_1_{}", "oxford": "H1to{}p"}[layout]
    cv2.imwrite(str(folder / (name.format(1) + ext)), cv2.cvtColor(image_a, cv2.COLOR_GRAY2BGR))
    for k, H in enumerate(Hs, start=2):
        image_b = cv2.cvtColor(warp_b(image_a, H), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(folder / (name.format(k) + ext)), image_b)
        write_matrix(folder / h_name.format(k), H)
    return Hs


def write_opencv_xml(path: Path, H: np.ndarray, node: str = "H13") -> Path:
    """``H`` in OpenCV's XML storage, as OpenCV's samples ship the graf homography."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE | cv2.FILE_STORAGE_FORMAT_XML)
    fs.write(node, H)
    fs.release()
    return path


# ScanNet-style frame names: two frames per scene, which must share a split group.
CAMERA_FRAMES = (
    "scene0711_00_frame-001680.jpg",
    "scene0711_00_frame-001995.jpg",
    "scene0713_00_frame-001320.jpg",
    "scene0713_00_frame-002025.jpg",
    "scene0743_00_frame-000000.jpg",
    "scene0743_00_frame-001275.jpg",
)
# Photo-collection names: one photo each (a landmark name, a Flickr id and a photo id).
COLLECTION_PHOTOS = (
    "london_bridge_19481797_2295892421.jpg",
    "london_bridge_49190386_5209386933.jpg",
    "piazza_san_marco_06795901_3725050516.jpg",
)


def write_photo_folder(root: Path) -> Path:
    """A folder of JPEGs from scikit-image's photos with camera-style names: ``frames/`` holds
    ScanNet-like video frames (two per scene), ``collection/`` landmark photos. 9 images."""
    photos = [sample_photo(n) for n in TEXTURED]
    for sub, names in (("frames", CAMERA_FRAMES), ("collection", COLLECTION_PHOTOS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            image = photos[i % len(photos)]
            if i % 2:  # the second frame of a scene: the same scene, seen slightly shifted
                image = np.ascontiguousarray(np.roll(image, 7 * i, axis=1))
            cv2.imwrite(str(root / sub / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return root
