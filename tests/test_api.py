"""The Python API: hdreg.estimate on every kind of image a user holds, hdreg.load."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import hdreg


def _pair():
    from skimage import data

    a = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # as cv2.imread gives it
    b = np.ascontiguousarray(a[12:, 30:])  # B(p) = A(p + (30, 12))
    b_from_a = np.array([[1.0, 0, -30], [0, 1, -12], [0, 0, 1]])
    return a, b, b_from_a


class TestEstimate:
    def test_sift_on_opencv_images(self):
        a, b, b_from_a = _pair()
        r = hdreg.estimate(a, b, method="sift")
        assert not r.failed and r.reason == ""
        np.testing.assert_allclose(r.b_from_a, b_from_a, atol=0.05)
        product = r.a_from_b @ r.b_from_a  # inverses up to scale: both end in 1
        np.testing.assert_allclose(product / product[2, 2], np.eye(3), atol=1e-9)
        assert r.a_from_b[2, 2] == 1.0 and r.b_from_a[2, 2] == 1.0
        assert r.details["inliers"] > 50

    @pytest.mark.parametrize("method", ["iterative+ecc", "ecc"])
    def test_learned_and_refined_methods(self, method):
        a, b, b_from_a = _pair()
        r = hdreg.estimate(a, b, method=method)
        assert not r.failed, r.reason
        np.testing.assert_allclose(r.b_from_a[:2, 2], b_from_a[:2, 2], atol=0.5)

    def test_a_checkpoint_path(self, tmp_path):
        from hdreg.models.checkpoint import export_weights

        path = export_weights("iterative", tmp_path / "mine.pt")
        a, b, _ = _pair()
        assert not hdreg.estimate(a, b, method=str(path)).failed

    def test_blank_images_fail_with_a_reason_for_every_kind_of_method(self):
        black = np.zeros((240, 320), np.uint8)
        for method in ("sift", "iterative", "ecc"):
            r = hdreg.estimate(black, black, method=method)
            assert r.failed and r.reason, method
            np.testing.assert_array_equal(r.b_from_a, np.eye(3))


def _constant_checkpoint(path, shift: float):
    """A tiny network that answers the same offsets for every pair (0: the identity)."""
    from hdreg.models.checkpoint import save_weights

    from .conftest import tiny_module

    module = tiny_module()
    with torch.no_grad():
        module.net.regressor[-1].weight.zero_()
        module.net.regressor[-1].bias.fill_(shift)
    return save_weights(module, path)


def _smooth():
    from .conftest import textured_image

    return cv2.GaussianBlur(textured_image(240, 320, seed=5), (0, 0), 3)


class TestMethodsAndDevices:
    @pytest.mark.parametrize("method", ["siftt", None, "", "siftt+ecc", 3])
    def test_unknown_method_lists_methods_and_shipped_models(self, method):
        """'siftt' and None used to say "checkpoint ... does not exist" and list nothing."""
        image = np.zeros((64, 64), np.uint8)
        with pytest.raises(ValueError) as info:
            hdreg.estimate(image, image, method)
        message = str(info.value)
        assert message.startswith(f"unknown method {method!r}: valid methods are ")
        assert "sift, sift_magsac" in message and "shipped models: " in message
        assert "iterative" in message and "wide" in message
        assert "or the path of an existing checkpoint file" in message

    def test_a_folder_is_not_a_checkpoint(self, tmp_path):
        image = np.zeros((64, 64), np.uint8)
        with pytest.raises(ValueError, match=f"checkpoint {tmp_path} is a folder"):
            hdreg.estimate(image, image, str(tmp_path))

    @pytest.mark.parametrize("method", ["identity", "sift", "iterative"])
    def test_an_unknown_device_is_refused_for_every_method(self, method):
        """device="gpu" used to be accepted silently by the classical methods."""
        image = np.zeros((64, 64), np.uint8)
        with pytest.raises(ValueError, match="device 'gpu' is not a device: expected auto"):
            hdreg.estimate(image, image, method, device="gpu")


class TestCachedNetworks:
    def test_a_replaced_checkpoint_is_read_again(self, tmp_path):
        """The networks were cached by the method string: a replaced file kept its old answer."""
        image = _smooth()
        path = _constant_checkpoint(tmp_path / "m.pt", 0.0)
        first = hdreg.estimate(image, image, str(path), device="cpu")
        np.testing.assert_allclose(first.b_from_a, np.eye(3), atol=1e-6)
        _constant_checkpoint(tmp_path / "m.pt", 0.05)  # the same path, other weights
        second = hdreg.estimate(image, image, str(path), device="cpu")
        assert np.abs(second.b_from_a[:2, 2]).min() > 1.0
        hdreg.api._built.cache_clear()
        fresh = hdreg.estimate(image, image, str(path), device="cpu")
        np.testing.assert_array_equal(second.b_from_a, fresh.b_from_a)

    def test_a_relative_path_follows_the_working_directory(self, tmp_path, monkeypatch):
        image = _smooth()
        for name, shift in (("zero", 0.0), ("shift", 0.05)):
            (tmp_path / name).mkdir()
            _constant_checkpoint(tmp_path / name / "m.pt", shift)
        monkeypatch.chdir(tmp_path / "zero")
        zero = hdreg.estimate(image, image, "m.pt", device="cpu")
        monkeypatch.chdir(tmp_path / "shift")
        shift = hdreg.estimate(image, image, "m.pt", device="cpu")
        np.testing.assert_allclose(zero.b_from_a, np.eye(3), atol=1e-6)
        assert np.abs(shift.b_from_a[:2, 2]).min() > 1.0


class TestResult:
    def test_both_directions_end_in_one(self):
        """b_from_a was the plain inverse of a_from_b: its [2, 2] entry was 1.0006, not 1."""
        from hdreg.estimators.base import Estimate, Result

        H_a_from_b = np.array([[1.1, 0.05, 4.0], [-0.02, 0.95, -3.0], [3e-4, -2e-4, 1.0]])
        est = Estimate(2 * H_a_from_b[None], np.zeros(1, bool), np.ones(1), [""])
        r = Result.from_estimate(est, 0, "x")
        assert r.a_from_b[2, 2] == 1.0 and r.b_from_a[2, 2] == 1.0
        np.testing.assert_allclose(r.a_from_b, H_a_from_b, rtol=1e-12)
        product = r.b_from_a @ r.a_from_b
        np.testing.assert_allclose(product / product[2, 2], np.eye(3), atol=1e-12)

    def test_to_json(self):
        import json

        a, b, _ = _pair()
        r = hdreg.estimate(a, b, method="sift")
        out = json.loads(json.dumps(r.to_json()))
        assert out["method"] == "sift" and out["failed"] is False and out["reason"] == ""
        np.testing.assert_allclose(out["b_from_a"], r.b_from_a)
        assert out["details"]["inliers"] == r.details["inliers"]
        assert "keypoints_a" not in out["details"]


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
