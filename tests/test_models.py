"""HomographyNet: shapes, heads, classification decoding, losses, the checkpoint estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hdreg.estimators.learned import HomographyNetEstimator
from hdreg.evaluation.benchmarks import EvalPairs
from hdreg.geometry import four_point_to_homography, patch_corners, transform_points
from hdreg.models.homographynet import HomographyNet, bin_centers, offsets_to_bins
from hdreg.models.losses import BinCrossEntropy, OffsetMSE

from .conftest import tiny_module


class TestHomographyNet:
    @pytest.mark.parametrize("head", ["regression", "classification"])
    def test_shapes(self, head):
        net = HomographyNet(head, width=0.125, input_size=32).eval()
        out = net(torch.rand(3, 1, 128, 128), torch.rand(3, 1, 128, 128))
        assert out["offsets"].shape == (3, 4, 2)
        if head == "classification":
            assert out["logits"].shape == (3, 4, 2, 21)
            assert out["confidence"].shape == (3, 4)
            assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()

    def test_paper_architecture(self):
        net = HomographyNet()
        convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [64, 64, 64, 64, 128, 128, 128, 128]
        assert all(c.kernel_size == (3, 3) for c in convs)
        pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
        assert len(pools) == 3
        linears = [m for m in net.regressor if isinstance(m, torch.nn.Linear)]
        assert linears[0].in_features == 128 * 16 * 16 and linears[0].out_features == 1024
        assert linears[1].out_features == 8
        assert HomographyNet("classification").regressor[-1].out_features == 8 * 21

    def test_regression_starts_at_identity(self):
        net = HomographyNet(width=0.125, input_size=32).eval()
        assert (
            net(torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128))["offsets"].abs().max() == 0
        )

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="head must be"):
            HomographyNet("segmentation")
        with pytest.raises(ValueError, match="multiple of 8"):
            HomographyNet(input_size=60)
        net = HomographyNet(width=0.125, input_size=32)
        with pytest.raises(ValueError, match=r"\(B, 1, P, P\)"):
            net(torch.rand(2, 2, 64, 64), torch.rand(2, 2, 64, 64))


class TestClassificationDecode:
    def test_bins_span_rho(self):
        c = bin_centers(32.0, 21, like=torch.zeros(1))
        assert (
            c[0] == -32
            and c[-1] == 32
            and c[10] == 0
            and math.isclose(float(c[1] - c[0]), 3.2, rel_tol=1e-6)
        )

    def test_known_bins(self):
        offsets = torch.tensor([[[-32.0, 32.0], [0.0, 1.5], [1.7, -3.3], [40.0, -1.59]]])
        assert offsets_to_bins(offsets, 32.0, 21).tolist() == [
            [[0, 20], [10, 10], [11, 9], [20, 10]]
        ]

    def test_expectation_and_confidence(self):
        net = HomographyNet("classification", width=0.125, input_size=32)
        # one-hot logits on known bins decode to the bin centres with confidence ~1
        target = torch.tensor([[[0, 20], [10, 5], [15, 3], [7, 12]]])
        logits = torch.full((1, 4, 2, 21), -1e4)
        logits.scatter_(-1, target[..., None], 1e4)
        with torch.no_grad():
            net.regressor[-1].weight.zero_()
            net.regressor[-1].bias.copy_(logits.flatten())
        out = net.eval()(torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128))
        expected = -32 + 3.2 * target.float()
        assert torch.allclose(out["offsets"], expected, atol=1e-4)
        assert torch.allclose(out["confidence"], torch.ones(1, 4))
        # two equally likely neighbouring bins: the expectation is halfway, confidence 1/2 per axis
        logits = torch.full((1, 4, 2, 21), -1e4)
        logits[..., 10] = 0
        logits[..., 11] = 0
        with torch.no_grad():
            net.regressor[-1].bias.copy_(logits.flatten())
        out = net(torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128))
        assert torch.allclose(out["offsets"], torch.full((1, 4, 2), 1.6), atol=1e-4)
        assert torch.allclose(out["confidence"], torch.full((1, 4), 0.25))


class TestLosses:
    def test_regression_loss_zero_at_truth(self):
        loss = OffsetMSE(rho=32.0)
        off = torch.rand(4, 4, 2) * 64 - 32
        assert loss({"offsets": off}, {"offsets": off}) == 0
        assert loss({"offsets": off + 3.2}, {"offsets": off}) == pytest.approx(0.01)

    def test_classification_loss(self):
        loss = BinCrossEntropy(rho=32.0, num_bins=21)
        off = torch.zeros(1, 4, 2)
        logits = torch.full((1, 4, 2, 21), -20.0)
        logits[..., 10] = 20.0
        assert loss({"logits": logits, "offsets": off}, {"offsets": off}) < 1e-6
        assert loss({"logits": logits, "offsets": off}, {"offsets": off + 16}) > 10
        with pytest.raises(KeyError, match="logits"):
            loss({"offsets": off}, {"offsets": off})


class TestEstimatorAdapter:
    def _constant_model(self, offsets: torch.Tensor):
        """A model whose prediction is a fixed four-point offset (bias only)."""
        m = tiny_module()
        with torch.no_grad():
            m.net.regressor[-1].weight.zero_()
            m.net.regressor[-1].bias.copy_((offsets / 32.0).flatten())
        return m

    def test_patch_sized_pairs(self):
        off = torch.tensor([[3.0, -2.0], [1.0, 4.0], [-2.5, 0.5], [0.0, -1.0]])
        est = HomographyNetEstimator(self._constant_model(off), device="cpu")
        textured = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
        a = [textured] * 2  # (a blank photo is a failure of its own)
        out = est.estimate(a, a)
        corners = patch_corners(torch.zeros(2, 2, dtype=torch.float64), 128)
        mapped = transform_points(torch.from_numpy(out.H_a_from_b), corners)
        assert torch.allclose(mapped - corners, off.double().expand(2, 4, 2), atol=1e-4)
        assert not out.failed.any() and (out.seconds > 0).all()

    def test_rescaled_to_full_resolution_exactly(self):
        """A model's estimate at 128x128 equals, at full size, the homography between the
        full-size images that the 128x128 resizes are related by."""
        off = torch.tensor([[6.0, -4.0], [-3.0, 5.0], [2.0, 3.0], [-5.0, -2.0]])
        est = HomographyNetEstimator(self._constant_model(off), device="cpu")
        rng = np.random.default_rng(0)
        a = rng.integers(0, 256, (480, 640), dtype=np.uint8)
        b = rng.integers(0, 256, (300, 500), dtype=np.uint8)
        H_full = est.estimate([a], [b]).H_a_from_b[0]
        # the 128-frame homography
        c = patch_corners(torch.zeros(1, 2, dtype=torch.float64), 128)
        H_128 = four_point_to_homography(c, c + off.double())[0].numpy()

        # maps from full-size pixels to 128-frame pixels (cv2.resize pixel-centre convention)
        def to_128(w, h):
            sx, sy = 128 / w, 128 / h
            return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])

        expected = np.linalg.inv(to_128(640, 480)) @ H_128 @ to_128(500, 300)
        np.testing.assert_allclose(H_full, expected / expected[2, 2], rtol=1e-9, atol=1e-9)

    def test_scored_like_any_method(self):
        from hdreg.evaluation.runner import evaluate

        patches = [
            np.random.default_rng(i).integers(0, 255, (128, 128), dtype=np.uint8) for i in range(3)
        ]
        src = np.broadcast_to(
            np.array([[0, 0], [127, 0], [127, 127], [0, 127]], float), (3, 4, 2)
        ).copy()
        true_off = np.array([[3.0, -2.0], [1.0, 4.0], [-2.5, 0.5], [0.0, -1.0]])
        pairs = EvalPairs(
            "t", "synthetic", ["0", "1", "2"], ["g"] * 3, patches, patches, src, src + true_off
        )
        est = HomographyNetEstimator(
            self._constant_model(torch.tensor(true_off, dtype=torch.float32)), device="cpu"
        )
        result = evaluate(pairs, [est], progress=False)
        assert result.methods[0].summary["mace"] < 1e-4
