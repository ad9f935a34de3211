"""Wide-motion pairs (hdreg.data.synthetic.wide): ranges, seeding, geometry against OpenCV, labels."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hdreg.apps.cli import main
from hdreg.apps.protocols import wide_protocol
from hdreg.config import config_dir
from hdreg.data.benchmarks.wide import write_wide_benchmark
from hdreg.data.real.pairs import find_real_pairs, load_pair_images
from hdreg.data.seeding import pair_rng
from hdreg.data.sources import folder_source
from hdreg.data.synthetic.photometric import augment_view
from hdreg.data.synthetic.render import render_view
from hdreg.data.synthetic.wide import (
    WidePairs,
    sample_wide_geometry,
    sample_wide_pair,
    wide_training_pair,
)
from hdreg.data.synthetic.wide_motion import draw_motion, motion_matrices
from hdreg.data.synthetic.wide_protocol import WideProtocol
from hdreg.data.synthetic.wide_torch import TorchWideGenerator, pyramid, render_views
from hdreg.geometry_np import project, rect_corners
from hdreg.training.datamodule import SyntheticDataModule

from .fixtures import sample_photo

GEOMETRY_ONLY = {"photometric": None}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return sample_photo("astronaut.png", (480, 360))


@pytest.fixture(scope="module")
def smooth_photo() -> np.ndarray:
    """Band-limited texture (blurred noise at full contrast): every shift of a pixel or two
    shows, while views rendered at different resolutions still agree."""
    noise = np.random.default_rng(0).standard_normal((360, 480)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 4.0)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _shifted(H_b_from_a: np.ndarray, dx: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, 0], [0, 0, 1.0]]) @ H_b_from_a


@pytest.fixture(scope="module")
def protocol() -> WideProtocol:
    return wide_protocol(**GEOMETRY_ONLY)


def _consistency_error(view_a, view_b, H_b_from_a, view_size) -> float:
    """Mean absolute difference between one view and the other warped by ``H_b_from_a`` (in
    the direction that magnifies, so that the warp does not alias), where both are valid."""
    H, src, dst = H_b_from_a, view_a, view_b
    if abs(np.linalg.det(H[:2, :2] / H[2, 2])) < 1.0:
        H, src, dst = np.linalg.inv(H), view_b, view_a
    warped = cv2.warpPerspective(src, H, view_size, flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.full_like(src, 255), H, view_size, flags=cv2.INTER_NEAREST)
    valid = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0
    assert valid.sum() > 200, "the two views do not overlap"
    return float(np.abs(warped[valid].astype(np.float64) - dst[valid]).mean())


class TestMotion:
    def test_ranges_and_extremes(self, protocol):
        draws = [draw_motion(protocol, pair_rng(0, 0, i), 4 / 3) for i in range(400)]
        rot = np.array([m.rotation for m in draws])
        zoom = np.array([m.zoom for m in draws])
        persp = np.array([np.linalg.norm(m.perspective, axis=1).max() for m in draws])
        trans = np.array([np.abs(m.translation).max() for m in draws])
        jit = np.array([np.linalg.norm(m.jitter_a, axis=1).max() for m in draws])
        assert np.abs(rot).max() <= 45 and rot.min() < -43 and rot.max() > 43
        assert zoom.min() >= 0.5 and zoom.max() <= 2.0
        assert zoom.min() < 0.52 and zoom.max() > 1.9
        assert 0.9 < np.median(zoom) < 1.1  # log-uniform: the median is the geometric mean
        assert persp.max() <= 0.3 and persp.max() > 0.28
        assert trans.max() <= 0.25 and trans.max() > 0.24
        assert jit.max() <= 0.05 and jit.max() > 0.045
        assert not any(m.fallback for m in draws)

    @pytest.mark.parametrize("i", range(5))
    def test_similarity_is_the_drawn_rotation_and_zoom(self, photo, i):
        """Without perspective and jitter, H_b_from_a is a similarity of the drawn angle and
        scale (benchmark views keep the aspect, so nothing is squashed)."""
        protocol = wide_protocol(perspective=0.0, footprint_jitter=0.0, **GEOMETRY_ONLY)
        pair = sample_wide_pair(photo, (320, 240), protocol, pair_rng(1, 0, i))
        A = pair.H_b_from_a[:2, :2]
        assert np.allclose(pair.H_b_from_a[2, :2], 0, atol=1e-12)
        scale = math.sqrt(abs(np.linalg.det(A)))
        angle = math.degrees(math.atan2(A[1, 0], A[0, 0]))
        assert scale == pytest.approx(pair.motion.zoom, rel=1e-9)
        assert angle == pytest.approx(pair.motion.rotation, abs=1e-7)

    def test_perspective_moves_corners_at_most_its_share(self):
        protocol = wide_protocol(rotation=0.0, zoom=[1, 1], translation=0.0,
                                        footprint_jitter=0.0, **GEOMETRY_ONLY)  # fmt: skip
        for i in range(50):
            m = draw_motion(protocol, pair_rng(2, 0, i), 1.5)
            M, _, _ = motion_matrices(m)
            rect = np.array([[-0.75, -0.5], [0.75, -0.5], [0.75, 0.5], [-0.75, 0.5]])
            shift = (project(M, rect) - rect) / np.array([1.5, 1.0])
            assert np.linalg.norm(shift, axis=1).max() <= 0.3 + 1e-9

    def test_folding_draws_fall_back_to_a_similarity(self):
        """Perspective and jitter at their limit still give a pair, never an endless loop."""
        protocol = wide_protocol(perspective=0.4, footprint_jitter=0.05, **GEOMETRY_ONLY)
        for i in range(200):
            m = draw_motion(protocol, pair_rng(3, 0, i), 1.0)
            M, J_a, J_b = motion_matrices(m)
            assert np.isfinite(M).all() and np.isfinite(J_a).all() and np.isfinite(J_b).all()


class TestPair:
    def test_same_seed_same_pair_and_new_index_new_pair(self, photo):
        protocol = wide_protocol()  # photometric on: its draws are seeded too
        a = sample_wide_pair(photo, (160, 120), protocol, pair_rng(5, 0, 7))
        b = sample_wide_pair(photo, (160, 120), protocol, pair_rng(5, 0, 7))
        c = sample_wide_pair(photo, (160, 120), protocol, pair_rng(5, 0, 8))
        assert np.array_equal(a.view_a, b.view_a) and np.array_equal(a.view_b, b.view_b)
        assert np.array_equal(a.H_b_from_a, b.H_b_from_a)
        assert not np.allclose(a.H_b_from_a, c.H_b_from_a)
        assert not np.array_equal(a.view_a, c.view_a)

    @pytest.mark.parametrize("i", range(8))
    def test_views_agree_with_their_homography(self, smooth_photo, protocol, i):
        pair = sample_wide_pair(smooth_photo, (320, 240), protocol, pair_rng(0, 0, i))
        assert pair.view_a.shape == pair.view_b.shape == (240, 320)
        assert pair.view_a.dtype == np.uint8 and pair.H_b_from_a.dtype == np.float64
        # consistent with the footprints: H_b_from_a = H_source_from_b^-1 H_source_from_a
        composed = np.linalg.inv(pair.H_source_from_b) @ pair.H_source_from_a
        assert np.allclose(composed / composed[2, 2], pair.H_b_from_a, atol=1e-9)
        views = pair.view_a, pair.view_b
        error = _consistency_error(*views, pair.H_b_from_a, (320, 240))
        assert error < 3.0
        # the measure can fail: two pixels off in view B triple it at least
        assert _consistency_error(*views, _shifted(pair.H_b_from_a, 2.0), (320, 240)) > 3 * error

    @pytest.mark.parametrize("i", range(6))
    def test_both_views_are_warped_from_the_photo(self, smooth_photo, protocol, i):
        """Neither view is an axis-aligned crop and resize of the photo: the best such crop (the
        footprint's bounding box) differs from the view, while rendering the footprint does not."""
        photo = smooth_photo
        pair = sample_wide_pair(photo, (320, 240), protocol, pair_rng(0, 0, i))
        for view, H in ((pair.view_a, pair.H_source_from_a), (pair.view_b, pair.H_source_from_b)):
            quad = project(H, rect_corners((320, 240)))
            x0, y0 = np.floor(quad.min(axis=0)).astype(int)
            x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
            crop = cv2.resize(
                photo[y0 : y1 + 1, x0 : x1 + 1], (320, 240), interpolation=cv2.INTER_AREA
            )
            rendered = cv2.warpPerspective(
                photo, H, (320, 240), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            )
            far = np.abs(crop.astype(float) - view).mean()
            near = np.abs(rendered.astype(float) - view).mean()
            assert far > 5.0 and near < far / 3
            # and its footprint is not an axis-aligned rectangle
            edges = np.roll(quad, -1, axis=0) - quad
            assert np.abs(edges[0, 1]) > 0.5 or np.abs(edges[1, 0]) > 0.5

    @pytest.mark.parametrize("shape", [(360, 480), (64, 64), (64, 900), (900, 70)])
    def test_footprints_inside_the_photo(self, shape):
        photo = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        protocol = wide_protocol()
        for i in range(40):
            pair = sample_wide_pair(photo, (96, 72), protocol, pair_rng(0, 0, i))
            for H in (pair.H_source_from_a, pair.H_source_from_b):
                quad = project(
                    H, np.array([[-0.5, -0.5], [95.5, -0.5], [95.5, 71.5], [-0.5, 71.5]])
                )
                assert quad.min() >= -1e-6
                assert (quad.max(axis=0) <= np.array([shape[1] - 1, shape[0] - 1]) + 1e-6).all()

    def test_bad_photos_are_refused_with_the_reason(self, protocol):
        with pytest.raises(ValueError, match=r"my\.png is 63x200: too small .* 64 px"):
            sample_wide_pair(np.zeros((200, 63), np.uint8), (64, 64), protocol,
                             pair_rng(0, 0, 0), name="my.png")  # fmt: skip
        with pytest.raises(ValueError, match="grayscale"):
            sample_wide_pair(
                np.zeros((100, 100, 3), np.uint8), (64, 64), protocol, pair_rng(0, 0, 0)
            )
        with pytest.raises(ValueError, match="view_size"):
            sample_wide_pair(np.zeros((100, 100), np.uint8), (1, 64), protocol, pair_rng(0, 0, 0))

    def test_minified_views_do_not_alias(self):
        """A fine grating seen from far away renders as its mean grey, not as a moire."""
        grating = np.tile(np.array([0, 255], np.uint8), (800, 400))  # 1-px stripes, 800x800
        protocol = wide_protocol(zoom=[1, 1], rotation=0.0, **GEOMETRY_ONLY)
        pair = sample_wide_pair(grating, (64, 64), protocol, pair_rng(0, 0, 0))
        assert abs(float(pair.view_a.mean()) - 127.5) < 8 and pair.view_a.std() < 12

    def test_invalid_parameters(self):
        with pytest.raises(ValueError, match="zoom"):
            wide_protocol(zoom=[2, 1])
        with pytest.raises(ValueError, match="rotation"):
            wide_protocol(rotation=-1)
        with pytest.raises(ValueError, match="unknown wide-pair parameter"):
            wide_protocol(rotate=3)
        with pytest.raises(ValueError, match="unknown photometric parameter"):
            wide_protocol(photometric={"sharpen": 1})


class TestPhotometric:
    def test_each_step_changes_the_view_and_none_keeps_it(self, photo):
        view = photo[:120, :160].copy()
        base = wide_protocol().photometric
        off = {k: 0.0 for k in ("p_tone", "p_blur", "p_motion_blur", "p_noise", "p_jpeg")}
        none = type(base)(**{**base.__dict__, **off})
        assert np.array_equal(augment_view(view, none, np.random.default_rng(0)), view)
        for step in off:
            aug = type(base)(**{**base.__dict__, **off, step: 1.0})
            out = augment_view(view, aug, np.random.default_rng(1))
            assert out.shape == view.shape and out.dtype == np.uint8
            assert np.abs(out.astype(float) - view).mean() > 0.3, step

    def test_views_are_augmented_independently(self, photo):
        protocol = wide_protocol(rotation=0.0, zoom=[1, 1], perspective=0.0,
                                        translation=0.0, footprint_jitter=0.0,
                                        photometric={"p_tone": 1.0})  # fmt: skip
        means = []
        for i in range(20):
            pair = sample_wide_pair(photo, (96, 72), protocol, pair_rng(0, 0, i))
            means.append(float(pair.view_b.mean()) - float(pair.view_a.mean()))
        assert np.std(means) > 5


class TestTrainingPairs:
    @pytest.mark.parametrize("i", range(6))
    def test_labels_agree_with_opencv(self, smooth_photo, protocol, i):
        photo = cv2.resize(smooth_photo, (160, 120), interpolation=cv2.INTER_AREA)
        pair = wide_training_pair(photo, 64, protocol, pair_rng(0, 1, i), with_homography=True)
        corners = pair["corners"]
        assert np.array_equal(corners, rect_corners((64, 64), dtype=np.float32))
        H_a_from_b = cv2.getPerspectiveTransform(corners, corners + pair["offsets"])
        H_true = np.linalg.inv(pair["H_b_from_a"])
        assert np.allclose(H_a_from_b / H_a_from_b[2, 2], H_true / H_true[2, 2], atol=1e-3)

        # the label carries the images: patch B is patch A seen through H_a_from_b
        views = pair["patch_a"], pair["patch_b"]
        H_b_from_a = np.linalg.inv(H_a_from_b)
        error = _consistency_error(*views, H_b_from_a, (64, 64))
        assert error < 8.0
        assert _consistency_error(*views, _shifted(H_b_from_a, 2.0), (64, 64)) > 2 * error

    @pytest.mark.parametrize("aspect", [0.75, 16 / 9])
    def test_square_views_squash_a_footprint_of_the_given_aspect(self, photo, aspect):
        protocol = wide_protocol(footprint_jitter=0.0, **GEOMETRY_ONLY)
        pair = sample_wide_pair(photo, (64, 64), protocol, pair_rng(0, 1, 0), aspect=aspect)
        quad = project(pair.H_source_from_a, rect_corners((64, 64)))
        width, height = np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[3] - quad[0])
        assert width / height == pytest.approx(aspect, rel=1e-6)

    def test_dataset_items_like_detone_pairs(self, photo):
        images = np.stack([photo, photo[::-1].copy()])
        ds = WidePairs(images, 64, wide_protocol(), seed=0, length=4, flips=True)
        item = ds[3]
        assert set(item) == {"patch_a", "patch_b", "offsets", "corners"}
        assert item["patch_a"].shape == (1, 64, 64) and str(item["patch_a"].dtype) == "torch.uint8"
        assert item["offsets"].shape == (4, 2) and str(item["offsets"].dtype) == "torch.float32"
        again = WidePairs(images, 64, wide_protocol(), seed=0, length=10, flips=True)
        assert np.array_equal(again[3]["patch_b"].numpy(), item["patch_b"].numpy())
        with pytest.raises(IndexError):
            ds[4]


