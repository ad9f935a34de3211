"""The unsupervised model: photometric loss, its gradients, and numerics that never break."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.data.synthetic.detone import SyntheticPairs
from hdreg.models.base import HomographyModule
from hdreg.models.losses import photometric_loss

from .conftest import tiny_module


@pytest.fixture(scope="module")
def batch():
    images = load_images(sample_source()).images
    ds = SyntheticPairs(images, detone_protocol(), seed=11, length=16, with_full_image=True)
    return HomographyModule.to_float(next(iter(DataLoader(ds, batch_size=16))))


def loss_for(batch, offsets):
    return photometric_loss(
        batch["image_a"], batch["patch_b"], batch["corners"], offsets, batch["top_left"],
        max_offset=64.0,
    )  # fmt: skip


class TestPhotometricLoss:
    def test_near_zero_at_truth_and_growing(self, batch):
        true = batch["offsets"]
        at_truth, valid, _ = loss_for(batch, true)
        assert valid.all()
        # only interpolation and 8-bit rounding separate A warped by the truth from B
        assert at_truth.max() < 1.5 / 255
        g = torch.Generator().manual_seed(0)
        direction = torch.nn.functional.normalize(torch.randn(16, 4, 2, generator=g), dim=-1)
        means = [float(loss_for(batch, true + r * direction)[0].mean()) for r in (0, 1, 2, 4, 8)]
        assert means == sorted(means) and means[-1] > 10 * means[0]

    def test_strided_loss_estimates_the_same_mean(self, batch):
        off = batch["offsets"] + 3.0
        full = loss_for(batch, off)[0]
        strided = photometric_loss(
            batch["image_a"], batch["patch_b"], batch["corners"], off, batch["top_left"],
            max_offset=64.0, stride=2,
        )  # fmt: skip
        assert strided[2].shape[-1] == 64
        assert torch.allclose(strided[0], full, rtol=0.1)
        with pytest.raises(ValueError, match="stride must divide"):
            photometric_loss(batch["image_a"], batch["patch_b"], batch["corners"], off,
                             batch["top_left"], max_offset=64.0, stride=3)  # fmt: skip

    def test_identity_is_worse_than_truth(self, batch):
        at_truth = loss_for(batch, batch["offsets"])[0]
        at_zero = loss_for(batch, torch.zeros_like(batch["offsets"]))[0]
        assert (at_zero > at_truth).all()

    def test_gradcheck_through_dlt_and_warp(self):
        torch.manual_seed(0)
        image_a = torch.rand(2, 1, 14, 16, dtype=torch.float64)
        patch_b = torch.rand(2, 1, 6, 6, dtype=torch.float64)
        top_left = torch.tensor([[4, 4], [5, 3]])
        corners = top_left.double()[:, None, :] + torch.tensor(
            [[0.0, 0], [5, 0], [5, 5], [0, 5]], dtype=torch.float64
        )
        offsets = (torch.rand(2, 4, 2, dtype=torch.float64) - 0.5).requires_grad_(True)
        image_a.requires_grad_(True)

        def f(off, img):
            return photometric_loss(img, patch_b, corners, off, top_left, max_offset=8.0)[0]

        # fast mode: one random projection of the Jacobian, against finite differences
        assert torch.autograd.gradcheck(f, (offsets, image_a), fast_mode=True)

    def test_degenerate_predictions_are_finite_and_flagged(self, batch):
        bad = batch["offsets"].clone()
        bad[0, 0], bad[0, 1] = torch.tensor([63.5, 0.0]), torch.tensor([-63.5, 0.0])  # TL = TR
        centre = batch["corners"][1].mean(dim=0)
        bad[1] = centre - batch["corners"][1]  # all four corners on the patch centre
        bad[2] = float("nan")
        bad[3] = 1e9  # wild: clamped to +64 px, a valid (if poor) translation
        bad.requires_grad_(True)
        loss, valid, warped = loss_for(batch, bad)
        assert valid[:4].tolist() == [False, False, False, True] and valid[4:].all()
        assert torch.isfinite(loss).all() and torch.isfinite(warped).all()
        (loss.sum() / valid.sum()).backward()
        assert torch.isfinite(bad.grad).all()
        assert bad.grad[:3].abs().sum() == 0  # dropped pairs contribute nothing
        assert bad.grad[3].abs().sum() == 0  # beyond the clamp: no push further out


class TestUnsupervisedModule:
    def _module(self):
        return tiny_module("unsupervised")

    def test_gradients_reach_first_conv(self, batch):
        m = self._module()
        m.log = lambda *a, **k: None  # no trainer attached
        # start away from the zero-initialized output so that every layer gets a gradient
        torch.nn.init.normal_(m.net.regressor[-1].weight, std=0.01)
        loss = m.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        first = m.net.features[0].weight.grad
        assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)

    def test_labels_never_enter_the_loss(self, batch):
        m = self._module()
        m.log = lambda *a, **k: None
        torch.manual_seed(0)
        loss1 = m.training_step(batch, 0)
        scrambled = dict(batch, offsets=torch.randn_like(batch["offsets"]) * 100)
        torch.manual_seed(0)
        loss2 = m.training_step(scrambled, 0)
        assert torch.equal(loss1, loss2)

    def test_all_degenerate_batch_is_a_zero_loss_with_zero_gradients(self, batch):
        """Never None (Lightning's DDP rejects it): every pair masked out gives an exact zero
        that still reaches every parameter, with zero gradients."""
        m = self._module()
        logged = {}
        m.log = lambda name, value, **k: logged.__setitem__(
            name, float(torch.as_tensor(value).detach())
        )
        torch.nn.init.normal_(m.net.regressor[-1].weight, std=0.01)
        with torch.no_grad():  # a network whose every prediction is NaN
            m.net.regressor[-1].bias.fill_(float("nan"))
        loss = m.training_step(batch, 0)
        assert isinstance(loss, torch.Tensor) and loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() and not g.any() for g in grads)
        assert logged["train/degenerate"] == 1.0 and logged["train/loss"] == 0.0

    def test_loss_is_the_mean_photometric_error_of_the_pairs(self, batch):
        m = self._module()
        logged = {}
        m.log = lambda name, value, **k: logged.__setitem__(
            name, float(torch.as_tensor(value).detach())
        )
        m.eval()  # no dropout: the same offsets as computed below
        offsets = m(batch["patch_a"], batch["patch_b"])["offsets"]
        per_pair, valid, _ = loss_for(batch, offsets.detach())
        assert valid.all()
        loss = m.training_step(batch, 0)
        assert loss.item() == pytest.approx(float(per_pair.mean()), rel=1e-5)
        assert logged["train/degenerate"] == 0.0

    def test_needs_full_images(self, batch):
        m = self._module()
        with pytest.raises(KeyError, match="with_full_image"):
            m.training_step({k: v for k, v in batch.items() if k != "image_a"}, 0)
