"""The iterative correlation network: shapes, gradients, the lookup's geometry, its loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hdreg.geometry import four_point_to_homography, patch_corners, warp_perspective
from hdreg.models.iterative import CorrelationPyramid, Encoder, IterativeHomographyNet, Updater
from hdreg.models.losses import SequenceL1

# A small two-scale net: coarse 32×32 input (8×8 cells), fine 64×64 input (8×8 cells).
SMALL = dict(
    input_size=32, channels=(8, 16), dim=16, width=16, iterations=3,
    fine_input_size=64, fine_channels=(8, 8, 16), fine_iterations=2,
)  # fmt: skip


def _pair(batch: int = 2, p: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random patches and a known perspective warp between them (A sampled on B's grid)."""
    gen = torch.Generator().manual_seed(0)
    big = torch.nn.functional.interpolate(
        torch.rand(batch, 1, p // 8, p // 8, generator=gen), size=(p, p), mode="bicubic"
    ).clamp(0, 1)
    offsets = (torch.rand(batch, 4, 2, generator=gen) * 2 - 1) * 6
    corners = patch_corners(torch.zeros(batch, 2), p)
    H_a_from_b = four_point_to_homography(corners, corners + offsets)
    return big, warp_perspective(big, H_a_from_b, (p, p), fill="border"), offsets


class TestShapes:
    def test_two_scales(self):
        net = IterativeHomographyNet(**SMALL)
        a, b, _ = _pair(3)
        out = net(a, b)
        assert out["offsets"].shape == (3, 4, 2)
        assert out["offsets_all"].shape == (5, 3, 4, 2)
        assert torch.equal(out["offsets_all"][-1], out["offsets"])

    def test_iterations_at_test_time(self):
        net = IterativeHomographyNet(**SMALL).eval()
        a, b, _ = _pair(1)
        assert net(a, b, iterations=7, fine_iterations=0)["offsets_all"].shape[0] == 7
        assert net(a, b, iterations=1, fine_iterations=4)["offsets_all"].shape[0] == 5

    def test_other_patch_sizes_are_resized(self):
        net = IterativeHomographyNet(**SMALL)
        a, b, _ = _pair(2, p=96)
        assert net(a, b)["offsets"].shape == (2, 4, 2)

    def test_starts_at_the_identity(self):
        """A fresh net predicts zero offsets: the updater's last layer starts at zero."""
        a, b, _ = _pair(2)
        assert torch.count_nonzero(IterativeHomographyNet(**SMALL)(a, b)["offsets_all"]) == 0

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="fine_input_size and fine_iterations"):
            IterativeHomographyNet(fine_input_size=128, fine_iterations=0)
        with pytest.raises(ValueError, match="divisible"):
            IterativeHomographyNet(input_size=62)
        with pytest.raises(ValueError, match="power of two"):
            IterativeHomographyNet(input_size=48)
        with pytest.raises(ValueError, match=r"\(B, 1, P, P\)"):
            IterativeHomographyNet(**SMALL)(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))

    def test_bf16_autocast_keeps_geometry_float32(self):
        net = IterativeHomographyNet(**SMALL)
        a, b, _ = _pair(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(a, b)
        assert out["offsets"].dtype == torch.float32


class TestGradients:
    def test_every_parameter_learns_through_the_iterations(self):
        net = IterativeHomographyNet(**SMALL)
        # the updaters' last layers start at zero: give them a value so gradients reach the rest
        for scale in (net.coarse, net.fine):
            nn.init.normal_(scale.updater.net[-1].weight, std=0.1)
        a, b, offsets = _pair(2)
        loss = SequenceL1(0.85)(net(a, b), {"offsets": offsets})
        loss.backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert not missing, f"no gradient reaches {missing}"
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())

    def test_loss_weights(self):
        """γ^(N−1−i): with steps errors 1, 2, 3 (per coordinate), the loss is .25·1 + .5·2 + 3."""
        truth = torch.zeros(1, 4, 2)
        steps = torch.stack([torch.full((1, 4, 2), float(e)) for e in (1, 2, 3)])
        loss = SequenceL1(0.5)({"offsets_all": steps, "offsets": steps[-1]}, {"offsets": truth})
        assert loss.item() == pytest.approx(0.25 * 1 + 0.5 * 2 + 3)
        # a one-shot network (no offsets_all) is scored on its single estimate
        assert SequenceL1(0.5)({"offsets": steps[0]}, {"offsets": truth}).item() == pytest.approx(1)
        with pytest.raises(ValueError, match="gamma"):
            SequenceL1(0.0)


