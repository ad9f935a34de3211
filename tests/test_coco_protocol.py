"""`hdreg make-benchmark --protocol coco-test2017`: one seeded pair per image, reproducible."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from hdreg.apps.cli import main
from hdreg.config import compose_config
from hdreg.data.benchmarks import coco_test
from hdreg.data.benchmarks.coco_test import write_coco_test2017
from hdreg.data.benchmarks.synthetic import read_synthetic_benchmark, read_synthetic_benchmarks

from .fixtures import write_photo_folder


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


class TestCocoTest2017:
    def test_cli_twice_gives_identical_files(self, photos, tmp_path, capsys):
        outs = [tmp_path / "a.npz", tmp_path / "b.npz"]
        for out in outs:
            argv = ["make-benchmark", "--protocol", "coco-test2017", "--source", str(photos),
                    "--limit", "6", "--seed", "0", "--out", str(out)]  # fmt: skip
            assert main(argv) == 0
        assert "coco-test2017 protocol" in capsys.readouterr().out
        assert sha256(outs[0]) == sha256(outs[1])
        bench = read_synthetic_benchmark(outs[0])
        assert len(bench) == 6 and bench.extra["index"].tolist() == list(range(6))
        assert str(bench.extra["protocol"]) == "coco-test2017"
        # sorted images, one pair each
        assert bench.sources.tolist() == sorted(bench.sources.tolist())
        assert len(set(bench.sources.tolist())) == 6
        # another seed, other pairs
        main(["make-benchmark", "--protocol", "coco-test2017", "--source", str(photos),
              "--limit", "6", "--seed", "1", "--out", str(tmp_path / "c.npz")])  # fmt: skip
        assert sha256(tmp_path / "c.npz") != sha256(outs[0])

    def test_protocol(self, photos, tmp_path):
        (path,) = write_coco_test2017(photos, tmp_path / "t.npz")
        bench = read_synthetic_benchmark(path)
        assert len(bench) == 9  # every image of the folder
        assert bench.rho == 32 and bench.patch_size == 128 and tuple(bench.image_size) == (320, 240)
        assert np.array_equal(bench.offsets, np.round(bench.offsets))  # integer offsets
        assert np.abs(bench.offsets).max() <= 32
        x0, y0 = bench.corners[:, 0, 0], bench.corners[:, 0, 1]
        assert (
            x0.min() >= 32
            and x0.max() <= 320 - 128 - 32
            and y0.min() >= 32
            and y0.max() <= 240 - 128 - 32
        )
        # the label is right: patch B is image A sampled at H_a_from_b
        from hdreg.data.decoding import load_gray, resize_gray

        image = resize_gray(load_gray(photos / bench.sources[0]), (320, 240))
        c = bench.corners[0]
        H_a_from_b = cv2.getPerspectiveTransform(c - c[0], c + bench.offsets[0])
        expected = cv2.warpPerspective(
            image, H_a_from_b, (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        assert np.abs(expected.astype(int) - bench.patch_b[0]).max() <= 1
        x, y = int(c[0, 0]), int(c[0, 1])
        assert np.array_equal(bench.patch_a[0], image[y : y + 128, x : x + 128])

    def test_limit_is_a_prefix_and_shards_concatenate(self, photos, tmp_path):
        (full,) = write_coco_test2017(photos, tmp_path / "full.npz")
        (first,) = write_coco_test2017(photos, tmp_path / "first.npz", limit=4)
        shards = write_coco_test2017(photos, tmp_path / "s.npz", shard_size=4)
        assert [p.name for p in shards] == ["s-00000.npz", "s-00001.npz", "s-00002.npz"]
        a, b = read_synthetic_benchmark(full), read_synthetic_benchmark(first)
        assert np.array_equal(a.patch_b[:4], b.patch_b) and np.array_equal(a.offsets[:4], b.offsets)
        joined = read_synthetic_benchmarks(tmp_path / "s-*.npz")
        for key in ("patch_a", "patch_b", "offsets", "corners", "sources"):
            assert np.array_equal(getattr(joined, key), getattr(a, key)), key
        assert joined.extra["index"].tolist() == list(range(9))
        cfg = compose_config("benchmark/synthetic")  # evaluate.py's benchmark=synthetic
        cfg.path = str(tmp_path / "s-*.npz")
        pairs = instantiate(cfg)
        assert len(pairs) == 9

    def test_coco_root_and_errors(self, photos, tmp_path, capsys):
        root = tmp_path / "coco"
        (root / "test2017").mkdir(parents=True)
        for i, p in enumerate(sorted(photos.rglob("*.jpg"))[:3]):
            (root / "test2017" / f"{i:012d}.jpg").write_bytes(p.read_bytes())
        (path,) = write_coco_test2017(root, tmp_path / "coco.npz")
        assert read_synthetic_benchmark(path).sources.tolist() == [
            f"{i:012d}.jpg" for i in range(3)
        ]
        base = ["make-benchmark", "--source", str(photos), "--out", str(tmp_path / "x.npz")]
        assert main([*base, "--protocol", "coco-test2017", "--n", "5"]) == 2
        assert "drop --n (use --limit N" in capsys.readouterr().err
        assert main([*base, "--limit", "5"]) == 2
        assert "--limit goes with --protocol" in capsys.readouterr().err
        with pytest.raises(ValueError, match="--limit must be >= 1"):
            write_coco_test2017(photos, tmp_path / "y.npz", limit=0)
        with pytest.raises(FileNotFoundError, match="no benchmark file matches"):
            read_synthetic_benchmarks(tmp_path / "none-*.npz")


class TestShardRuns:
    def _make(self, photos, out, *extra: str) -> int:
        return main(["make-benchmark", "--protocol", "coco-test2017", "--source", str(photos),
                     "--limit", "6", "--out", str(out), *extra])  # fmt: skip

    def test_a_rerun_with_another_shard_size_replaces_the_earlier_shards(self, photos, tmp_path):
        out = tmp_path / "s.npz"
        assert self._make(photos, out, "--shard-size", "2") == 0  # 3 shards
        assert self._make(photos, out, "--shard-size", "4") == 0  # 2 shards
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s-00000.npz", "s-00001.npz"]
        cfg = compose_config("benchmark/synthetic")  # evaluate.py's benchmark.path=<out>-*.npz
        cfg.path = str(tmp_path / "s-*.npz")
        assert len(instantiate(cfg)) == 6
        joined = read_synthetic_benchmarks(tmp_path / "s-*.npz")
        assert joined.extra["index"].tolist() == list(range(6))
        assert joined.extra["shards"] == 2

    def test_a_glob_over_two_runs_or_part_of_one_is_refused(self, photos, tmp_path):
        x, y = tmp_path / "x", tmp_path / "y"
        assert self._make(photos, x / "b.npz", "--shard-size", "2") == 0
        assert self._make(photos, y / "b.npz", "--shard-size", "2", "--seed", "1") == 0
        (x / "b-00001.npz").write_bytes((y / "b-00001.npz").read_bytes())
        with pytest.raises(ValueError, match=r"b-\*.npz matches shards of 2 different runs"):
            read_synthetic_benchmarks(x / "b-*.npz")
        (y / "b-00002.npz").unlink()
        with pytest.raises(
            ValueError, match=r"matches 2 files, not the 3 shards .*missing .*\[2\]"
        ):
            read_synthetic_benchmarks(y / "b-*.npz")
        (y / "b-00002.npz").write_bytes((y / "b-00001.npz").read_bytes())  # a copy, not shard 2
        with pytest.raises(
            ValueError, match=r"not the 3 shards .*\[2\], shard\(s\) \[1\] more than once"
        ):
            read_synthetic_benchmarks(y / "b-*.npz")

    def test_a_failed_shard_leaves_the_earlier_run_as_it_was(self, photos, tmp_path):
        src = tmp_path / "src"
        src.mkdir()
        good = sorted(photos.rglob("*.jpg"))[:2]
        for name, p in zip(("a.jpg", "b.jpg"), good, strict=True):
            (src / name).write_bytes(p.read_bytes())
        out = tmp_path / "out" / "t.npz"
        write_coco_test2017(src, out, shard_size=1)
        before = {p.name: sha256(p) for p in out.parent.iterdir()}
        assert sorted(before) == ["t-00000.npz", "t-00001.npz"]
        for name in ("c.jpg", "d.jpg"):
            (src / name).write_text("not an image")
        with pytest.raises(
            ValueError, match=r"no readable image among pairs 2\.\.3 .*c\.jpg.*d\.jpg"
        ):
            write_coco_test2017(src, out, shard_size=2)
        assert {p.name: sha256(p) for p in out.parent.iterdir()} == before

    def test_an_interrupted_commit_leaves_no_staged_shard(self, photos, tmp_path, monkeypatch):
        """Stopped once every shard is written but before they are put in place: the earlier
        run stays as it was and no hidden staged shard is left behind."""
        out = tmp_path / "t.npz"
        write_coco_test2017(photos, out, limit=4, shard_size=2)
        before = {p.name: sha256(p) for p in tmp_path.iterdir()}

        def interrupted(out):
            raise KeyboardInterrupt

        monkeypatch.setattr(coco_test, "_earlier_shards", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_coco_test2017(photos, out, limit=4, shard_size=1, seed=1)
        assert {p.name: sha256(p) for p in tmp_path.iterdir()} == before

    def test_an_unreadable_only_image_is_named(self, tmp_path, capsys):
        src = tmp_path / "src"
        src.mkdir()
        (src / "broken.jpg").write_text("not an image")
        argv = ["make-benchmark", "--protocol", "coco-test2017", "--source", str(src),
                "--out", str(tmp_path / "b.npz")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no readable image among pairs 0..0" in err
        assert "broken.jpg" in err
        assert not (tmp_path / "b.npz").exists()
