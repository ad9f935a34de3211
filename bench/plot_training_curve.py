"""Plot a training run's ``val/mace`` (and ``train/mace``) from its TensorBoard log.

    python bench/plot_training_curve.py outputs/train/<run> --out docs/iterative_val_mace.png

Prints the validation points as JSON (step, val/mace) and writes the figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="run directory (with tensorboard/)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    if not (args.run / "tensorboard").is_dir():
        raise SystemExit(f"{args.run} has no tensorboard/ folder (a train.py run directory?)")
    val = scalars(args.run, "val/mace")
    if not val:
        raise SystemExit(f"no val/mace scalars in {args.run / 'tensorboard'}")
    train = scalars(args.run, "train/mace")
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    if train:
        k = max(1, len(train) // 40)  # a running mean keeps the noisy per-batch curve readable
        steps = [s for s, _ in train][k - 1 :]
        means = [sum(v for _, v in train[i - k + 1 : i + 1]) / k for i in range(k - 1, len(train))]
        ax.plot(steps, means, color="0.7", lw=1, label=f"train/mace (mean of {k} logs)")
    ax.plot(*zip(*val, strict=True), "o-", color="C0", label="val/mace")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("corner error (px)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(args.title or args.run.name)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(json.dumps({"val/mace": [[s, round(v, 3)] for s, v in val]}))


if __name__ == "__main__":
    main()