class TestCorrelation:
    def test_lookup_peaks_at_the_true_shift(self):
        """One-hot positional features, B = A shifted by (2, −1) cells: looking up around B's own
        cells, the window's maximum sits at (2, −1) for every cell whose match lies inside A."""
        n, shift = 8, (2, -1)
        f_a = torch.eye(n * n).reshape(1, n * n, n, n)
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xa, ya = xs + shift[0], ys + shift[1]
        inside = (xa >= 0) & (xa < n) & (ya >= 0) & (ya < n)
        f_b = torch.zeros(1, n * n, n, n)
        f_b[0, (ya * n + xa)[inside], ys[inside], xs[inside]] = 1.0
        corr = CorrelationPyramid(f_a, f_b, levels=2, radius=3)
        cells = torch.stack([xs, ys], dim=-1).float()[None]
        look = corr.lookup(cells)  # (1, 2·49, n, n)
        assert look.shape == (1, corr.channels, n, n)
        level0 = look[0, :49].reshape(7, 7, n, n)  # (dy, dx) window
        peak = level0.flatten(0, 1).argmax(dim=0)
        dy, dx = peak // 7 - 3, peak % 7 - 3
        assert (dx[inside] == shift[0]).all() and (dy[inside] == shift[1]).all()

    def test_encoder_and_updater_shapes(self):
        assert Encoder((8, 8, 16), dim=12)(torch.rand(2, 1, 64, 64)).shape == (2, 12, 8, 8)
        assert Updater(10, size=8, width=8)(torch.rand(3, 10, 8, 8)).shape == (3, 4, 2)
        with pytest.raises(ValueError, match="power of two"):
            Updater(10, size=6)


class _ShiftReader(nn.Module):
    """A hand-made updater: the soft-argmax of the level-0 window, averaged over the cells that
    see a match (weighted by their peak), as the same (dx, dy) step for the four corners: a
    perfect estimator of a translation."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.r = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = 2 * self.r + 1
        window = x[:, : k * k].flatten(2)  # (B, k², cells)
        prob = (window * 50).softmax(dim=1)
        d = torch.arange(-self.r, self.r + 1, dtype=x.dtype)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        step = torch.stack(
            [(prob * dx.reshape(1, -1, 1)).sum(1), (prob * dy.reshape(1, -1, 1)).sum(1)], 1
        )
        peak = window.amax(dim=1, keepdim=True)  # (B, 1, cells): 0 where B's cell leaves A
        step = (step * peak).sum(dim=2) / peak.sum(dim=2)
        return step[:, None, :].expand(-1, 4, 2)


def test_one_iteration_with_a_perfect_signal_moves_to_the_truth():
    """Patch B is patch A translated by 3 cells right, 1 down (24, 8 px at 128 px, 8×8 cells).
    With features that make the correlation exact and an updater that reads its peak, a single
    iteration lands on the true offsets: the frames (patch, input, cells), the corner order and
    the update's unit are consistent."""
    net = IterativeHomographyNet(input_size=32, channels=(8, 16), dim=8, iterations=1)
    n, p = net.coarse.cells, 128
    shift_cells = torch.tensor([3.0, 1.0])

    class OneHot(nn.Module):  # A: cell i → e_i; B: cell j → e_(j + shift)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            half = x.shape[0] // 2
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            f_a = torch.eye(n * n).reshape(n * n, n, n)
            xa, ya = xs + int(shift_cells[0]), ys + int(shift_cells[1])
            inside = (xa < n) & (ya < n)
            f_b = torch.zeros(n * n, n, n)
            f_b[(ya * n + xa)[inside], ys[inside], xs[inside]] = 1.0
            return torch.stack([f_a] * half + [f_b] * half) * (n * n) ** 0.5 * 4

    net.coarse.encoder = OneHot()
    net.coarse.updater = _ShiftReader(net.coarse.radius)
    a = torch.rand(2, 1, p, p)
    out = net(a, a)["offsets"]
    expected = (shift_cells * p / n).expand(2, 4, 2)  # a translation: every corner moves alike
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0)


# One 32×32 scale (8×8 cells) at batch 16: the smallest variant that leaves the identity's
# plateau within a few hundred steps (measured: smaller nets or batches stay there far longer).
TINY_TRAIN = [
    "model.net.input_size=32", "model.net.channels=[16,32]", "model.net.width=32",
    "model.net.iterations=3", "model.net.fine_input_size=0", "model.net.fine_iterations=0",
    "data.batch_size=16",
    "data.val_pairs=64", "data.num_workers=0", "trainer.max_steps=300",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_training_run_through_the_real_config_lowers_val_mace(tmp_path):
    """`experiment=iterative_cpu`, shrunk: 300 steps lower val/mace well below the identity's."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hdreg.models.base import build_module

    from .conftest import REPO

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "hdreg" / "configs")):
        cfg = compose(
            "train",
            overrides=["experiment=iterative_cpu", *TINY_TRAIN, f"paths.output_dir={tmp_path}"],
        )
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
