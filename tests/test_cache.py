"""The memory-mapped image cache: same images as load_images, hits, invalidation, workers."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import hdreg.training.image_cache as cache_module
from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.seeding import single_threaded_opencv
from hdreg.data.sources import folder_source
from hdreg.data.synthetic.detone import SyntheticPairs
from hdreg.files import STAGING_MARK, staging_path
from hdreg.training.image_cache import cache_key, load_cached_images
from hdreg.training.mapped_images import MappedImages

from .conftest import textured_image

SIZE = (160, 120)


def _no_decoding(monkeypatch) -> None:
    """Make any decoding fail loudly: a cache hit must not decode."""

    def fail(path, *args):
        raise AssertionError(f"decoded {path} on a cache hit")

    monkeypatch.setattr(cache_module, "decode_resized", fail)


def _user_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _assert_same(cached, mem) -> None:
    assert np.array_equal(np.asarray(cached.images), mem.images)
    assert cached.names == mem.names and cached.groups == mem.groups
    assert cached.root == mem.root


def _data_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.suffix == ".npy")


def _staging_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if STAGING_MARK in p.name)


class TestCache:
    def test_same_as_load_images_then_hit(self, image_folder, tmp_path, monkeypatch):
        src = folder_source(image_folder)
        first = load_cached_images(src, SIZE, tmp_path / "cache", workers=1)
        mem = load_images(src, SIZE)
        _assert_same(first, mem)
        assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
        assert first.images.shape == (3, 120, 160) and first.images.dtype == np.uint8

        _no_decoding(monkeypatch)
        second = load_cached_images(src, SIZE, tmp_path / "cache")
        _assert_same(second, mem)
        assert len(_data_files(tmp_path / "cache")) == 1

    def test_parallel_decoding_keeps_the_order(self, tmp_path):
        root = tmp_path / "many"
        root.mkdir()
        for i in range(10):  # different sizes, so that the decoding times differ
            cv2.imwrite(str(root / f"img{i:02d}.png"), textured_image(200 + 20 * i, 300, seed=i))
        src = folder_source(root)
        cached = load_cached_images(src, SIZE, tmp_path / "cache", workers=2)
        _assert_same(cached, load_images(src, SIZE))

    def test_changes_rebuild_and_replace_the_cache(self, image_folder, tmp_path):
        cache_dir = tmp_path / "cache"
        src = folder_source(image_folder)
        key = cache_key(src, SIZE)
        load_cached_images(src, SIZE, cache_dir, workers=1)
        old_files = _data_files(cache_dir)

        # rewritten content (same name)
        cv2.imwrite(str(image_folder / "a.png"), textured_image(seed=9))
        st = os.stat(image_folder / "a.png")
        os.utime(image_folder / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert cache_key(src, SIZE) != key
        changed = load_cached_images(src, SIZE, cache_dir, workers=1)
        _assert_same(changed, load_images(src, SIZE))
        assert len(_data_files(cache_dir)) == 1 and _data_files(cache_dir) != old_files

        # only touched: the key changes too (mtime), the pixels are the same
        key = cache_key(src, SIZE)
        os.utime(image_folder / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
        assert cache_key(src, SIZE) != key

        # an added file
        shutil.copy(image_folder / "a.png", image_folder / "d.png")
        src = folder_source(image_folder)
        added = load_cached_images(src, SIZE, cache_dir, workers=1)
        assert added.names == ["a.png", "b.jpg", "d.png", "sub/c.ppm"]
        _assert_same(added, load_images(src, SIZE))
        assert len(_data_files(cache_dir)) == 1

        # another image size is another cache; the first stays valid
        assert cache_key(src, (320, 240)) != cache_key(src, SIZE)
        big = load_cached_images(src, (320, 240), cache_dir, workers=1)
        assert big.images.shape == (4, 240, 320)
        _assert_same(big, load_images(src, (320, 240)))
        assert len(_data_files(cache_dir)) == 2

    def test_bad_files_warned_once_per_call(self, image_folder, tmp_path, monkeypatch):
        (image_folder / "fake.jpg").write_text("not an image")
        good = (image_folder / "a.png").read_bytes()
        (image_folder / "truncated.png").write_bytes(good[: len(good) // 2])
        src = folder_source(image_folder)
        cached, messages = _user_warnings(lambda: load_cached_images(src, SIZE, tmp_path, workers=2))  # fmt: skip
        assert len(messages) == 1
        assert "skipped 2 of 5 files" in messages[0]
        assert "fake.jpg" in messages[0] and "truncated.png" in messages[0]
        mem, mem_messages = _user_warnings(lambda: load_images(src, SIZE))
        assert messages == mem_messages
        _assert_same(cached, mem)
        assert _staging_files(tmp_path) == []

        _no_decoding(monkeypatch)
        again, messages_again = _user_warnings(lambda: load_cached_images(src, SIZE, tmp_path))
        assert messages_again == messages
        _assert_same(again, mem)

    def test_no_usable_image(self, tmp_path):
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "x.jpg").write_text("junk")
        src = folder_source(tmp_path / "imgs")
        with pytest.raises(ValueError, match="no usable image under"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_cached_images(src, SIZE, tmp_path / "cache", workers=1)
        assert _data_files(tmp_path / "cache") == []
        assert _staging_files(tmp_path / "cache") == []

    def test_interrupted_build_leaves_no_cache(self, image_folder, tmp_path, monkeypatch):
        src = folder_source(image_folder)
        cache_dir = tmp_path / "cache"
        real = cache_module._decode
        calls = []

        def crash_on_second(path, size, min_side=0):
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(path, size, min_side)

        monkeypatch.setattr(cache_module, "_decode", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            load_cached_images(src, SIZE, cache_dir, workers=1)
        assert _data_files(cache_dir) == [] and not list(cache_dir.glob("*.json"))
        monkeypatch.setattr(cache_module, "_decode", real)
        # a dead builder's staging file and a corrupt index are cleaned up / ignored
        base = cache_module._base_name(src, SIZE)
        staging_path(cache_dir / f"{base}-0123456789abcdef.npy").write_bytes(b"x")
        (cache_dir / f"{base}.json").write_text("{not json")
        _assert_same(load_cached_images(src, SIZE, cache_dir, workers=1), load_images(src, SIZE))
        assert len(_data_files(cache_dir)) == 1 and _staging_files(cache_dir) == []

    def test_staging_files_of_killed_builders_are_removed(self, image_folder, tmp_path):
        """Leftovers of builds killed while writing the data (also while dropping the rows of
        unreadable files) or the index go at the next build; another size's stay."""
        src = folder_source(image_folder)
        base = cache_module._base_name(src, SIZE)
        data = staging_path(tmp_path / f"{base}-0123456789abcdef.npy")
        leftovers = [data, staging_path(data), staging_path(tmp_path / f"{base}.json")]
        w, h = SIZE
        other = staging_path(tmp_path / f"{base[: -len(f'{w}x{h}')]}{w}x{h}0-0123456789abcdef.npy")
        for path in [*leftovers, other]:
            path.write_bytes(b"x")
        _assert_same(load_cached_images(src, SIZE, tmp_path, workers=1), load_images(src, SIZE))
        assert _staging_files(tmp_path) == [other.name]


