"""Image sources, the DeTone pair generator, splits and benchmark files."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import hdreg.data as hdreg_data
from hdreg.apps.protocols import detone_protocol
from hdreg.data.benchmarks.synthetic import (
    make_synthetic_benchmark,
    read_synthetic_benchmark,
    write_synthetic_benchmark,
)
from hdreg.data.decoding import load_gray, load_images
from hdreg.data.seeding import single_threaded_opencv
from hdreg.data.sources import (
    SAMPLE_IMAGES,
    coco_source,
    folder_source,
    resolve_source,
    sample_source,
)
from hdreg.data.splits import split_by_image
from hdreg.data.synthetic.detone import PhotometricJitter, SyntheticPairs
from hdreg.geometry import four_point_to_homography, inside_mask, warp_grid, warp_perspective
from hdreg.images import gray_pair, to_gray_u8

from .conftest import textured_image
from .fixtures import CAMERA_FRAMES, COLLECTION_PHOTOS, write_photo_folder


class TestSources:
    def test_samples_are_read_from_installed_package(self):
        src = sample_source()
        assert src.kind == "samples" and len(src.files) == len(SAMPLE_IMAGES)
        images = load_images(src)
        assert images.images.shape == (len(SAMPLE_IMAGES), 240, 320)
        assert images.images.dtype == np.uint8
        assert images.groups.count("motorcycle") == 2

    def test_folder_recursive_and_formats(self, image_folder):
        src = folder_source(image_folder)
        assert src.files == ("a.png", "b.jpg", "sub/c.ppm")
        images = load_images(src, (160, 120))
        assert images.images.shape == (3, 120, 160)

    def test_modes_become_8bit_gray(self, tmp_path):
        gray = textured_image(40, 50)
        cv2.imwrite(str(tmp_path / "g16.png"), gray.astype(np.uint16) * 257)
        rgba = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
        cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
        cv2.imwrite(str(tmp_path / "rgb.tiff"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(str(tmp_path / "g.pgm"), gray)
        cv2.imwrite(str(tmp_path / "w.webp"), gray, [cv2.IMWRITE_WEBP_QUALITY, 101])
        for name in ("g16.png", "rgba.png", "rgb.tiff", "g.pgm", "w.webp"):
            out = load_gray(tmp_path / name)
            assert out.dtype == np.uint8 and out.shape == (40, 50), name
            assert np.abs(out.astype(int) - gray).max() <= 1, name

    def test_rgba_file_and_its_array_give_one_gray_image(self, tmp_path):
        """The loader composited RGBA over white while hdreg.estimate ignored alpha."""
        bgra = cv2.cvtColor(textured_image(40, 50), cv2.COLOR_GRAY2BGRA)
        bgra[:, :, 0] //= 2  # colour, so that the gray weights matter
        bgra[:, :, 3] = np.linspace(0, 255, 50).astype(np.uint8)[None, :]  # transparent ramp
        cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
        from_file = load_gray(tmp_path / "rgba.png")
        as_array = cv2.imread(str(tmp_path / "rgba.png"), cv2.IMREAD_UNCHANGED)  # BGRA
        np.testing.assert_array_equal(to_gray_u8(as_array), from_file)
        with Image.open(tmp_path / "rgba.png") as pil:
            np.testing.assert_array_equal(to_gray_u8(pil), from_file)
        pair = gray_pair(as_array, as_array)  # what hdreg.estimate turns its inputs into
        np.testing.assert_array_equal(pair[0], from_file)
        assert (from_file[:, 0] == 255).all()  # fully transparent: white

    def test_bad_files_skipped_with_one_warning(self, image_folder):
        (image_folder / "notes.txt").write_text("not an image")
        (image_folder / "fake.jpg").write_text("not an image either")
        good = (image_folder / "a.png").read_bytes()
        (image_folder / "truncated.png").write_bytes(good[: len(good) // 2])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = load_images(folder_source(image_folder))
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(messages) == 1
        assert "skipped 2 of 5 files" in messages[0]
        assert "fake.jpg" in messages[0] and "truncated.png" in messages[0]
        assert images.names == ["a.png", "b.jpg", "sub/c.ppm"]
        # the warning points at the line that called load_images
        assert [w.filename for w in caught if issubclass(w.category, UserWarning)] == [__file__]

    def test_no_usable_image_is_an_error(self, tmp_path):
        (tmp_path / "x.jpg").write_text("junk")
        with (
            pytest.raises(ValueError, match=f"no usable image under {tmp_path}"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            load_images(folder_source(tmp_path))
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="no image files"):
            folder_source(tmp_path / "empty")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            folder_source(tmp_path / "missing")

    def test_coco_layout(self, tmp_path, image_folder):
        for split in ("train2014", "val2014"):
            (tmp_path / "coco" / split).mkdir(parents=True)
            for f in ("a.png", "b.jpg"):
                (tmp_path / "coco" / split / f).write_bytes((image_folder / f).read_bytes())
        src = resolve_source(tmp_path / "coco", coco_split="val")
        assert src.kind == "coco" and src.root.name == "val2014" and len(src.files) == 2
        assert coco_source(tmp_path / "coco", "train").root.name == "train2014"
        with pytest.raises(FileNotFoundError, match="train2017 or train2014"):
            coco_source(tmp_path, "train")

    def test_frames_grouped(self, tmp_path):
        src = folder_source(write_photo_folder(tmp_path / "photos"))
        frames = {src.group_of(i) for i, f in enumerate(src.files) if f.startswith("frames/")}
        assert len(frames) == len(CAMERA_FRAMES) // 2  # two frames per scene
        photos = {src.group_of(i) for i, f in enumerate(src.files) if f.startswith("collection/")}
        assert len(photos) == len(COLLECTION_PHOTOS)  # each photo its own group


class TestSplits:
    def test_disjoint_complete_and_grouped(self):
        groups = [f"g{i // 2}" for i in range(40)]  # 20 groups of 2
        train, val, test = split_by_image(groups, (0.7, 0.15, 0.15), seed=0)
        assert sorted(train + val + test) == list(range(40))
        for a, b in ((train, val), (train, test), (val, test)):
            assert not {groups[i] for i in a} & {groups[i] for i in b}
        assert len(val) == 6 and len(test) == 6
        assert split_by_image(groups, (0.7, 0.15, 0.15), seed=0) == (train, val, test)
        assert split_by_image(groups, (0.7, 0.15, 0.15), seed=1) != (train, val, test)

    def test_samples_split(self):
        """The README's split of scikit-image's 19 photos under the protocol's fractions and
        seed (hdreg/configs/protocol/detone.yaml): 14 train, 3 validation, 2 test, the same every run."""
        from hdreg.config import compose_config

        images = load_images(sample_source())
        protocol = compose_config("protocol/detone")
        split = split_by_image(images.groups, tuple(protocol.split_fractions), protocol.split_seed)
        assert [len(s) for s in split] == [14, 3, 2]
        assert sorted(i for s in split for i in s) == list(range(19))
        assert (
            split_by_image(images.groups, tuple(protocol.split_fractions), protocol.split_seed)
            == split
        )

    def test_too_few_groups(self):
        with pytest.raises(ValueError, match="cannot split 2 image group"):
            split_by_image(["a", "b"], (0.8, 0.1, 0.1), 0)


class TestProtocol:
    def test_validation_messages(self):
        with pytest.raises(ValueError, match="exceeds the image height 240"):
            detone_protocol(image_size=(320, 240), patch_size=128, rho=60)
        with pytest.raises(ValueError, match="rho must be"):
            detone_protocol(rho=float("nan"))
        with pytest.raises(ValueError, match="patch_size must be an integer"):
            detone_protocol(patch_size=4)
        with pytest.raises(ValueError, match="jitter gamma"):
            PhotometricJitter.from_spec({"gamma": -1})
        detone_protocol(rho=45)  # Nguyen et al.'s range fits 320x240


@pytest.fixture(scope="module")
def sample_images():
    return load_images(sample_source()).images


class TestGenerator:
    def test_label_self_consistent(self, sample_images):
        """A warped by the stored offsets reproduces B (the label's direction is right)."""
        ds = SyntheticPairs(
            sample_images, detone_protocol(), seed=3, length=16, with_full_image=True
        )
        batch = next(iter(DataLoader(ds, batch_size=16)))
        corners = batch["corners"]
        H_a_from_b = four_point_to_homography(corners, corners + batch["offsets"])
        image_a = batch["image_a"].float()
        pred_b = warp_perspective(image_a, H_a_from_b, (128, 128), top_left_b=batch["top_left"])
        diff = (pred_b - batch["patch_b"].float()).abs()
        assert diff.mean() < 1.0
        # and patch A is the same window of image A
        x0, y0 = batch["top_left"][0].tolist()
        assert torch.equal(
            batch["image_a"][0, :, y0 : y0 + 128, x0 : x0 + 128], batch["patch_a"][0]
        )

    def test_offsets_and_positions_distribution(self, sample_images):
        ds = SyntheticPairs(sample_images, detone_protocol(), seed=0, length=3000, stream="val")
        offsets = np.stack([ds.pair(i)[1]["offsets"] for i in range(3000)])
        tl = np.stack([ds.pair(i)[1]["top_left"] for i in range(3000)])
        assert offsets.min() >= -32 and offsets.max() <= 32
        assert abs(offsets.mean()) < 0.6 and abs(offsets.std() - 64 / np.sqrt(12)) < 0.5
        assert tl[:, 0].min() == 32 and tl[:, 0].max() == 160
        assert tl[:, 1].min() == 32 and tl[:, 1].max() == 80
        # identity baseline MACE for rho = 32: E||U[-32, 32]^2|| = 24.49 px
        assert abs(np.linalg.norm(offsets, axis=-1).mean() - 24.49) < 0.4

    def test_deterministic_across_workers(self, sample_images):
        ds = SyntheticPairs(sample_images, detone_protocol(), seed=7, length=24)
        one = next(iter(DataLoader(ds, batch_size=24, num_workers=0)))
        single_threaded_opencv()  # before forking workers, as the DataModule does
        two = torch.utils.data.default_collate(
            list(
                DataLoader(
                    ds,
                    batch_size=None,
                    num_workers=2,
                    sampler=list(reversed(range(24))),
                    timeout=120,
                )
            )[::-1]
        )
        for key in one:
            assert torch.equal(one[key], two[key]), key
        shifted = SyntheticPairs(sample_images, detone_protocol(), seed=7, length=4, start=20)
        assert torch.equal(shifted[0]["patch_b"], ds[20]["patch_b"])
        other = SyntheticPairs(sample_images, detone_protocol(), seed=7, length=24, stream="test")
        assert not torch.equal(other[0]["offsets"], ds[0]["offsets"])

    def test_jitter_independent_on_a_and_b(self, sample_images):
        plain = SyntheticPairs(sample_images, detone_protocol(), seed=1, length=8)
        jit = SyntheticPairs(
            sample_images,
            detone_protocol(jitter=PhotometricJitter.from_spec(True)),
            seed=1,
            length=8,
        )
        for i in range(8):
            p, j = plain[i], jit[i]
            assert torch.equal(p["offsets"], j["offsets"])  # same geometry
            assert not torch.equal(p["patch_a"], j["patch_a"])
        # the intensity maps of A and B differ: mean brightness ratio is not constant
        ratios = [
            jit[i]["patch_a"].float().mean() / jit[i]["patch_b"].float().mean() for i in range(8)
        ]
        assert np.std(ratios) > 0.02

    def test_wrong_images(self):
        with pytest.raises(ValueError, match="images are 100x80 but the protocol expects 320x240"):
            SyntheticPairs(np.zeros((2, 80, 100), np.uint8), detone_protocol(), seed=0, length=1)


class TestBenchmarkFile:
    def test_round_trip_and_patch_consistency(self, tmp_path, sample_images):
        from hdreg.data.decoding import ImageSet

        images = ImageSet(
            sample_images, [f"{i}.png" for i in range(len(sample_images))], [], tmp_path
        )
        bench = make_synthetic_benchmark(images, 32, 5, detone_protocol())
        path = write_synthetic_benchmark(bench, tmp_path / "b.npz")
        back = read_synthetic_benchmark(path)
        for key in ("patch_a", "patch_b", "offsets", "corners", "sources"):
            assert np.array_equal(getattr(back, key), getattr(bench, key))
        assert (back.rho, back.patch_size, back.seed, back.image_size) == (32.0, 128, 5, (320, 240))
        # warping patch A by the stored offsets reproduces patch B inside the overlap
        local = torch.from_numpy(back.corners - back.corners[:, :1])
        H = four_point_to_homography(local, local + torch.from_numpy(back.offsets))
        a = torch.from_numpy(back.patch_a)[:, None].float()
        pred = warp_perspective(a, H, (128, 128))
        b = torch.from_numpy(back.patch_b)[:, None].float()
        overlap = inside_mask(warp_grid(H, (128, 128)), (128, 128)) > 0
        assert overlap.float().mean() > 0.3
        assert (pred - b).abs()[overlap].mean() < 1.0

    def test_cli_identical_twice_and_identity_mace(self, tmp_path):
        from hdreg.apps.cli import main

        photos = write_photo_folder(tmp_path / "photos")
        outs = []
        for name in ("a.npz", "b.npz"):
            args = ["make-benchmark", "--source", str(photos), "--n", "1000", "--seed", "0",
                    "--out", str(tmp_path / name)]  # fmt: skip
            assert main(args) == 0
            outs.append(np.load(tmp_path / name))
        assert sorted(outs[0].files) == sorted(outs[1].files)
        for key in outs[0].files:
            assert np.array_equal(outs[0][key], outs[1][key]), key
        mace = np.linalg.norm(outs[0]["offsets"], axis=-1).mean()
        assert abs(mace - 24.5) < 0.7

    def test_cli_defaults_are_the_evaluation_benchmark(self, tmp_path):
        """`hdreg make-benchmark` without protocol options writes the very pairs that
        evaluate.py's benchmark=synthetic generates (both read hdreg/configs/benchmark/synthetic.yaml),
        and --jitter gives them the jitter of `benchmark.jitter=true`."""
        from hdreg.apps.cli import main
        from hdreg.config import compose_config
        from hdreg.evaluation.benchmarks import synthetic_pairs

        for jitter in (False, True):
            out = tmp_path / f"b{jitter}.npz"
            assert (
                main(["make-benchmark", "--n", "6", "--out", str(out)] + ["--jitter"] * jitter) == 0
            )
            cfg = compose_config("benchmark/synthetic")
            cfg.n, cfg.jitter = 6, jitter
            pairs = synthetic_pairs(**{k: v for k, v in cfg.items() if k != "_target_"})
            written = np.load(out)
            np.testing.assert_array_equal(np.stack(pairs.images_b), written["patch_b"])
        with pytest.raises(SystemExit):
            main(["make-benchmark", "--out", str(out), "--jitter", "brightness"])

    def test_reader_errors(self, tmp_path, sample_images):
        from hdreg.data.decoding import ImageSet

        with pytest.raises(FileNotFoundError, match="does not exist"):
            read_synthetic_benchmark(tmp_path / "nope.npz")
        (tmp_path / "text.npz").write_text("hello")
        with pytest.raises(ValueError, match=r"text\.npz is not an \.npz file"):
            read_synthetic_benchmark(tmp_path / "text.npz")
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        with pytest.raises(ValueError, match=r"missing key.*patch_a"):
            read_synthetic_benchmark(tmp_path / "other.npz")
        images = ImageSet(sample_images[:3], ["a", "b", "c"], [], tmp_path)
        bench = make_synthetic_benchmark(images, 4, 0, detone_protocol())
        arrays = {
            "patch_a": bench.patch_a, "patch_b": bench.patch_b, "offsets": bench.offsets.astype(np.float64),
            "corners": bench.corners, "sources": bench.sources, "rho": 32.0, "patch_size": 128,
            "seed": 0, "version": 1, "image_size": np.array([320, 240]),
        }  # fmt: skip
        np.savez(tmp_path / "f64.npz", **arrays)
        with pytest.raises(ValueError, match="'offsets' must have dtype float32, got float64"):
            read_synthetic_benchmark(tmp_path / "f64.npz")
        arrays["offsets"] = bench.offsets
        arrays["version"] = 2
        np.savez(tmp_path / "v2.npz", **arrays)
        with pytest.raises(ValueError, match="format version 2 is not supported"):
            read_synthetic_benchmark(tmp_path / "v2.npz")
        arrays["version"] = 1
        arrays["extra_key"] = np.arange(3)
        np.savez(tmp_path / "extra.npz", **arrays)
        assert "extra_key" in read_synthetic_benchmark(tmp_path / "extra.npz").extra


def test_data_package_never_composes_hydra_configs():
    """Library code takes plain values: only the applications compose the configs."""
    root = Path(hdreg_data.__file__).parent
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "compose_config" not in text and "hydra" not in text, path


def test_every_pair_stream_checks_its_source_photos_alike():
    """The DeTone and wide streams, numpy and torch, refuse the same bad inputs in one line."""
    import torch

    from hdreg.apps.protocols import detone_protocol, wide_protocol
    from hdreg.data.synthetic.detone import SyntheticPairs
    from hdreg.data.synthetic.detone_torch import TorchPairGenerator
    from hdreg.data.synthetic.wide import WidePairs
    from hdreg.data.synthetic.wide_torch import TorchWideGenerator

    bad = np.zeros((2, 240, 320), np.float32)
    with pytest.raises(ValueError, match=r"non-empty \(N, H, W\) uint8 array, got float32"):
        SyntheticPairs(bad, detone_protocol(), seed=0, length=1)
    with pytest.raises(ValueError, match=r"uint8 array, got uint8 \(0, 240, 320\)"):
        WidePairs(bad[:0].astype(np.uint8), 128, wide_protocol(), seed=0, length=1)
    with pytest.raises(ValueError, match="stream must be one of"):
        WidePairs(bad.astype(np.uint8), 128, wide_protocol(), seed=0, length=1, stream="tran")
    with pytest.raises(ValueError, match=r"uint8 tensor, got torch.float32"):
        TorchPairGenerator(torch.from_numpy(bad), detone_protocol(), seed=0)
    with pytest.raises(ValueError, match=r"uint8 tensor, got torch.float32"):
        TorchWideGenerator(torch.from_numpy(bad), 128, wide_protocol(), seed=0)