def _photo_folder(root):
    """Three photos (one too small, one not an image) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "b_astronaut.png"), sample_photo("astronaut.png", (200, 150)))
    cv2.imwrite(str(root / "a_coffee.png"), sample_photo("coffee.png", (160, 120)))
    cv2.imwrite(str(root / "c_tiny.png"), np.zeros((20, 30), np.uint8))
    (root / "d_broken.jpg").write_bytes(b"not an image")
    return root


class TestWideBenchmark:
    def _write(self, tmp_path, out, n=5, **kw):

        source = folder_source(_photo_folder(tmp_path / "photos"))
        with pytest.warns(UserWarning, match=r"skipped 2 of 4 files.*c_tiny.png.*too small"):
            return write_wide_benchmark(
                source, out, n=n, seed=3, view_size=(96, 72), **{"protocol": wide_protocol(), **kw}
            )

    def _refused(self, tmp_path, out, **kw):

        source = folder_source(_photo_folder(tmp_path / "photos"))
        kw = {"protocol": wide_protocol(), **kw}
        write_wide_benchmark(source, out, n=2, seed=3, view_size=(96, 72), **kw)

    def test_identical_files_readable_as_real_pairs(self, tmp_path):

        first = self._write(tmp_path, tmp_path / "one")
        second = self._write(tmp_path, tmp_path / "two")
        names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
        assert len(names) == 5 * 3 + 1 and "manifest.json" in names
        for name in names:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
        pairs = find_real_pairs(first)
        assert [p.pair_id for p in pairs] == [f"{i:05d}/1-2" for i in range(5)]
        # pair i is pair i of the benchmark stream, from usable photo i mod 2 (sorted)
        photos = [sample_photo("coffee.png", (160, 120)), sample_photo("astronaut.png", (200, 150))]
        for i, pair in enumerate(pairs):
            expected = sample_wide_pair(photos[i % 2], (96, 72), wide_protocol(),
                                        pair_rng(3, 0, i))  # fmt: skip
            assert np.allclose(pair.H_b_from_a, expected.H_b_from_a, rtol=1e-12, atol=1e-12)
            view_a, view_b = load_pair_images(pair)
            assert np.array_equal(view_a, expected.view_a)
            assert np.array_equal(view_b, expected.view_b)
        manifest = json.loads((first / "manifest.json").read_text())
        assert manifest["pairs"][1]["source"] == "b_astronaut.png" and manifest["photos"] == 2

    def test_never_mixes_with_earlier_files(self, tmp_path):
        out = self._write(tmp_path, tmp_path / "bench", n=4)
        with pytest.raises(FileExistsError, match="--overwrite"):
            self._refused(tmp_path, out)
        self._write(tmp_path, out, n=2, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "manifest.json"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "photos"]  # no leftovers
        other = tmp_path / "other"
        other.mkdir()
        (other / "notes.txt").write_text("mine")
        with pytest.raises(FileExistsError, match="not empty"):
            self._refused(tmp_path, other, overwrite=True)
        assert (other / "notes.txt").read_text() == "mine"

    def test_cli_writes_and_refuses_detone_options(self, tmp_path, capsys):
        photos = _photo_folder(tmp_path / "photos")
        args = ["make-benchmark", "--protocol", "wide", "--source", str(photos), "--seed", "1"]
        out = tmp_path / "bench"
        with pytest.warns(UserWarning):
            assert main([*args, "--n", "2", "--view-size", "64", "48", "--out", str(out)]) == 0
        assert cv2.imread(str(out / "00001" / "2.png"), cv2.IMREAD_UNCHANGED).shape == (48, 64)
        assert main([*args, "--n", "2", "--rho", "10", "--out", str(tmp_path / "x")]) != 0
        assert "drop --rho" in capsys.readouterr().err
        assert main([*args, "--out", str(tmp_path / "y")]) != 0
        assert "needs --n" in capsys.readouterr().err
        assert main(["make-benchmark", "--view-size", "64", "48", "--out", "z.npz"]) != 0
        assert "--protocol wide" in capsys.readouterr().err

    def test_cli_zoom_and_rotation_ranges(self, tmp_path, capsys):
        """--zoom and --rotation set the motion's ranges; the realised zooms and rotations of the
        ground truths fall in them, and the defaults stay the config's."""
        photos = _photo_folder(tmp_path / "photos")
        args = ["make-benchmark", "--protocol", "wide", "--source", str(photos), "--seed", "0"]
        args += ["--n", "12", "--view-size", "64", "48", "--no-photometric"]
        with pytest.warns(UserWarning):
            assert (
                main([*args, "--zoom", "3", "4", "--rotation", "180", "--out", str(tmp_path / "b")])
                == 0
            )
        assert "zoom 3-4, rotation ±180°" in capsys.readouterr().out
        zooms, turns = [], []
        for folder in sorted(p for p in (tmp_path / "b").iterdir() if p.is_dir()):
            H = np.loadtxt(folder / "H_1_2")
            H = H / H[2, 2]
            c = np.array([31.5, 23.5, 1.0])  # the local affine part at A's centre
            w = H[2] @ c
            J = (H[:2, :2] * w - np.outer(H[:2] @ c, H[2, :2])) / w**2
            zooms.append(np.sqrt(abs(np.linalg.det(J))))
            turns.append(np.degrees(np.arctan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])))
        assert min(zooms) > 2.4 and max(zooms) < 5.0  # zoom in [3, 4], then perspective on top
        assert max(np.abs(turns)) > 45  # beyond the default ±45°
        with pytest.warns(UserWarning):
            assert main([*args, "--out", str(tmp_path / "d")]) == 0
        assert "zoom 0.5-2, rotation ±45°" in capsys.readouterr().out
        assert main([*args, "--rotation", "200", "--out", str(tmp_path / "e")]) == 2
        assert "rotation must be in [0, 180.0], got 200.0" in capsys.readouterr().err
        assert main(["make-benchmark", "--zoom", "0.25", "4", "--out", "z.npz"]) == 2
        assert "--zoom go(es) with --protocol wide" in capsys.readouterr().err


