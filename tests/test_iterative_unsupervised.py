"""The iterative network trained without labels: the sequence photometric loss (illumination
robustness, masks, gradients, no labels) and a tiny run through the real config."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.data.synthetic.detone import SyntheticPairs
from hdreg.geometry import four_point_to_homography, patch_corners, warp_perspective
from hdreg.models.base import HomographyModule
from hdreg.models.losses import (
    SequencePhotometric,
    local_normalize,
    masked_standardize,
    photometric_loss,
    soft_census,
    warp_a_onto_b,
)


@pytest.fixture(scope="module")
def batch():
    images = load_images(sample_source()).images
    ds = SyntheticPairs(images, detone_protocol(), seed=5, length=4, with_full_image=True)
    return HomographyModule.to_float(next(iter(DataLoader(ds, batch_size=4))))


def unlabeled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "offsets"}


def steps_around(truth: torch.Tensor, errors: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """An ``out`` dict whose iterations sit at ``truth`` plus a fixed direction × each error."""
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(truth.shape, generator=g), dim=-1)
    steps = torch.stack([truth + e * direction for e in errors])
    return {"offsets_all": steps, "offsets": steps[-1]}


def contrast(x: torch.Tensor, gain: float, bias: float) -> torch.Tensor:
    """A global contrast gain and brightness offset about mid-grey, kept inside [0, 1] here."""
    return (x - 0.5) * gain + 0.5 + bias


TRANSFORMS = ["none", "standardize", "local_norm", "census"]


class TestSequencePhotometric:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    @pytest.mark.parametrize("full_image", [True, False])
    def test_grows_with_the_error_and_never_reads_the_labels(self, batch, transform, full_image):
        loss = SequencePhotometric(32.0, transform=transform, full_image=full_image, window=5)
        at = [
            float(loss(steps_around(batch["offsets"], (e,)), unlabeled(batch))["loss"])
            for e in (0.0, 2.0, 8.0)
        ]
        assert at[0] < at[1] < at[2], at

    def test_iterations_weighted_like_sequence_l1(self, batch):
        loss = SequencePhotometric(32.0, gamma=0.5, stride=2)
        single = [
            float(loss(steps_around(batch["offsets"], (e,)), unlabeled(batch))["loss"])
            for e in (1.0, 4.0, 0.0)
        ]
        total = loss(steps_around(batch["offsets"], (1.0, 4.0, 0.0)), unlabeled(batch))
        expected = 0.25 * single[0] + 0.5 * single[1] + single[2]
        assert float(total["loss"]) == pytest.approx(expected, rel=1e-5)
        assert float(total["photometric"]) == pytest.approx(single[2], rel=1e-5)

    def test_robust_to_a_global_brightness_and_contrast_change(self, batch):
        """Patch B with a third less contrast and brighter. Measured against each loss's own
        signal (its value at a 4-pixel error minus at the truth), the change moves the robust
        losses at the truth by under 10 % of it (census: 25 %), the plain L1 by more than half
        of it; and under the change the robust losses still rank the truth first."""
        at_truth = steps_around(batch["offsets"], (0.0,))
        off_by_4 = steps_around(batch["offsets"], (4.0,))
        changed = dict(unlabeled(batch), patch_b=contrast(batch["patch_b"], 0.65, 0.1))
        for transform, bound in (
            ("standardize", 0.1), ("local_norm", 0.1), ("census", 0.25), ("none", None)
        ):  # fmt: skip
            loss = SequencePhotometric(32.0, transform=transform, window=5)
            same = float(loss(at_truth, unlabeled(batch))["loss"])
            signal = float(loss(off_by_4, unlabeled(batch))["loss"]) - same
            shift = abs(float(loss(at_truth, changed)["loss"]) - same)
            if bound is None:
                assert shift > 0.5 * signal, (transform, same, signal, shift)
            else:
                assert shift < bound * signal, (transform, same, signal, shift)
                wrong = float(loss(off_by_4, changed)["loss"])
                assert wrong > 1.5 * float(loss(at_truth, changed)["loss"]), transform

    def test_transforms_are_invariant_to_brightness_offsets(self):
        x = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(1)) * 0.5
        torch.testing.assert_close(soft_census(x + 0.3), soft_census(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(local_normalize(x + 0.3), local_normalize(x), atol=1e-4, rtol=0)
        # a contrast gain changes local_normalize only through eps
        ratio = local_normalize(x * 2.0, eps=1e-6) / local_normalize(x, eps=1e-6)
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-3, rtol=0)

    def test_masked_standardize_uses_only_the_masked_samples(self):
        g = torch.Generator().manual_seed(5)
        x = torch.rand(2, 1, 6, 7, dtype=torch.float64, generator=g)
        mask = (torch.rand(2, 1, 6, 7, generator=g) > 0.4).double()
        out = masked_standardize(x, mask, eps=1e-9)
        for i in range(2):
            kept = out[i][mask[i].bool()]
            assert float(kept.mean()) == pytest.approx(0.0, abs=1e-9)
            assert float(kept.var(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
        changed = x.clone()
        changed[mask == 0] = 5.0  # what lies outside the mask moves nothing inside it
        torch.testing.assert_close(masked_standardize(changed, mask)[mask.bool()],
                                   masked_standardize(x, mask)[mask.bool()])  # fmt: skip

    def test_local_normalize_matches_a_direct_box_filter(self):
        x = torch.rand(
            1, 1, 11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
        )
        out = local_normalize(x, window=5, eps=0.05)
        for y, xx in [(0, 0), (5, 6), (10, 12), (3, 11)]:
            win = x[0, 0, max(y - 2, 0) : y + 3, max(xx - 2, 0) : xx + 3]
            expected = (x[0, 0, y, xx] - win.mean()) / torch.sqrt(win.var(unbiased=False) + 0.05**2)
            assert float(out[0, 0, y, xx]) == pytest.approx(float(expected), abs=1e-10)

    def test_mask_excludes_samples_outside_a(self):
        """Patch mode, a translation by 20 px to the right: B's right 20 columns sample outside
        patch A. Changing B there leaves the loss unchanged; changing B elsewhere does not."""
        p = 32
        g = torch.Generator().manual_seed(3)
        a = torch.rand(1, 1, p, p, dtype=torch.float64, generator=g)
        offsets = torch.tensor([[[20.0, 0.0]] * 4], dtype=torch.float64)
        corners = patch_corners(torch.zeros(1, 2, dtype=torch.float64), p)
        b = warp_perspective(a, four_point_to_homography(corners, corners + offsets), (p, p))
        out = {"offsets": offsets}
        loss = SequencePhotometric(32.0, transform="none", full_image=False)
        base = float(loss(out, {"patch_a": a, "patch_b": b})["loss"])
        assert base < 1e-9
        outside, inside = b.clone(), b.clone()
        outside[..., p - 11 :] = 1.0  # columns 21..31 map to x >= 41 > 31: outside A
        inside[..., :5] = 1.0
        assert float(loss(out, {"patch_a": a, "patch_b": outside})["loss"]) < 1e-9
        assert float(loss(out, {"patch_a": a, "patch_b": inside})["loss"]) > 0.01
        _, mask, _ = warp_a_onto_b(a, corners, offsets, torch.zeros(1, 2), p, max_offset=64.0)
        assert int(mask.sum()) == p * (p - 20)

    def test_gradcheck_float64(self):
        g = torch.Generator().manual_seed(4)
        p = 16
        a = torch.nn.functional.interpolate(
            torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=g), size=(p, p), mode="bicubic"
        )
        b = torch.rand(1, 1, p, p, dtype=torch.float64, generator=g)
        for transform in TRANSFORMS:
            loss = SequencePhotometric(8.0, transform=transform, window=3, full_image=False)

            def f(off, transform=transform, loss=loss):
                steps = torch.stack([off, off * 0.5])
                return loss({"offsets_all": steps, "offsets": off}, {"patch_a": a, "patch_b": b})[
                    "loss"
                ]

            # non-integer sample positions: bilinear interpolation is smooth there
            off = (torch.rand(1, 4, 2, dtype=torch.float64, generator=g) * 2 - 1) * 1.7 + 0.31
            assert torch.autograd.gradcheck(f, (off.requires_grad_(),), eps=1e-6, atol=1e-5)

    def test_degenerate_predictions_are_masked_and_finite(self, batch):
        folded = batch["offsets"].clone()
        # within the loss's clamp (± 2 rho): bottom-left and bottom-right land on one point
        folded[0] = torch.tensor([[0.0, 0.0], [-64.0, 0.0], [-64.0, -64.0], [63.0, -64.0]])
        folded[1] = float("nan")
        out = {"offsets": folded.requires_grad_()}
        result = SequencePhotometric(32.0)(out, unlabeled(batch))
        result["loss"].backward()
        assert torch.isfinite(result["loss"]) and torch.isfinite(folded.grad).all()
        assert float(result["degenerate"]) == pytest.approx(2 / 4)

    def test_matches_the_nguyen_loss_without_transform(self, batch):
        off = batch["offsets"] + 1.5
        ours = SequencePhotometric(32.0, transform="none", stride=2)({"offsets": off}, batch)
        theirs, valid, _ = photometric_loss(
            batch["image_a"], batch["patch_b"], batch["corners"], off, batch["top_left"],
            max_offset=64.0, stride=2,
        )  # fmt: skip
        assert float(ours["loss"]) == pytest.approx(float(theirs[valid].mean()), rel=1e-5)

    def test_bad_arguments_and_missing_full_image(self, batch):
        with pytest.raises(ValueError, match="transform must be one of"):
            SequencePhotometric(32.0, transform="ssim")
        with pytest.raises(ValueError, match="odd"):
            SequencePhotometric(32.0, window=4)
        with pytest.raises(ValueError, match="gamma"):
            SequencePhotometric(32.0, gamma=0.0)
        no_image = {k: v for k, v in unlabeled(batch).items() if k != "image_a"}
        with pytest.raises(KeyError, match="with_full_image"):
            SequencePhotometric(32.0)({"offsets": batch["offsets"]}, no_image)


# One 32×32 scale (8×8 cells), 3 iterations, batch 16: the tiny net of tests/test_iterative.py.
TINY_TRAIN = [
    "model.net.input_size=32", "model.net.channels=[16,32]", "model.net.width=32",
    "model.net.iterations=3", "model.net.fine_input_size=0", "model.net.fine_iterations=0",
    "data.val_pairs=64", "data.num_workers=0", "trainer.max_steps=300",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_training_run_through_the_real_config_lowers_val_mace(tmp_path):
    """`experiment=iterative_unsupervised_cpu`, shrunk: 300 steps without labels lower val/mace
    well below the identity's (measured with bench/compare_unsupervised_losses.py: 24.6 → 18.8
    on 128 validation pairs)."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hdreg.models.base import build_module

    from .conftest import REPO

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "hdreg" / "configs")):
        cfg = compose(
            "train",
            overrides=[
                "experiment=iterative_unsupervised_cpu",
                *TINY_TRAIN,
                f"paths.output_dir={tmp_path}",
            ],
        )
    assert cfg.model.loss._target_ == "hdreg.models.losses.SequencePhotometric"
    pl.seed_everything(0)
    dm, module = instantiate(cfg.data), build_module(cfg.model)
    trainer = pl.Trainer(
        max_steps=cfg.trainer.max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val, val_check_interval=cfg.trainer.max_steps,
        default_root_dir=tmp_path,
    )  # fmt: skip
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/mace"]
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/mace"]
    identity = float(torch.from_numpy(dm.val_benchmark.offsets).norm(dim=-1).mean())
    assert before == pytest.approx(identity, rel=1e-4)  # a fresh net is the identity
    assert after < 0.9 * before, (before, after)
