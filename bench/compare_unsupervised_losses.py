"""The label-free losses of ``model=iterative_unsupervised`` side by side (docs/methods.md).

    python bench/compare_unsupervised_losses.py                       # train: tiny net, 300 steps
    python bench/compare_unsupervised_losses.py --net cpu --steps 200  # the experiment's network
    python bench/compare_unsupervised_losses.py --landscape            # loss vs corner error only
    python bench/compare_unsupervised_losses.py --transforms standardize \
        --overrides model.loss.full_image=false                      # warp patch A, not image A

Training: for each ``--transforms`` entry, ``experiment=iterative_unsupervised_cpu`` with
``model.loss.transform=<t>`` from the same seed, the same pairs and the same schedule, in this
process on one thread (``data.num_workers=0``, so the CPU seconds include pair generation);
prints ``val/mace`` (synthetic validation pairs of the sample photos) every ``--val-every``
steps, the CPU seconds, and a Markdown table.

Landscape (``--landscape``): on 32 validation-style pairs, each loss at the true offsets moved by
``r`` pixels per corner in a random direction, for r = 0 … 32: the mean loss divided by its
largest value, and the share of pairs whose loss still grows from one radius to the next (a loss
that stops growing gives a network no signal at that error).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.data.synthetic.detone import SyntheticPairs
from hdreg.models.base import HomographyModule, build_module
from hdreg.models.losses import TRANSFORMS, SequencePhotometric

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# One 32×32 scale (8×8 cells), 3 iterations: the tiny network of tests/test_iterative.py.
TINY = [
    "model.net.input_size=32", "model.net.channels=[16,32]", "model.net.width=32",
    "model.net.iterations=3", "model.net.fine_input_size=0", "model.net.fine_iterations=0",
]  # fmt: skip


class _Curve(pl.Callback):
    def __init__(self) -> None:
        self.points: list[tuple[int, float, float]] = []
        self.t0 = time.process_time()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if "val/mace" in trainer.callback_metrics:
            mace = float(trainer.callback_metrics["val/mace"])
            self.points.append((trainer.global_step, mace, time.process_time() - self.t0))
            print(f"  step {trainer.global_step}: val/mace {mace:.2f}", flush=True)


def train_one(transform: str, args: argparse.Namespace) -> dict:
    overrides = [
        "experiment=iterative_unsupervised_cpu", f"model.loss.transform={transform}",
        f"model.loss.window={args.window}", f"seed={args.seed}", "data.num_workers=0",
        f"data.val_pairs={args.val_pairs}", f"trainer.max_steps={args.steps}",
        *(TINY if args.net == "tiny" else []), *args.overrides,
    ]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose("train", overrides=overrides)
    pl.seed_everything(cfg.seed, workers=True)
    dm, module = instantiate(cfg.data), build_module(cfg.model)
    curve = _Curve()
    trainer = pl.Trainer(
        max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[curve],
        gradient_clip_val=cfg.trainer.gradient_clip_val, val_check_interval=args.val_every,
        check_val_every_n_epoch=None, default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return {
        "transform": transform,
        "steps": trainer.global_step,
        "cpu_s": round(time.process_time() - curve.t0, 1),
        "curve": curve.points,
        "command": " ".join(overrides),
    }


def landscape(args: argparse.Namespace) -> dict:
    images = load_images(sample_source()).images
    ds = SyntheticPairs(images, detone_protocol(), seed=3, length=32, with_full_image=True)
    b = HomographyModule.to_float(next(iter(DataLoader(ds, batch_size=32))))
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(32, 4, 2, generator=g), dim=-1)
    radii = [0, 1, 2, 4, 8, 16, 24, 32]
    out = {}
    for transform in args.transforms:
        loss = SequencePhotometric(32.0, transform=transform, window=args.window, stride=2)
        source_a = loss.apply_transform(b["image_a"])
        target_b = loss.apply_transform(b["patch_b"])[..., ::2, ::2]
        per = torch.stack(
            [
                loss.per_pair(
                    b["offsets"] + r * direction, source_a, target_b, b["corners"], b["top_left"],
                    128,
                )[0]
                for r in radii
            ]
        )  # (R, B)  # fmt: skip
        mean = per.mean(dim=1)
        out[transform] = {
            "relative_mean": [round(float(x), 3) for x in mean / mean.max()],
            "share_growing": [round(float(x), 2) for x in (per[1:] > per[:-1]).float().mean(1)],
        }
    return {"radii": radii, "losses": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=TRANSFORMS)
    parser.add_argument("--net", choices=["tiny", "cpu"], default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--val-pairs", type=int, default=128)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--landscape", action="store_true")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="more config overrides for every run, e.g. "
        "model.loss.full_image=false",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.landscape:
        print(json.dumps(landscape(args), indent=1))
        return
    rows = []
    for transform in args.transforms:
        print(f"{transform}:", flush=True)
        rows.append(train_one(transform, args))
    print(json.dumps(rows, indent=1))
    print("\n| transform | steps | CPU s | val/mace per check |\n|---|---|---|---|")
    for r in rows:
        curve = ", ".join(f"{m:.2f}" for _, m, _ in r["curve"])
        print(f"| {r['transform']} | {r['steps']} | {r['cpu_s']:.0f} | {curve} |")


if __name__ == "__main__":
    main()
