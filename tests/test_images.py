"""The one image-input rule (hdreg.images): every kind of image a user holds becomes the same
8-bit gray, or one error naming the image and what was expected."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import hdreg
from hdreg.api import to_gray_u8
from hdreg.images import gray_pair

from .conftest import textured_image


def _bgr():
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # as cv2.imread gives it


def _twelve_bit(image_u8: np.ndarray) -> np.ndarray:
    """8-bit data as a 12-bit camera stores it in uint16 (0..4095)."""
    return np.rint(image_u8.astype(np.float64) * (4095 / 255)).astype(np.uint16)


class TestKinds:
    def test_bgr_16bit_float_and_pil_become_the_same_gray(self):
        from PIL import Image

        a = _bgr()
        gray = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
        assert np.array_equal(to_gray_u8(a), gray)
        assert np.abs(to_gray_u8(a.astype(np.uint16) * 257).astype(int) - gray).max() <= 1
        assert np.abs(to_gray_u8(a / 255.0).astype(int) - gray).max() <= 1
        pil = Image.fromarray(cv2.cvtColor(a, cv2.COLOR_BGR2RGB))
        assert np.abs(to_gray_u8(pil).astype(int) - gray).max() <= 1

    def test_the_package_re_exports_it(self):
        import hdreg.images

        assert hdreg.to_gray_u8 is hdreg.images.to_gray_u8 is to_gray_u8

    @pytest.mark.parametrize(
        ("image", "match"),
        [("a.png", "numpy array or a PIL image"), (np.zeros((4, 4), np.uint8), "at least 8"),
         (np.zeros((9, 9, 2), np.uint8), "must be"), (np.zeros((9, 9), np.int64), "dtype")],
    )  # fmt: skip
    def test_bad_images_are_named(self, image, match):
        with pytest.raises(ValueError, match=match):
            hdreg.estimate(image, np.zeros((64, 64), np.uint8), method="identity")


class TestFloat:
    def test_0_to_255_floats_are_refused_naming_the_range(self):
        """Floats in [0, 255] used to be clipped to [0, 1] (nearly all white) and succeed."""
        image = textured_image(64, 64).astype(np.float32)
        ok = np.zeros((64, 64), np.uint8)
        with pytest.raises(ValueError) as info:
            hdreg.estimate(ok, image, method="identity")
        assert str(info.value) == (
            f"image_b is float with values up to {image.max():g}: expected [0, 1]; divide by 255 "
            "or pass uint8"
        )
        with pytest.raises(ValueError, match=r"image_a is float with values down to -0.5"):
            hdreg.estimate(np.full((64, 64), -0.5), ok, method="identity")
        with pytest.raises(ValueError, match="image_a has non-finite values"):
            hdreg.estimate(np.full((64, 64), np.nan), ok, method="identity")

    def test_rounding_outside_0_1_is_clipped(self):
        image = np.tile(np.linspace(-5e-4, 1 + 5e-4, 64), (64, 1))
        gray = to_gray_u8(image)
        assert gray[0, 0] == 0 and gray[0, -1] == 255

    def test_bgra_alpha_is_not_checked_but_clipped(self):
        bgr = _bgr() / 255.0
        bgra = np.dstack([bgr, np.full(bgr.shape[:2], 7.0)])  # alpha outside [0, 1]: opaque
        np.testing.assert_array_equal(to_gray_u8(bgra), to_gray_u8(bgr))

    def test_transparent_float_and_16_bit_pixels_are_white(self):
        """Alpha was ignored: a logo's transparent background became its hidden colour."""
        bgr = _bgr() / 255.0
        alpha = np.zeros(bgr.shape[:2])
        alpha[:, : bgr.shape[1] // 2] = 1.0  # left half opaque, right half transparent
        gray = to_gray_u8(np.dstack([bgr, alpha]))
        assert (gray[:, bgr.shape[1] // 2 :] == 255).all()
        np.testing.assert_array_equal(
            gray[:, : bgr.shape[1] // 2], to_gray_u8(bgr)[:, : bgr.shape[1] // 2]
        )
        wide = np.dstack([_bgr().astype(np.uint16) * 257, (alpha * 65535).astype(np.uint16)])
        assert (to_gray_u8(wide)[:, bgr.shape[1] // 2 :] == 255).all()


class TestSixteenBit:
    def test_12_bit_data_fills_the_8_bit_range(self):
        """12-bit data was divided by 257 (0..16): keypoint methods found no keypoints."""
        gray = cv2.cvtColor(_bgr(), cv2.COLOR_BGR2GRAY)
        assert np.abs(to_gray_u8(_twelve_bit(gray)).astype(int) - gray).max() <= 1

    def test_16_bit_full_range_is_divided_by_257(self):
        x = np.array([[0, 257, 32896, 65535]] * 8, np.uint16).repeat(2, axis=1)
        assert to_gray_u8(x)[0, ::2].tolist() == [0, 1, 128, 255]

    def test_the_pair_shares_one_bit_depth(self):
        """A darker B keeps its relation to A: both are scaled from the larger maximum."""
        a = _twelve_bit(textured_image(64, 64))
        b = (a // 2).astype(np.uint16)  # max 2047: on its own, 11-bit data
        gray_a, gray_b = gray_pair(a, b)
        assert gray_a.max() == 255
        np.testing.assert_allclose(gray_b, gray_a / 2.0, atol=1.0)
        assert to_gray_u8(b).max() == 255  # alone, B would fill the range

    def test_pil_16_bit_follows_the_same_rule(self):
        from PIL import Image

        x = _twelve_bit(textured_image(64, 80))
        pil = Image.fromarray(x)
        assert pil.mode.startswith("I;16")
        np.testing.assert_array_equal(to_gray_u8(pil), to_gray_u8(x))

    def test_sift_recovers_a_shift_on_12_bit_data(self):
        a8 = textured_image(240, 320, seed=5)
        b8 = cv2.warpAffine(a8, np.float32([[1, 0, -7], [0, 1, -5]]), (320, 240))  # B(p)=A(p+t)
        r = hdreg.estimate(_twelve_bit(a8), _twelve_bit(b8), method="sift")
        assert not r.failed, r.reason
        np.testing.assert_allclose(r.b_from_a[:2, 2], [-7, -5], atol=0.1)


def test_a_folder_given_as_an_image_is_named_a_folder(tmp_path, capsys):
    """`hdreg align somefolder b.png` used to say that the folder does not exist."""
    from hdreg.apps.cli import main

    cv2.imwrite(str(tmp_path / "b.png"), textured_image(64, 64))
    (tmp_path / "photos").mkdir()
    code = main(["align", str(tmp_path / "photos"), str(tmp_path / "b.png"), "--method", "sift",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"hdreg align: error: image file {tmp_path / 'photos'} is a folder, not an image file"
    )
