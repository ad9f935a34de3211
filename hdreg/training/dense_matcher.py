"""Training of the dense matcher of ``wide``'s refinement levels
(:class:`hdreg.models.dense_matcher.DenseMatcher`)::

    python -m hdreg.training.dense_matcher hdreg/weights/dense_matcher.pt --minutes 65

**The pairs.** DeTone's generator (a 128×128 patch of a photo and its perturbed copy, corners
moved by up to ``rho``), scikit-image's bundled photos at 480×360 flipped at random, photometric
jitter on each view, and each view blurred by a Gaussian of up to ``blur`` pixels and noised by
up to ``noise`` gray levels: the residual motion, resampling and photometric change of a
refinement level, where the warped A is already within a few pixels of B.

**The loop.** AdamW, the learning rate decayed by a cosine over the time budget (not a step
count: the budget is what a CPU run is sized by), the loss
:func:`~hdreg.models.dense_matcher.dense_match_loss`; every 200 steps (or 5 minutes) the loss on
64 held-out pairs is printed and the weights are written (atomically, as a network-only file
that :func:`~hdreg.models.checkpoint.load_net` reads), so a run cut short leaves its last state.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from hdreg.data.decoding import load_images
from hdreg.data.sources import all_sample_source
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter, generate_pair
from hdreg.geometry_np import four_point_homography, project
from hdreg.models.checkpoint import save_net
from hdreg.models.dense_matcher import DenseMatcher, dense_match_loss

__all__ = ["pair_batch", "targets", "train"]


def pair_batch(images: np.ndarray, protocol: DeToneProtocol, rng: np.random.Generator, n: int,
               blur: float, noise: float) -> tuple[Tensor, Tensor, np.ndarray]:  # fmt: skip
    """``n`` pairs: patches A and B ``(n, 1, P, P)`` in [0, 1] and each ``H_pa_from_pb``
    (patch B's pixels → patch A's)."""
    pa, pb, Hs = [], [], []
    for _ in range(n):
        image = images[rng.integers(len(images))]
        flip = int(rng.integers(4))
        if flip:
            image = np.ascontiguousarray(image[:: -1 if flip & 2 else 1, :: -1 if flip & 1 else 1])
        pair = generate_pair(image, protocol, rng)
        local = pair["corners"] - pair["corners"][0]
        Hs.append(four_point_homography(local, local + pair["offsets"]))
        views = []
        for view in (pair["patch_a"], pair["patch_b"]):
            sigma = rng.uniform(0, blur)
            out = cv2.GaussianBlur(view, (0, 0), sigma) if sigma > 0.3 else view
            out = out.astype(np.float32) + rng.normal(0, rng.uniform(0, noise), out.shape)
            views.append(np.clip(out, 0, 255) / 255.0)
        pa.append(views[0])
        pb.append(views[1])
    tensor = lambda v: torch.from_numpy(np.stack(v)).float()[:, None]  # noqa: E731
    return tensor(pa), tensor(pb), np.stack(Hs)


def targets(Hs: np.ndarray, cells: int, stride: int) -> Tensor:
    """``(N, 2, h, w)``: where each cell centre of B lies in A (``Hs``: ``H_a_from_b`` per pair),
    in cells relative to itself."""
    j = np.arange(cells, dtype=np.float64)
    xs, ys = np.meshgrid(j, j)
    # cell j's receptive field is centred on pixel stride·j (each halving: a convolution of odd
    # size, padded by half its size, with stride 2)
    centres = np.stack([xs, ys], -1).reshape(-1, 2) * stride  # pixels of B
    out = [((project(H, centres) - centres) / stride).reshape(cells, cells, 2) for H in Hs]
    return torch.from_numpy(np.stack(out)).float().permute(0, 3, 1, 2)


def train(out: Path, minutes: float, batch: int = 24, rho: float = 8.0, blur: float = 1.2,
          noise: float = 3.0, seed: int = 0, lr: float = 2e-3) -> DenseMatcher:  # fmt: skip
    """Train a :class:`DenseMatcher` for ``minutes`` (see the module docstring), writing it to
    ``out`` as it goes; returns it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = load_images(all_sample_source(), (480, 360)).images
    protocol = DeToneProtocol((480, 360), 128, rho, PhotometricJitter())
    net = DenseMatcher()
    config = {"_target_": "hdreg.models.dense_matcher.DenseMatcher", "channels": [16, 48],
              "dim": 48, "radius": 3}  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    cells = 128 // net.stride
    val = pair_batch(images, protocol, np.random.default_rng(seed + 1), 64, blur, noise)
    val_target = targets(val[2], cells, net.stride)
    t0, step, last_save, budget = time.time(), 0, time.time(), minutes * 60
    while time.time() - t0 < budget:
        a, b, Hs = pair_batch(images, protocol, rng, batch, blur, noise)
        progress = (time.time() - t0) / budget
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        loss, _ = dense_match_loss(net, a, b, targets(Hs, cells, net.stride))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0 or time.time() - last_save > 300:
            with torch.no_grad():
                val_loss, val_dist = dense_match_loss(net, val[0], val[1], val_target)
            print(f"step {step} {time.time() - t0:.0f} s loss {loss.item():.3f} val loss "
                  f"{val_loss.item():.3f} val error {val_dist.item() * net.stride:.3f} px "
                  f"temperature {net.log_temperature.exp().item():.4f}", flush=True)  # fmt: skip
            save_net(net, config, out, "dense-matcher")
            last_save = time.time()
    save_net(net, config, out, "dense-matcher")
    print(f"saved {out} after {step} steps", flush=True)
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("::", "."))
    parser.add_argument("out", type=Path, help="the weights file to write")
    parser.add_argument("--minutes", type=float, default=65.0, help="the training budget")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--rho", type=float, default=8.0, help="corner perturbation (pixels)")
    parser.add_argument("--blur", type=float, default=1.2, help="largest blur sigma (pixels)")
    parser.add_argument("--noise", type=float, default=3.0, help="largest noise (gray levels)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.batch < 1:
        parser.error(f"--minutes must be > 0 and --batch >= 1, got {args.minutes}, {args.batch}")
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train(args.out, args.minutes, args.batch, args.rho, args.blur, args.noise, args.seed, args.lr)


if __name__ == "__main__":
    main()