class TestTorchGenerator:
    """The batched generator (data.generator=torch) against the CPU one and OpenCV."""

    def test_pyramid_is_opencv_pyrdown(self, photo):

        levels = pyramid(torch.from_numpy(photo[:121, :161].copy())[None], 2)
        ref = photo[:121, :161].astype(np.float32)
        for level in levels[1:]:
            ref = cv2.pyrDown(ref)
            assert level.shape[2:] == ref.shape
            assert np.allclose(level[0, 0].numpy(), ref, atol=1e-3)

    @pytest.mark.parametrize("i", range(4))
    def test_rendering_matches_the_cpu_renderer(self, photo, protocol, i):
        g = sample_wide_geometry((480, 360), (64, 64), protocol, pair_rng(0, 1, i), aspect=1.4)
        levels = pyramid(torch.from_numpy(photo)[None], 4)
        H = torch.from_numpy(np.stack([g.H_source_from_a, g.H_source_from_b]))
        views = render_views(levels, torch.tensor([0, 0]), H, (64, 64)).round().clamp(0, 255)
        for view, H_np in zip(
            views[:, 0].numpy(), (g.H_source_from_a, g.H_source_from_b), strict=True
        ):
            assert np.abs(view - render_view(photo, H_np, (64, 64))).mean() < 0.5

    def test_batches_seeded_and_labelled(self, smooth_photo):

        photos = np.stack([cv2.resize(smooth_photo, (160, 120), interpolation=cv2.INTER_AREA)])
        geometry = wide_protocol(**GEOMETRY_ONLY)
        gen = TorchWideGenerator(torch.from_numpy(photos), 32, geometry, seed=0, flips=True)
        batch = gen.generate(8, 0)
        assert batch["patch_a"].shape == (8, 1, 32, 32) and batch["patch_a"].dtype == torch.uint8
        assert batch["offsets"].shape == (8, 4, 2) and batch["offsets"].dtype == torch.float32
        assert torch.equal(gen.generate(8, 0)["patch_b"], batch["patch_b"])
        assert not torch.equal(gen.generate(8, 1)["patch_b"], batch["patch_b"])
        # labels: patch B is patch A seen through the label's homography
        corners = rect_corners((32, 32), dtype=np.float32)
        for j in range(4):
            off = batch["offsets"][j].numpy()
            H_b_from_a = np.linalg.inv(cv2.getPerspectiveTransform(corners, corners + off))
            views = batch["patch_a"][j, 0].numpy(), batch["patch_b"][j, 0].numpy()
            error = _consistency_error(*views, H_b_from_a, (32, 32))
            assert error < 2 * _consistency_error(*views, _shifted(H_b_from_a, 2.0), (32, 32))

    @pytest.mark.slow
    def test_distributed_like_cpu_pairs(self, smooth_photo):
        """Corner offsets and photometric change of 96 pairs each (about 15 s on one core)."""

        photos = np.stack([cv2.resize(smooth_photo, (160, 120), interpolation=cv2.INTER_AREA)])
        geometry = wide_protocol(**GEOMETRY_ONLY)
        gen = TorchWideGenerator(torch.from_numpy(photos), 32, geometry, seed=0, flips=True)
        batch = gen.generate(96, 0)
        cpu = WidePairs(photos, 32, geometry, seed=0, length=96, flips=True)
        cpu_offsets = np.stack([cpu.pair(i)[1]["offsets"] for i in range(96)])
        ratio = np.median(np.abs(batch["offsets"].numpy())) / np.median(np.abs(cpu_offsets))
        assert 0.75 < ratio < 1.33  # heavy-tailed (zoom x0.5): the medians of 96 pairs
        full = wide_protocol()
        gen = TorchWideGenerator(torch.from_numpy(photos), 32, full, seed=0)
        b = gen.generate(96, 0)
        cpu = WidePairs(photos, 32, full, seed=0, length=96)
        gap_torch = b["patch_a"].float().mean((1, 2, 3)) - b["patch_b"].float().mean((1, 2, 3))
        gap_cpu = [float(x["patch_a"].mean()) - float(x["patch_b"].mean()) for x in
                   (cpu.pair(i)[1] for i in range(96))]  # fmt: skip
        assert 0.7 < float(gap_torch.abs().mean()) / np.abs(gap_cpu).mean() < 1.4


