"""`hdreg data`: end to end against a small archive served by a local HTTP server (127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from hdreg.apps.cli import main
from hdreg.data.real.catalogue import DATASETS, Archive, Dataset, format_dataset_list
from hdreg.data.real.download import DownloadError, download_dataset
from hdreg.data.real.pairs import find_real_pairs


@dataclass
class Served:
    """What the test server serves and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate_next: int = 0  # cut the next N responses after half their body
    ignore_range: bool = False
    range_from_zero: bool = False  # answer a Range request with 206 and the whole file
    send_length: bool = True  # False: no Content-Length, the body ends when the server closes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            rng = self.headers.get("Range")
            served.requests.append((name, rng))
            if name not in served.files:
                self.send_error(404)
                return
            body = served.files[name]
            start = 0
            if rng and not served.ignore_range:
                start = 0 if served.range_from_zero else int(rng[6:].split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            if served.send_length:
                self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if served.truncate_next:
                served.truncate_next -= 1
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server():
    """A local HTTP server with Range support, started and stopped by the test."""
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    # polled every 10 ms (not 0.5 s): shutdown() waits for the next poll, at every teardown
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _hpatches_tarball() -> bytes:
    """A tiny hpatches-sequences-release.tar.gz: one sequence, three images, two H files."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"hpatches-sequences-release/v_tiny/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for k in (1, 2, 3):
            pixels = rng.integers(0, 256, (24, 32), dtype=np.uint8)
            add(f"{k}.ppm", b"P5\n32 24\n255\n" + pixels.tobytes())
        add("H_1_2", b"1 0 2\n0 1 3\n0 0 1\n")
        add("H_1_3", b"1 0 -1\n0 1 1\n0 0 1\n")
    return buf.getvalue() + b"\0" * 20000  # padding: a body long enough to cut in half


def _incompressible_tarball() -> bytes:
    """An hpatches-sequences-release.tar.gz of noise images and no padding: cutting it anywhere
    cuts the gzip stream (and usually a member)."""
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("1.ppm", "2.ppm", "3.ppm", "H_1_2", "H_1_3"):
            if name.endswith(".ppm"):
                data = b"P5\n128 96\n255\n" + rng.integers(0, 256, (96, 128), np.uint8).tobytes()
            else:
                data = b"1 0 2\n0 1 3\n0 0 1\n"
            info = tarfile.TarInfo(f"hpatches-sequences-release/v_graf/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _leftovers(root) -> list[str]:
    """Everything under ``root`` except the downloads folder itself."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".downloads")


def _dataset(base: str, data: bytes, *, sha256: str | None, size: int | None) -> Dataset:
    archive = Archive(
        f"{base}/hpatches-sequences-release.tar.gz", size, sha256, "", "hpatches-sequences-release"
    )
    return Dataset("tiny", "a tiny HPatches", (archive,), "hpatches-sequences-release", "test")


class TestDownload:
    def test_verified_extracted_then_nothing_to_do(self, server, tmp_path):
        served, base = server
        data = _hpatches_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        ds = _dataset(base, data, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        said: list[str] = []
        target = download_dataset(ds, tmp_path / "data", progress=False, say=said.append)
        assert target == tmp_path / "data" / "hpatches-sequences-release"
        assert any("verified (SHA-256" in s for s in said), said
        pairs = find_real_pairs(target)
        assert [p.pair_id for p in pairs] == ["v_tiny/1-2", "v_tiny/1-3"]
        np.testing.assert_allclose(pairs[0].H_b_from_a[:, 2], [2, 3, 1])
        assert not (tmp_path / "data" / ".downloads" / "hpatches-sequences-release.tar.gz").exists()
        # a second run downloads and extracts nothing
        n_requests = len(served.requests)
        said.clear()
        download_dataset(ds, tmp_path / "data", progress=False, say=said.append)
        assert len(served.requests) == n_requests
        assert said == [f"hpatches-sequences-release.tar.gz: already in {target}, nothing to do"]

    def test_checksum_mismatch_deletes_and_says_so(self, server, tmp_path):
        served, base = server
        data = _hpatches_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        ds = _dataset(base, data, sha256="0" * 64, size=len(data))
        with pytest.raises(DownloadError, match=r"SHA-256 [0-9a-f]{64}, expected 0000") as info:
            download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert "\n" not in str(info.value) and base in str(info.value)
        assert not list((tmp_path / ".downloads").glob("hpatches*"))  # deleted, no stamp
        assert not (tmp_path / "hpatches-sequences-release").exists()
        wrong_size = _dataset(base, data, sha256=None, size=len(data) + 1)
        with pytest.raises(DownloadError, match=f"size {len(data)} bytes, expected"):
            download_dataset(wrong_size, tmp_path, progress=False, say=lambda s: None)

    def test_truncated_transfer_resumes_with_range(self, server, tmp_path):
        served, base = server
        data = _hpatches_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        served.truncate_next = 1
        ds = _dataset(base, data, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        with pytest.raises(DownloadError, match=r"stopped after .* bytes; run the same command"):
            download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        part = tmp_path / ".downloads" / "hpatches-sequences-release.tar.gz.part"
        assert 0 < part.stat().st_size < len(data)
        have = part.stat().st_size
        download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert served.requests[-1] == ("hpatches-sequences-release.tar.gz", f"bytes={have}-")
        assert (tmp_path / "hpatches-sequences-release" / "v_tiny" / "H_1_3").is_file()
        assert not part.exists()

    def test_an_interrupted_final_rename_keeps_the_whole_download(
        self, server, tmp_path, monkeypatch
    ):
        """Ctrl-C while the finished archive is put in place loses no byte: the next run
        completes it with a Range request past its end, downloading nothing again."""
        served, base = server
        data = _hpatches_tarball()
        name = "hpatches-sequences-release.tar.gz"
        served.files[name] = data
        ds = _dataset(base, data, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        replace = os.replace

        def interrupted(src, dst):
            if str(dst).endswith(name):
                raise KeyboardInterrupt
            replace(src, dst)

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        monkeypatch.setattr(os, "replace", replace)
        part = tmp_path / ".downloads" / f"{name}.part"
        assert [p.name for p in part.parent.iterdir()] == [part.name]  # no staging file left
        assert part.read_bytes() == data
        download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert served.requests[-1] == (name, f"bytes={len(data)}-")  # answered 416
        assert (tmp_path / "hpatches-sequences-release" / "v_tiny" / "H_1_3").is_file()
        assert list(part.parent.iterdir()) == [part.parent / f"{name}.done"]

    def test_server_without_range_starts_over(self, server, tmp_path):
        served, base = server
        data = _hpatches_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        served.ignore_range = True
        ds = _dataset(base, data, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        part = tmp_path / ".downloads" / "hpatches-sequences-release.tar.gz.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:1000])
        download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert (tmp_path / "hpatches-sequences-release" / "v_tiny" / "1.ppm").is_file()

    def test_unverified_file_says_so_in_one_line(self, server, tmp_path):
        served, base = server
        data = _hpatches_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        said: list[str] = []
        download_dataset(
            _dataset(base, data, sha256=None, size=None), tmp_path, progress=False,
            say=said.append,
        )  # fmt: skip
        notes = [s for s in said if "not verified" in s]
        assert notes == [
            f"hpatches-sequences-release.tar.gz: no published SHA-256, not verified "
            f"(size unpublished, {len(data)} bytes)"
        ]

    def test_unsafe_tar_member_refused(self, server, tmp_path):
        served, base = server
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("../escape.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        served.files["hpatches-sequences-release.tar.gz"] = buf.getvalue()
        with pytest.raises(DownloadError, match="unsafe archive member"):
            download_dataset(
                _dataset(base, b"", sha256=None, size=None), tmp_path / "d", progress=False,
                say=lambda s: None,
            )  # fmt: skip
        assert not (tmp_path / "escape.txt").exists()

    def test_zip_extraction(self, server, tmp_path):
        served, base = server
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("val2017/000000000139.jpg", b"not really a jpeg")
        served.files["val2017.zip"] = buf.getvalue()
        ds = Dataset(
            "coco", "tiny", (Archive(f"{base}/val2017.zip", None, None, "coco", "coco/val2017"),),
            "coco/val2017", "test",
        )  # fmt: skip
        target = download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert (target / "000000000139.jpg").read_bytes() == b"not really a jpeg"


class TestBrokenArchives:
    def test_truncated_archive_without_length_extracts_nothing_then_retries(
        self, server, tmp_path, capsys
    ):
        served, base = server
        data = _incompressible_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        served.send_length, served.truncate_next = False, 1  # half the file, then close
        staging = tmp_path / ".hpatches-sequences-release.extracting"
        staging.mkdir()  # left by an extraction that was killed
        argv = ["data", "download", "hpatches", "--root", str(tmp_path), "--mirror", base,
                "--no-progress"]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert "hpatches-sequences-release.tar.gz" in err and "truncated or corrupt" in err
        assert "run the command again" in err
        assert _leftovers(tmp_path) == []  # no partial target, no staging folder, no marker
        assert main(argv) == 0  # the next run downloads afresh
        assert "extracted into" in capsys.readouterr().out
        seq = tmp_path / "hpatches-sequences-release" / "v_graf"
        assert sorted(p.name for p in seq.iterdir()) == [
            "1.ppm",
            "2.ppm",
            "3.ppm",
            "H_1_2",
            "H_1_3",
        ]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.extractfile("hpatches-sequences-release/v_graf/2.ppm")
            assert (seq / "2.ppm").read_bytes() == member.read()
        assert not staging.exists()

    def test_206_from_byte_zero_restarts_the_file(self, server, tmp_path):
        served, base = server
        data = _incompressible_tarball()
        served.files["hpatches-sequences-release.tar.gz"] = data
        served.range_from_zero = True  # 206, but from byte 0 whatever the Range asked
        part = tmp_path / ".downloads" / "hpatches-sequences-release.tar.gz.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:1000])
        said: list[str] = []
        download_dataset(
            _dataset(base, data, sha256=None, size=None), tmp_path, progress=False,
            keep_archives=True, say=said.append,
        )  # fmt: skip
        assert served.requests[-1][1] == "bytes=1000-"
        archive = tmp_path / ".downloads" / "hpatches-sequences-release.tar.gz"
        assert archive.read_bytes() == data  # restarted, not appended
        assert (tmp_path / "hpatches-sequences-release" / "v_graf" / "H_1_3").is_file()

    def test_zip_with_a_bad_crc_extracts_nothing(self, server, tmp_path):
        served, base = server
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr("val2017/000000000139.jpg", b"first image bytes")
            z.writestr("val2017/000000000285.jpg", b"second image bytes")
        corrupt = buf.getvalue().replace(b"second image", b"SECOND image")
        served.files["val2017.zip"] = corrupt
        ds = Dataset(
            "coco", "tiny", (Archive(f"{base}/val2017.zip", None, None, "coco", "coco/val2017"),),
            "coco/val2017", "test",
        )  # fmt: skip
        with pytest.raises(DownloadError, match=r"val2017.zip .*truncated or corrupt") as info:
            download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert "\n" not in str(info.value) and "000000000285.jpg" in str(info.value)
        assert _leftovers(tmp_path) == ["coco"]  # the empty parent folder, nothing inside
        assert not list((tmp_path / "coco").iterdir())
        served.files["val2017.zip"] = buf.getvalue()
        target = download_dataset(ds, tmp_path, progress=False, say=lambda s: None)
        assert (target / "000000000285.jpg").read_bytes() == b"second image bytes"

    def test_root_under_a_regular_file(self, tmp_path, capsys):
        (tmp_path / "file").write_text("x")
        root = tmp_path / "file" / "data"
        argv = [
            "data",
            "download",
            "hpatches",
            "--root",
            str(root),
            "--mirror",
            "http://127.0.0.1:9",
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert f"data root {root} is not a writable folder" in err

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder")
    def test_read_only_root(self, tmp_path, capsys):
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
        try:
            argv = [
                "data",
                "download",
                "hpatches",
                "--root",
                str(root),
                "--mirror",
                "http://127.0.0.1:9",
            ]
            assert main(argv) == 2
        finally:
            root.chmod(0o755)
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"data root {root} is not a writable folder" in err


class TestCli:
    def test_list(self, capsys):
        assert main(["data", "list"]) == 0
        out = capsys.readouterr().out
        for name in DATASETS:
            assert name in out
        assert out.startswith(format_dataset_list())
        assert "licence" in out

    def test_registry_urls_and_checksums(self):
        assert set(DATASETS) == {
            "coco2014-train", "coco2014-val", "coco2014-test",
            "coco2017-train", "coco2017-val", "coco2017-test", "hpatches", "oxford-affine",
        }  # fmt: skip
        assert DATASETS["hpatches"].archives[0].url.startswith("http://icvl.ee.ic.ac.uk/")
        oxford = DATASETS["oxford-affine"].archives
        assert [a.filename for a in oxford] == [
            f"{s}.tar.gz"
            for s in ("bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall")
        ]
        assert all("robots.ox.ac.uk/~vgg/research/affine/" in a.url for a in oxford)
        for name in DATASETS:
            for a in DATASETS[name].archives:
                assert a.sha256 is None or len(a.sha256) == 64
                if name.startswith("coco"):
                    assert a.url.startswith("http://images.cocodataset.org/zips/")
                    assert a.size and a.sha256

    def test_no_network_is_one_line_naming_the_url(self, tmp_path, capsys):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mirror = f"http://127.0.0.1:{port}"
        code = main(["data", "download", "hpatches", "--root", str(tmp_path), "--mirror", mirror])
        err = capsys.readouterr().err.strip()
        assert code == 1
        assert err.count("\n") == 0, err
        assert f"{mirror}/hpatches-sequences-release.tar.gz" in err
        assert str(tmp_path / ".downloads" / "hpatches-sequences-release.tar.gz") in err

    def test_download_from_mirror_end_to_end(self, server, tmp_path, capsys):
        served, base = server
        served.files["hpatches-sequences-release.tar.gz"] = _hpatches_tarball()
        argv = ["data", "download", "hpatches", "--root", str(tmp_path), "--mirror", base,
                "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "not verified" in out and "extracted into" in out
        assert len(find_real_pairs(tmp_path / "hpatches-sequences-release")) == 2
        n = len(served.requests)
        assert main(argv) == 0
        assert "nothing to do" in capsys.readouterr().out and len(served.requests) == n

    def test_checksum_mismatch_against_published_hash(self, server, tmp_path, capsys):
        served, base = server
        served.files["graf.tar.gz"] = _hpatches_tarball()  # not the real graf archive
        served.files["bark.tar.gz"] = _hpatches_tarball()
        served.files["bikes.tar.gz"] = _hpatches_tarball()
        served.files["boat.tar.gz"] = _hpatches_tarball()
        code = main(["data", "download", "oxford-affine", "--root", str(tmp_path), "--mirror",
                     base, "--no-progress"])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 1
        assert "boat.tar.gz: SHA-256" in captured.err and "expected 6e5721f3" in captured.err
        assert "bark.tar.gz: no published SHA-256, not verified" in captured.out
