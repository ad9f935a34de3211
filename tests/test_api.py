"""The Python API: hdreg.estimate on every kind of image a user holds, hdreg.load."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import hdreg
from hdreg.api import to_gray_u8


def _pair():
    from skimage import data

    a = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # as cv2.imread gives it
    b = np.ascontiguousarray(a[12:, 30:])  # B(p) = A(p + (30, 12))
    b_from_a = np.array([[1.0, 0, -30], [0, 1, -12], [0, 0, 1]])
    return a, b, b_from_a


class TestImages:
    def test_bgr_16bit_float_and_pil_become_the_same_gray(self):
        from PIL import Image

        a = _pair()[0]
        gray = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
        assert np.array_equal(to_gray_u8(a), gray)
        assert np.abs(to_gray_u8(a.astype(np.uint16) * 257).astype(int) - gray).max() <= 1
        assert np.abs(to_gray_u8(a / 255.0).astype(int) - gray).max() <= 1
        pil = Image.fromarray(cv2.cvtColor(a, cv2.COLOR_BGR2RGB))
        assert np.abs(to_gray_u8(pil).astype(int) - gray).max() <= 1

    @pytest.mark.parametrize(
        ("image", "match"),
        [("a.png", "numpy array or a PIL image"), (np.zeros((4, 4), np.uint8), "at least 8"),
         (np.zeros((9, 9, 2), np.uint8), "must be"), (np.zeros((9, 9), np.int64), "dtype")],
    )  # fmt: skip
    def test_bad_images_are_named(self, image, match):
        with pytest.raises(ValueError, match=match):
            hdreg.estimate(image, np.zeros((64, 64), np.uint8), method="identity")


class TestEstimate:
    def test_sift_on_opencv_images(self):
        a, b, b_from_a = _pair()
        r = hdreg.estimate(a, b, method="sift")
        assert not r.failed and r.reason == ""
        np.testing.assert_allclose(r.b_from_a, b_from_a, atol=0.05)
        np.testing.assert_allclose(r.a_from_b @ r.b_from_a, np.eye(3), atol=1e-9)
        assert r.a_from_b[2, 2] == 1.0
        assert r.details["inliers"] > 50

    @pytest.mark.parametrize("method", ["iterative+ecc", "ecc"])
    def test_learned_and_refined_methods(self, method):
        a, b, b_from_a = _pair()
        r = hdreg.estimate(a, b, method=method)
        assert not r.failed, r.reason
        np.testing.assert_allclose(r.b_from_a[:2, 2], b_from_a[:2, 2], atol=0.5)

    def test_a_checkpoint_path(self, tmp_path):
        from hdreg.weights import export_weights

        path = export_weights("iterative", tmp_path / "mine.pt")
        a, b, _ = _pair()
        assert not hdreg.estimate(a, b, method=str(path)).failed

    def test_blank_images_fail_with_a_reason_for_every_kind_of_method(self):
        black = np.zeros((240, 320), np.uint8)
        for method in ("sift", "iterative", "ecc"):
            r = hdreg.estimate(black, black, method=method)
            assert r.failed and r.reason, method
            np.testing.assert_array_equal(r.b_from_a, np.eye(3))

    def test_unknown_method_names_the_registry(self):
        with pytest.raises((ValueError, FileNotFoundError), match="nosuch"):
            hdreg.estimate(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8), "nosuch")


def test_load_returns_the_plain_network():
    net = hdreg.load("iterative")
    assert isinstance(net, torch.nn.Module) and not net.training
    out = net(torch.rand(3, 1, 128, 128), torch.rand(3, 1, 128, 128))
    assert out["offsets"].shape == (3, 4, 2)


def test_import_and_load_need_neither_lightning_nor_hydra():
    code = (
        "import sys, hdreg, hdreg.apps.align, hdreg.errors; hdreg.load('iterative'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'hydra', 'omegaconf')); print(bad); sys.exit(bool(bad))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_align_with_a_keypoint_method_never_imports_torch(tmp_path):
    """``hdreg align --method sift`` is OpenCV only: importing PyTorch would triple its time."""
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 255, (240, 320), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), np.roll(a, 5, axis=1))
    code = (
        "import sys; from hdreg.apps.cli import main; "
        f"code = main(['align', {str(tmp_path / 'a.png')!r}, {str(tmp_path / 'b.png')!r}, "
        f"'--method', 'sift', '--out', {str(tmp_path / 'out')!r}]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3]); "
        "sys.exit(code or 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "out" / "homography.json").exists()