class TestDataModule:
    def test_wide_pairs_in_the_datamodule_and_recipe(self, tmp_path):

        for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
            cv2.imwrite(str(tmp_path / (name[:-4] + ".png")), sample_photo(name, (200, 150)))
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose("train", overrides=["experiment=wide_cpu", "init=iterative"])
        assert cfg.data.pairs == "wide" and cfg.data.source == "samples-all"
        assert cfg.model.net._target_.endswith("IterativeHomographyNet") and cfg.init == "iterative"
        overrides = {
            "source": str(tmp_path), "image_size": [160, 120], "patch_size": 32, "rho": 8,
            "val_pairs": 3, "test_pairs": 2, "batch_size": 2, "num_workers": 0,
        }  # fmt: skip
        dm: SyntheticDataModule = instantiate({**cfg.data, **overrides})
        dm.setup()
        assert dm.val_benchmark.patch_a.shape == (3, 32, 32) and len(dm.test_benchmark) == 2
        item = dm.train_dataset()[0]
        assert set(item) == {"patch_a", "patch_b", "offsets", "corners"}
        dm.generator = "torch"
        batch = dm.on_after_batch_transfer(torch.tensor(0), 0)
        assert batch["patch_a"].shape == (2, 1, 32, 32) and batch["offsets"].shape == (2, 4, 2)
        with pytest.raises(Exception, match=r"data\.pairs must be one of detone, wide"):
            instantiate({**cfg.data, **overrides, "pairs": "far"})
