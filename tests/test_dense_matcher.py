"""The dense matcher of ``wide``'s refinement levels (hdreg.models.dense_matcher): its window, the
parabola that reads it and the targets it is trained on, checked on known motion; its training
lowers the loss and writes a network-only file, which loads as a network and is refused, with
the reason, wherever an estimator is expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdreg.apps.cli import main as hdreg_main
from hdreg.estimators.learned import load_checkpoint_estimator
from hdreg.models.checkpoint import load_module, load_net, read_checkpoint, save_net
from hdreg.models.dense_matcher import DenseMatcher, dense_match_loss, parabola_offsets
from hdreg.training.dense_matcher import main as train_main
from hdreg.training.dense_matcher import targets

CONFIG = {"_target_": "hdreg.models.dense_matcher.DenseMatcher", "channels": [8, 16], "dim": 16,
          "radius": 3}  # fmt: skip


def test_targets_of_a_translation_and_of_a_zoom_about_a_cell():
    """B's pixel x lies at x + (4, -8) in A: every cell's target is (1, -2) cells. A zoom ×2 about
    pixel (12, 12) (cell (3, 3)): cell j's target is j - (3, 3), in cells."""
    shift = np.array([[1.0, 0, 4], [0, 1, -8], [0, 0, 1]])
    t = targets(shift[None], 8, 4)
    assert t.shape == (1, 2, 8, 8)
    torch.testing.assert_close(t[0, 0], torch.full((8, 8), 1.0))
    torch.testing.assert_close(t[0, 1], torch.full((8, 8), -2.0))
    zoom = np.array([[2.0, 0, -12], [0, 2, -12], [0, 0, 1]])
    t = targets(zoom[None], 8, 4)[0]
    j = torch.arange(8.0)
    torch.testing.assert_close(t[0], (j - 3).expand(8, 8))
    torch.testing.assert_close(t[1], (j - 3)[:, None].expand(8, 8))


def _one_hot(cells: int, shift: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features that name their cell (one-hot of its index) for A, and for B the same shifted by
    ``shift`` cells: B's cell j carries A's cell j + shift, an exact correlation."""
    n = cells
    eye = torch.eye(n * n).reshape(n * n, n, n)
    dx, dy = shift
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    index = ((ys + dy).clamp(0, n - 1) * n + (xs + dx).clamp(0, n - 1)).flatten()
    return eye[None], eye.flatten(1)[index].T.reshape(n * n, n, n)[None]


@pytest.mark.parametrize("subcell", ["mean", "parabola"])
def test_the_window_finds_a_shift_of_whole_cells(subcell):
    net = DenseMatcher(radius=3)
    with torch.no_grad():
        net.log_temperature.fill_(np.log(0.01))  # a sharp distribution
        offsets, peak = net.match(*_one_hot(8, (2, -1)), subcell=subcell)
    inner = (slice(1, 7), slice(2, 6))  # cells whose match lies inside A, away from the clamp
    torch.testing.assert_close(offsets[0, 0][inner], torch.full((6, 4), 2.0))
    torch.testing.assert_close(offsets[0, 1][inner], torch.full((6, 4), -1.0))
    assert (peak[0][inner] > 0.99).all()
    with pytest.raises(ValueError, match="subcell must be 'parabola' or 'mean', got 'max'"):
        net.match(*_one_hot(8, (0, 0)), subcell="max")


@pytest.mark.parametrize("size", [(48, 64), (37, 53), (8, 8)])
def test_the_inference_correlation_is_the_training_one(size):
    """Over blocks of rows (inference) the correlation is the one training differentiates
    through, to float32 rounding, on maps whose height is no multiple of the block (and a
    single short block)."""
    torch.manual_seed(0)
    net = DenseMatcher(channels=(8, 16), dim=16, radius=3)
    f_a, f_b = torch.nn.functional.normalize(torch.randn(2, 2, 16, *size), dim=2).unbind(0)
    with torch.no_grad():
        fast = net.window_logits(f_a, f_b)
    slow = net.window_logits(f_a.clone().requires_grad_(True), f_b)
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-5)  # (float32 rounding)


def test_the_parabola_finds_the_vertex_of_quadratic_logits():
    """Logits ``-(dx - 0.3)² - (dy + 1.2)²`` over a 5×5 window: the vertex, (0.3, -1.2) cells;
    a peak on the window's edge keeps its whole cell."""
    d = torch.arange(-2.0, 3.0)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    inside = -((dx - 0.3) ** 2) - (dy + 1.2) ** 2
    edge = -((dx - 2.4) ** 2) - dy**2  # most likely cell: dx = 2, on the edge
    logits = torch.stack([inside, edge]).reshape(2, 25, 1, 1)
    out = parabola_offsets(logits, 2)[:, :, 0, 0]
    torch.testing.assert_close(out[0], torch.tensor([0.3, -1.2]))
    torch.testing.assert_close(out[1], torch.tensor([2.0, 0.0]))


def test_a_training_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.interpolate(
        torch.rand(4, 1, 16, 16, generator=gen), size=(64, 64), mode="bicubic"
    ).clamp(0, 1)
    b = torch.roll(a, shifts=(-3, 5), dims=(2, 3))  # B(x) = A(x + (-5, 3)): wrap-around aside
    shift = np.array([[1.0, 0, -5], [0, 1, 3], [0, 0, 1]])
    target = targets(np.repeat(shift[None], 4, 0), 16, 4)
    net = DenseMatcher(channels=(8, 16), dim=16, radius=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first, _ = dense_match_loss(net, a, b, target)
    for _ in range(30):
        loss, _ = dense_match_loss(net, a, b, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first.item()


def test_a_network_only_file_loads_as_the_network_it_holds(tmp_path):
    net = DenseMatcher(channels=(8, 16), dim=16)
    path = save_net(net, CONFIG, tmp_path / "d.pt", "mine")
    ckpt = read_checkpoint(path)
    assert ckpt.name == "mine" and set(ckpt.config) == {"name", "net"}
    loaded = load_net(path)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    with pytest.raises(ValueError, match=r"holds a network only .* load it with .*load_net"):
        load_module(path)
    with pytest.raises(ValueError, match="only 'name' and 'net'"):
        save_net(net, CONFIG, tmp_path / "e.pt", {"not": "a name"})  # type: ignore[arg-type]


def test_the_shipped_dense_matcher_is_no_method_of_its_own(tmp_path, capsys):
    """``dense-matcher`` is a part of ``wide``: it loads as a network, and naming it where an
    estimator is expected (``hdreg align``, evaluation, ONNX export) says what it is."""
    assert isinstance(load_net("dense-matcher"), DenseMatcher)
    with pytest.raises(ValueError, match="a part of a whole-image estimator"):
        load_checkpoint_estimator("dense-matcher", device="cpu")
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    code = hdreg_main(["align", str(image), str(image), "--checkpoint", "dense-matcher",
                       "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "a part of a whole-image estimator" in capsys.readouterr().err
    assert hdreg_main(["weights"]) == 0
    assert "dense-matcher (a part of wide, not a method of its own):" in capsys.readouterr().out


def test_training_writes_a_file_that_loads(tmp_path, capsys):
    out = tmp_path / "w" / "dense.pt"
    train_main([str(out), "--minutes", "0.01", "--batch", "2", "--threads", "1"])
    assert "saved" in capsys.readouterr().out
    assert isinstance(load_net(out), DenseMatcher)
    with pytest.raises(SystemExit):
        train_main([str(out), "--minutes", "0"])
    assert "--minutes must be > 0" in capsys.readouterr().err
