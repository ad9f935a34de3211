"""The dense matching features of bench/dense_features.py: their targets, their window and the
match they give, checked on known motion; one training step lowers the loss."""

from __future__ import annotations

import sys

import numpy as np
import torch

from .conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from dense_features import DenseFeatures, _parabola_offsets, _targets, loss_of


def test_targets_of_a_translation_and_of_a_zoom_about_a_cell():
    """B's pixel x lies at x + (4, -8) in A: every cell's target is (1, -2) cells. A zoom ×2 about
    pixel (12, 12) (cell (3, 3)): cell j's target is j - (3, 3), in cells."""
    shift = np.array([[1.0, 0, 4], [0, 1, -8], [0, 0, 1]])
    t = _targets(shift[None], 8, 4)
    assert t.shape == (1, 2, 8, 8)
    torch.testing.assert_close(t[0, 0], torch.full((8, 8), 1.0))
    torch.testing.assert_close(t[0, 1], torch.full((8, 8), -2.0))
    zoom = np.array([[2.0, 0, -12], [0, 2, -12], [0, 0, 1]])
    t = _targets(zoom[None], 8, 4)[0]
    j = torch.arange(8.0)
    torch.testing.assert_close(t[0], (j - 3).expand(8, 8))
    torch.testing.assert_close(t[1], (j - 3)[:, None].expand(8, 8))


class _OneHot(DenseFeatures):
    """Features that name their cell (one-hot of the cell index), shifted for B by ``shift``
    cells: B's cell j carries A's cell j + shift, an exact correlation."""

    def __init__(self, cells: int, shift: tuple[int, int]) -> None:
        super().__init__(radius=3)
        self.cells, self.shift, self.calls = cells, shift, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.cells
        eye = torch.eye(n * n).reshape(n * n, n, n)
        self.calls += 1
        if self.calls % 2:  # A, then B
            return eye[None].expand(x.shape[0], -1, -1, -1)
        dx, dy = self.shift
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        index = ((ys + dy).clamp(0, n - 1) * n + (xs + dx).clamp(0, n - 1)).flatten()
        return eye.flatten(1)[index].T.reshape(n * n, n, n)[None].expand(x.shape[0], -1, -1, -1)


def test_the_window_finds_a_shift_of_whole_cells():
    net = _OneHot(8, (2, -1))
    with torch.no_grad():
        net.log_temperature.fill_(np.log(0.01))  # a sharp distribution
        mean, peak = net.match(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    inner = (slice(1, 7), slice(2, 6))  # cells whose match lies inside A, away from the clamp
    torch.testing.assert_close(mean[0, 0][inner], torch.full((6, 4), 2.0))
    torch.testing.assert_close(mean[0, 1][inner], torch.full((6, 4), -1.0))
    assert (peak[0][inner] > 0.99).all()


def test_a_training_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.interpolate(
        torch.rand(4, 1, 16, 16, generator=gen), size=(64, 64), mode="bicubic"
    ).clamp(0, 1)
    b = torch.roll(a, shifts=(-3, 5), dims=(2, 3))  # B(x) = A(x + (-5, 3)): wrap-around aside
    shift = np.array([[1.0, 0, -5], [0, 1, 3], [0, 0, 1]])
    target = _targets(np.repeat(shift[None], 4, 0), 16, 4)
    net = DenseFeatures(channels=(8, 16), dim=16, radius=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first, _ = loss_of(net, a, b, target)
    for _ in range(30):
        loss, _ = loss_of(net, a, b, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first.item()


def test_the_parabola_finds_the_vertex_of_quadratic_logits():
    """Logits ``-(dx - 0.3)² - (dy + 1.2)²`` over a 5×5 window: the vertex, (0.3, -1.2) cells;
    a peak on the window's edge keeps its whole cell."""
    d = torch.arange(-2.0, 3.0)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    inside = -((dx - 0.3) ** 2) - (dy + 1.2) ** 2
    edge = -((dx - 2.4) ** 2) - dy**2  # most likely cell: dx = 2, on the edge
    logits = torch.stack([inside, edge]).reshape(2, 25, 1, 1)
    out = _parabola_offsets(logits, 2)[:, :, 0, 0]
    torch.testing.assert_close(out[0], torch.tensor([0.3, -1.2]))
    torch.testing.assert_close(out[1], torch.tensor([2.0, 0.0]))
