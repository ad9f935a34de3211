"""Features trained for dense sub-pixel matching, for a refinement level without windows.

``wide``'s refinement levels run the iterative network on 25 windows per level, about 0.2 s per
level on two CPU cores; one pass of a small encoder over both whole images, each cell of B
correlated with the cells around it in the warped A, would take a fraction of that, but the
iterative network's own features, used so, lose accuracy (``--variant dense``, docs/methods.md):
they were trained for its lookups, not for finding a match. This script trains an encoder for
exactly that and measures it:

    python bench/dense_features.py train bench/dense_features.pt --minutes 65
    python bench/wide_settings.py <pairs> "final_passes=4" --variant dense-trained --limit 100
    python bench/wide_settings.py <pairs> "dense_sides=(256,512)" --variant dense-trained
    python bench/wide_settings.py <pairs> "subcell='parabola',final_passes=4" \\
        --variant dense-trained --limit 100

**What is trained.** :class:`DenseFeatures`: a fully convolutional encoder, features at a
quarter of the input (stride 4), L2-normalised. For every cell ``j`` of B, its features are
correlated with those of A's cells ``j + d`` for ``d`` in a ``(2r+1)²`` window of whole cells
(``r = radius``), a softmax at a learned temperature gives a distribution over the window, and
its mean is the match: ``j + Σ p(d)·d``, sub-cell. The loss, over the cells of B whose true
position in A lies inside the window: the cross-entropy against the true position's bilinear
weights on its four nearest cells (a peak where the match is) plus the L1 distance between the
mean and the true position (in cells).

**The pairs.** DeTone's generator (a 128×128 patch of a photo and its perturbed copy, corners
moved by up to ``rho``), scikit-image's bundled photos at 480×360 flipped at random, photometric
jitter on each view, and each view blurred by a Gaussian of up to ``blur`` pixels and noised by
up to ``noise`` gray levels: the residual motion, resampling and photometric change of a
refinement level, where the warped A is already within a few pixels of B.

**How it is used** (``dense-trained`` in ``bench/refinement_variants.py``): at every refinement
level, both whole images through the encoder, the match of every cell of B, and RANSAC over the
cells whose distribution peaks (its largest probability over ``min_peak``) and that the warped A
covers, in place of the windows. The distribution's mean is biased towards whole cells; read by a
parabola through the logits around the likeliest cell (``subcell="parabola"``) the match is
nearly unbiased, and the dense levels beat the windows on robustness and precision
(docs/methods.md).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.data.decoding import load_images
from hdreg.data.sources import all_sample_source
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter, generate_pair
from hdreg.geometry_np import project
from hdreg.models.homographynet import standardize


def _block(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2),
        nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
    ]


class DenseFeatures(nn.Module):
    """Stride-4 features for local matching (see the module docstring).

    Args:
        channels: channels after the first and the second halving.
        dim: feature dimension.
        radius: the window of cells a cell of B is matched in, ``(2r+1)²``.
    """

    stride = 4

    def __init__(self, channels: tuple[int, int] = (16, 48), dim: int = 48, radius: int = 3):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            *_block(1, c1, 2, 5), *_block(c1, c1), *_block(c1, c2, 2), *_block(c2, c2),
            *_block(c2, c2),
        )  # fmt: skip
        self.proj = nn.Conv2d(c2, dim, 1)
        self.radius = radius
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))
        self.config = {"channels": list(channels), "dim": dim, "radius": radius}

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, H, W)`` in [0, 1] → ``(N, dim, H/4, W/4)``, unit length per cell."""
        return F.normalize(self.proj(self.body(standardize(x))), dim=1)

    def window_logits(self, f_a: Tensor, f_b: Tensor) -> Tensor:
        """``(N, (2r+1)², h, w)``: the correlation of each cell of B with A's cells around the
        same position (zero padding outside A), over the temperature."""
        r = self.radius
        k = 2 * r + 1
        h, w = f_b.shape[-2:]
        padded = F.pad(f_a, (r, r, r, r))
        corr = torch.stack(
            [(f_b * padded[:, :, dy : dy + h, dx : dx + w]).sum(1) for dy in range(k)
             for dx in range(k)], dim=1,
        )  # fmt: skip
        return corr / self.log_temperature.exp()

    def offsets(self) -> Tensor:
        """``((2r+1)², 2)`` the window's cell offsets ``(dx, dy)``, in the logits' order."""
        d = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        return torch.stack([dx.flatten(), dy.flatten()], dim=1)

    def match(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """For every cell of B: where it lies in A, in cells relative to itself ``(N, 2, h, w)``
        (the distribution's mean) and the distribution's peak ``(N, h, w)``."""
        return self.match_features(self(a), self(b))

    def match_features(
        self, f_a: Tensor, f_b: Tensor, subcell: str = "mean"
    ) -> tuple[Tensor, Tensor]:
        """:meth:`match` from the features of A and B. ``subcell="parabola"``: the match is
        the most likely cell moved by the vertex of a parabola through its logit and its two
        neighbours' on each axis (0 where the peak is on the window's edge or not curved),
        instead of the distribution's mean."""
        logits = self.window_logits(f_a, f_b)
        if subcell == "parabola":
            return _parabola_offsets(logits, self.radius), logits.softmax(dim=1).amax(dim=1)
        if subcell != "mean":
            raise ValueError(f"subcell must be 'mean' or 'parabola', got {subcell!r}")
        prob = logits.softmax(dim=1)
        mean = torch.einsum("nkhw,kc->nchw", prob, self.offsets().to(prob))
        return mean, prob.amax(dim=1)


def _vertex(before: Tensor, peak: Tensor, after: Tensor) -> Tensor:
    curvature = before - 2 * peak + after
    curved = curvature < -1e-6
    return torch.where(curved, 0.5 * (before - after) / torch.where(curved, curvature, -1.0), 0.0)


def _parabola_offsets(logits: Tensor, radius: int) -> Tensor:
    """``(N, 2, h, w)``: the most likely window cell of ``logits (N, (2r+1)², h, w)`` plus the
    vertex of the parabola through its neighbours on each axis (see ``match_features``)."""
    k = 2 * radius + 1
    best = logits.argmax(dim=1)
    by, bx = best // k, best % k
    inner = (bx > 0) & (bx < k - 1) & (by > 0) & (by < k - 1)
    cy, cx = by.clamp(1, k - 2), bx.clamp(1, k - 2)

    def at(dy: int, dx: int) -> Tensor:
        return logits.gather(1, ((cy + dy) * k + (cx + dx))[:, None])[:, 0]

    peak = at(0, 0)
    dx = torch.where(inner, _vertex(at(0, -1), peak, at(0, 1)), 0.0)
    dy = torch.where(inner, _vertex(at(-1, 0), peak, at(1, 0)), 0.0)
    return torch.stack([bx - radius + dx, by - radius + dy], dim=1).float()


def _pair_batch(images: np.ndarray, protocol: DeToneProtocol, rng: np.random.Generator, n: int,
                blur: float, noise: float) -> tuple[Tensor, Tensor, np.ndarray]:  # fmt: skip
    """``n`` pairs: patches A and B ``(n, 1, P, P)`` in [0, 1] and each ``H_pa_from_pb``."""
    pa, pb, Hs = [], [], []
    for _ in range(n):
        image = images[rng.integers(len(images))]
        flip = int(rng.integers(4))
        if flip:
            image = np.ascontiguousarray(image[:: -1 if flip & 2 else 1, :: -1 if flip & 1 else 1])
        pair = generate_pair(image, protocol, rng)
        corners, offsets = pair["corners"].astype(np.float64), pair["offsets"]
        local = corners - corners[0]
        H = cv2.getPerspectiveTransform(local.astype(np.float32), (corners + offsets - corners[0])
                                        .astype(np.float32))  # fmt: skip
        views = []
        for view in (pair["patch_a"], pair["patch_b"]):
            sigma = rng.uniform(0, blur)
            out = cv2.GaussianBlur(view, (0, 0), sigma) if sigma > 0.3 else view
            out = out.astype(np.float32) + rng.normal(0, rng.uniform(0, noise), out.shape)
            views.append(np.clip(out, 0, 255) / 255.0)
        pa.append(views[0])
        pb.append(views[1])
        Hs.append(H)
    tensor = lambda v: torch.from_numpy(np.stack(v)).float()[:, None]  # noqa: E731
    return tensor(pa), tensor(pb), np.stack(Hs)


def _targets(Hs: np.ndarray, cells: int, stride: int) -> Tensor:
    """``(N, 2, h, w)``: where each cell centre of B lies in A, in cells relative to itself."""
    j = np.arange(cells, dtype=np.float64)
    xs, ys = np.meshgrid(j, j)
    # cell j's receptive field is centred on pixel stride·j (each halving: a convolution of odd
    # size, padded by half its size, with stride 2)
    centres = np.stack([xs, ys], -1).reshape(-1, 2) * stride  # pixels of B
    out = [((project(H, centres) - centres) / stride).reshape(cells, cells, 2) for H in Hs]
    return torch.from_numpy(np.stack(out)).float().permute(0, 3, 1, 2)


def loss_of(net: DenseFeatures, a: Tensor, b: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The loss (module docstring) and the mean error of the match in cells, over the cells
    whose true position lies inside the window and inside A."""
    logits = net.window_logits(net(a), net(b))  # (N, K, h, w)
    h, w = logits.shape[-2:]
    r, k = net.radius, 2 * net.radius + 1
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")[::-1])
    true_cell = grid[None].float() + target  # absolute position in A's cells
    inside = (true_cell >= 0).all(1) & (true_cell[:, 0] <= w - 1) & (true_cell[:, 1] <= h - 1)
    inside &= (target.abs() <= r - 1e-3).all(1)
    # bilinear weights of the true offset on its four nearest window cells
    lo = target.floor().clamp(-r, r - 1)
    frac = target - lo
    soft = torch.zeros_like(logits)
    for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        wx = frac[:, 0] if ox else 1 - frac[:, 0]
        wy = frac[:, 1] if oy else 1 - frac[:, 1]
        index = (lo[:, 1] + oy + r) * k + (lo[:, 0] + ox + r)
        soft.scatter_add_(1, index.long()[:, None], (wx * wy)[:, None])
    logp = logits.log_softmax(dim=1)
    ce = -(soft * logp).sum(1)
    mean = torch.einsum("nkhw,kc->nchw", logp.exp(), net.offsets())
    error = (mean - target).abs().sum(1)
    keep = inside.float()
    count = keep.sum().clamp_min(1.0)
    loss = ((ce + error) * keep).sum() / count
    distance = ((mean - target).norm(dim=1) * keep).sum() / count
    return loss, distance


def train(out: Path, minutes: float, batch: int, rho: float, blur: float, noise: float,
          seed: int, lr: float) -> None:  # fmt: skip
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = load_images(all_sample_source(), (480, 360)).images
    protocol = DeToneProtocol((480, 360), 128, rho, PhotometricJitter())
    net = DenseFeatures()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    cells = 128 // net.stride
    t0, step, last_save = time.time(), 0, time.time()
    val_rng = np.random.default_rng(seed + 1)
    val = _pair_batch(images, protocol, val_rng, 64, blur, noise)
    val_target = _targets(val[2], cells, net.stride)
    budget = minutes * 60
    while time.time() - t0 < budget:
        a, b, Hs = _pair_batch(images, protocol, rng, batch, blur, noise)
        progress = (time.time() - t0) / budget
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        loss, _ = loss_of(net, a, b, _targets(Hs, cells, net.stride))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0 or time.time() - last_save > 300:
            with torch.no_grad():
                val_loss, val_dist = loss_of(net, val[0], val[1], val_target)
            print(f"step {step} {time.time() - t0:.0f} s loss {loss.item():.3f} val loss "
                  f"{val_loss.item():.3f} val error {val_dist.item() * net.stride:.3f} px "
                  f"temperature {net.log_temperature.exp().item():.4f}", flush=True)  # fmt: skip
            torch.save({"config": net.config, "state_dict": net.state_dict(), "step": step}, out)
            last_save = time.time()
    torch.save({"config": net.config, "state_dict": net.state_dict(), "step": step}, out)
    print(f"saved {out} after {step} steps", flush=True)


def load(path: str | Path) -> DenseFeatures:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = saved["config"]
    net = DenseFeatures(tuple(config["channels"]), config["dim"], config["radius"])
    net.load_state_dict(saved["state_dict"])
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--minutes", type=float, default=65.0)
    t.add_argument("--batch", type=int, default=24)
    t.add_argument("--rho", type=float, default=8.0)
    t.add_argument("--blur", type=float, default=1.2)
    t.add_argument("--noise", type=float, default=3.0)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train(args.out, args.minutes, args.batch, args.rho, args.blur, args.noise, args.seed, args.lr)


if __name__ == "__main__":
    main()
