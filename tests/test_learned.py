"""A learned estimator never reports an estimate it did not make: non-finite input or output
fails the pair with a reason."""

from __future__ import annotations

import numpy as np
import torch

from hdreg.estimators.learned import HomographyNetEstimator

from .conftest import textured_image, tiny_module


class NaNNet(torch.nn.Module):
    """A network whose offsets are all NaN."""

    patch_size = 32

    def forward(self, patch_a: torch.Tensor, patch_b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"offsets": torch.full((patch_a.shape[0], 4, 2), float("nan"))}


def test_non_finite_pixels_fail_the_pair():
    """A NaN patch used to give zero offsets (the identity) and no failure flag."""
    est = HomographyNetEstimator(tiny_module(), device="cpu")
    good = textured_image(64, 64).astype(np.float32)
    holed = good.copy()
    holed[10:30, 10:30] = np.nan
    out = est.estimate([good, good, holed], [good, holed, good])
    assert out.failed.tolist() == [False, True, True]
    assert out.reasons[1] == "image B has non-finite pixels (NaN or inf)"
    assert out.reasons[2] == "image A has non-finite pixels (NaN or inf)"
    np.testing.assert_array_equal(out.H_a_from_b[1:], np.tile(np.eye(3), (2, 1, 1)))


def test_non_finite_offsets_fail_the_pair():
    image = textured_image(64, 64)
    out = HomographyNetEstimator(NaNNet(), device="cpu").estimate([image], [image])
    assert out.failed.tolist() == [True]
    assert out.reasons == ["the network predicted non-finite offsets"]
    np.testing.assert_array_equal(out.H_a_from_b[0], np.eye(3))