class TestMappedImages:
    @pytest.fixture
    def mapped(self, image_folder, tmp_path):
        src = folder_source(image_folder)
        return load_cached_images(src, SIZE, tmp_path, workers=1, lazy=True), load_images(src, SIZE)

    def test_array_like(self, mapped):
        cached, mem = mapped
        images = cached.images
        assert isinstance(images, MappedImages)
        assert images.shape == (3, 120, 160) and images.dtype == np.uint8 and images.ndim == 3
        assert len(images) == 3 and cached.image_size == SIZE
        row = images[-1]
        assert isinstance(row, np.ndarray) and row.flags.writeable  # a copy, not the map
        assert np.array_equal(row, mem.images[2])
        sub = cached.subset([2, 0])
        assert isinstance(sub.images, MappedImages)
        assert np.array_equal(np.asarray(sub.images), mem.images[[2, 0]])
        assert np.array_equal(sub.images[1], mem.images[0])
        assert np.array_equal(np.asarray(images[1:]), mem.images[1:])
        assert np.array_equal(np.asarray(images[np.array([True, False, True])]), mem.images[[0, 2]])  # fmt: skip
        with pytest.raises(IndexError):
            images[3]

    def test_pickles_by_path(self, mapped):
        cached, mem = mapped
        protocol = detone_protocol(image_size=SIZE, patch_size=64, rho=16)
        lazy = SyntheticPairs(cached.subset([2, 1]).images, protocol, seed=0, length=4)
        in_memory = SyntheticPairs(mem.images[[2, 1]], protocol, seed=0, length=4)
        blob = pickle.dumps(lazy)
        assert len(blob) < 10_000  # the path and two indices, not the pixels
        back = pickle.loads(blob)
        assert back.images._array is None  # mapped again only when used
        for i in range(4):
            for key, value in back[i].items():
                assert torch.equal(value, in_memory[i][key]), key
        # why the wrapper exists: a plain memmap pickles as a full copy of its data
        plain = np.load(cached.images.path, mmap_mode="r")
        assert len(pickle.dumps(plain)) > plain.nbytes


class TestWorkers:
    def _items(self, images, num_workers, *, with_full_image=False, context=None):
        protocol = detone_protocol(image_size=SIZE, patch_size=64, rho=16)
        ds = SyntheticPairs(
            images, protocol, seed=3, length=16, flips=True, with_full_image=with_full_image
        )
        # OpenCV's thread pool does not survive a fork: make the parent single-threaded before the
        # workers fork, as the DataModule does; the timeout turns a hang into a failure.
        single_threaded_opencv()
        loader = DataLoader(
            ds, batch_size=4, num_workers=num_workers, multiprocessing_context=context,
            timeout=120 if num_workers else 0,
        )  # fmt: skip
        return list(loader)

    @pytest.mark.parametrize("lazy", [False, True])
    def test_dataloader_workers_match_in_memory(self, image_folder, tmp_path, lazy):
        src = folder_source(image_folder)
        cached = load_cached_images(src, SIZE, tmp_path, workers=1, lazy=lazy)
        mem = load_images(src, SIZE)
        # The full image is a read-only row of a plain memmap, which torch.from_numpy warns about.
        expected = self._items(mem.images, 0, with_full_image=lazy)
        got, messages = _user_warnings(lambda: self._items(cached.images, 2, with_full_image=lazy))
        assert not messages, messages
        assert len(got) == len(expected) == 4
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key

    @pytest.mark.slow
    def test_spawned_workers_reopen_the_map(self, image_folder, tmp_path):
        src = folder_source(image_folder)
        cached = load_cached_images(src, SIZE, tmp_path, workers=1, lazy=True)
        expected = self._items(load_images(src, SIZE).images, 0)
        got = self._items(cached.images, 1, context="spawn")
        for a, b in zip(got, expected, strict=True):
            for key in a:
                assert torch.equal(a[key], b[key]), key
