"""The scale-space search of rotation, zoom and position (hdreg/models/scale_search.py), checked
against pairs rendered by OpenCV from a bundled photo under a known similarity."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from hdreg.estimators.confidence import alignment_confidence
from hdreg.geometry_np import project
from hdreg.models.checkpoint import check_estimator_config, load_net
from hdreg.models.scale_search import ScaleSpaceSearch
from hdreg.models.similarity import centre_similarity


@pytest.fixture(scope="module")
def search() -> ScaleSpaceSearch:
    return ScaleSpaceSearch(load_net("wide").coarse.encoder).eval()


@pytest.fixture(scope="module")
def photo(search) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    n = search.input_size
    return cv2.resize(skimage_data.astronaut()[..., 1], (n, n), interpolation=cv2.INTER_AREA)


def _pair(photo: np.ndarray, angle: float, zoom: float, shift: tuple[float, float]):
    """B rendered from A by OpenCV, ``B(q) = A(G q)``: ``H_a_from_b = G`` (a rotation by
    ``angle`` and a scale by ``zoom`` about the centre, then ``shift``)."""
    n = photo.shape[0]
    G = centre_similarity(n, torch.tensor(float(angle)), torch.tensor(float(zoom))).numpy()
    G[:2, 2] += shift
    flags = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
    b = cv2.warpPerspective(photo, G, (n, n), flags=flags, borderMode=cv2.BORDER_REFLECT)
    return b, G


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image)[None, None].float() / 255.0


@pytest.mark.parametrize(
    ("angle", "zoom", "shift"),
    [
        (0.0, 1.0, (0.0, 0.0)),
        (45.0, 2.0, (30.0, -20.0)),   # B zoomed out x0.5, turned, off-centre
        (90.0, 4.0, (40.0, 10.0)),    # B zoomed out x0.25
        (135.0, 0.25, (20.0, 30.0)),  # B zoomed in x4
        (247.5, 0.5, (-25.0, 10.0)),  # B zoomed in x2
    ],
)  # fmt: skip
def test_finds_the_class_and_the_position_of_a_known_similarity(search, photo, angle, zoom, shift):
    b, G = _pair(photo, angle, zoom, shift)
    out = search(_tensor(photo), _tensor(b))
    k = int(out["scores"].argmax())
    found_angle, found_zoom = search.hypotheses()[k]
    assert found_angle == pytest.approx(angle)
    assert found_zoom == pytest.approx(zoom, rel=0.02)
    # the found similarity maps B's inner box into A within about a cell of the search level
    n = photo.shape[0]
    box = np.array([[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]) * (n - 1)
    found = out["H_a_from_b"][k].numpy()
    error = np.linalg.norm(project(found, box) - project(G, box), axis=1).max()
    assert error < 2 * search.stride * max(zoom, 1.0)


def test_the_classes_are_rotation_major_and_the_zooms_symmetric(search):
    classes = search.hypotheses()
    zooms = search.zooms
    assert len(classes) == search.rotations * len(zooms) == 16 * 9
    assert classes[: len(zooms)] == [(0.0, z) for z in zooms]
    assert classes[len(zooms)][0] == pytest.approx(22.5)
    np.testing.assert_allclose(np.array(zooms) * np.array(zooms[::-1]), 1.0)
    assert zooms[0] == pytest.approx(0.25) and zooms[-1] == pytest.approx(4.0)
    # half octaves, as realised by search sides that are multiples of the encoder's stride
    for j in range(search.zoom_octaves * search.steps + 1):
        assert search._side(j) % search.stride == 0
        assert math.log2(search._side(j) / search.template) == pytest.approx(j / 2, abs=0.05)


def test_the_scores_are_mean_cosines(search, photo):
    out = search(_tensor(photo), _tensor(photo))
    assert out["scores"].shape == (len(search.hypotheses()),)
    assert out["H_a_from_b"].shape == (len(search.hypotheses()), 3, 3)
    assert float(out["scores"].max()) == pytest.approx(1.0, abs=1e-4)  # the identity, cell by cell
    assert float(out["scores"].min()) >= -1.0


def test_argument_checks(search):
    encoder = search.encoder
    for kwargs, message in [
        ({"template": 62}, "multiple of the encoder's stride"),
        ({"rotations": 0}, "rotations >= 1"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"overhang": 1.0}, r"overhang must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            ScaleSpaceSearch(encoder, **kwargs)
    small = torch.zeros(1, 1, 64, 64)
    with pytest.raises(ValueError, match="256x256 thumbnails"):
        search(small, small)


def test_the_estimator_config_names_the_search():
    check_estimator_config({"kind": "coarse_to_fine", "proposal": "scale-search"})
    with pytest.raises(ValueError, match="not a shipped model or 'global-encoder' or 'scale-se"):
        check_estimator_config({"kind": "coarse_to_fine", "proposal": "scale-searc"})


def test_search_settings_need_the_search(tmp_path):
    from hdreg.estimators.learned import load_checkpoint_estimator
    from hdreg.models.checkpoint import resolve_checkpoint

    raw = torch.load(resolve_checkpoint("wide"), weights_only=True)

    def with_spec(name: str, **changes) -> str:
        path = tmp_path / name
        torch.save({**raw, "hdreg_estimator": {**raw["hdreg_estimator"], **changes}}, path)
        return str(path)

    built = load_checkpoint_estimator(with_spec("a.pt", search_rotations=8), device="cpu")
    assert built.proposal_net.rotations == 8
    assert len(built.classes) == 8 * 9
    bad = with_spec("b.pt", search_rotations=8, proposal="global-encoder")
    with pytest.raises(ValueError, match="search_rotations but its proposal is 'global-encoder'"):
        load_checkpoint_estimator(bad, device="cpu")
    with pytest.raises(
        ValueError, match=r"search_\* settings: .*unexpected keyword argument .spin."
    ):
        load_checkpoint_estimator(with_spec("c.pt", search_spin=8), device="cpu")


def test_the_confidence_of_a_zoomed_out_pair_counts_the_overlap_from_a(photo):
    """B zoomed out x0.25 shows all of A in a sixteenth of itself: the exact homography is
    trusted (the overlap is all of A), a wrong one is not."""
    b, G = _pair(photo, 30.0, 4.0, (0.0, 0.0))
    confidence, correlation, overlap = alignment_confidence(photo, b, G)
    assert overlap == pytest.approx(1.0, abs=0.02)
    assert confidence > 0.5 and confidence == pytest.approx(correlation * math.sqrt(overlap))
    wrong = G @ centre_similarity(photo.shape[0], torch.tensor(90.0), torch.tensor(1.0)).numpy()
    assert alignment_confidence(photo, b, wrong)[0] < 0.2


def test_letterbox_shows_the_whole_photo_at_its_own_aspect_ratio():
    from hdreg.estimators.coarse_to_fine import letterbox
    from hdreg.geometry_np import scale_matrix
    from hdreg.images import resize_area

    image = np.random.default_rng(0).integers(0, 256, (480, 640), dtype=np.uint8)
    square, valid, photo_from_square = letterbox(image, 256)
    assert square.shape == valid.shape == (256, 256)
    rows = np.flatnonzero(valid.any(axis=1))
    assert (rows[0], rows[-1], valid.sum()) == (32, 223, 256 * 192)  # centred, 256×192
    np.testing.assert_array_equal(square[32:224], resize_area(image, (256, 192)))
    # the square's pixel (x, y + 32) is the 256×192 thumbnail's (x, y), in the photo's pixels
    corners = np.array([[0.0, 0.0], [255.0, 191.0]])
    np.testing.assert_allclose(
        project(photo_from_square, corners + np.array([0.0, 32.0])),
        project(scale_matrix((256, 192), (640, 480)), corners),
        atol=1e-12,
    )


def test_a_wide_photo_turned_a_quarter_is_placed():
    """A 16:9 view and the same scene turned by 90°: the search sees both photos at their own
    aspect ratio (stretched to the square, a turn of one would be no turn of the other), and
    its first class places B's middle within a few pixels of the truth."""
    from hdreg.estimators.coarse_to_fine import _Pair
    from hdreg.estimators.learned import load_checkpoint_estimator

    skimage_data = pytest.importorskip("skimage.data")
    w, h = 768, 432
    source = cv2.resize(
        skimage_data.astronaut()[..., 1], (1024, 1024), interpolation=cv2.INTER_AREA
    )
    src_from_a = np.array([[1.0, 0.0, 128.0], [0.0, 1.0, 296.0], [0.0, 0.0, 1.0]])
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # B: A turned by 90° about its centre (B's pixel q shows A's pixel H_a_from_b q)
    H_a_from_b = np.array([[0.0, -1.0, cx + cy], [1.0, 0.0, cy - cx], [0.0, 0.0, 1.0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    a = cv2.warpPerspective(source, src_from_a, (w, h), flags=flags)
    b = cv2.warpPerspective(source, src_from_a @ H_a_from_b, (w, h), flags=flags)
    wide = load_checkpoint_estimator("wide", device="cpu")
    order, starts = wide._search(_Pair(a, b, np.eye(3), {}))
    box = np.array([[0.3 * w, 0.3 * h], [0.7 * w, 0.3 * h], [0.7 * w, 0.7 * h], [0.3 * w, 0.7 * h]])
    error = np.linalg.norm(project(starts[order[0]], box) - project(H_a_from_b, box), axis=1)
    assert error.max() < 12.0, error  # a cell of the 256-px search is 3 px of the photo per side


def test_the_masks_must_match_the_thumbnails(search):
    n = search.input_size
    a = torch.zeros(1, 1, n, n)
    with pytest.raises(ValueError, match="valid_a and valid_b must have the thumbnails' shapes"):
        search(a, a, valid_a=torch.ones(1, 1, 64, 64))
