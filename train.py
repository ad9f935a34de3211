"""Train a homography network on synthetic pairs (Lightning + Hydra).

    python train.py                                  # experiment=cpu_quick on the sample photos
    python train.py experiment=detone2016 data=coco data.source=/path/to/coco
    python train.py model=homographynet_classification trainer.max_steps=2000
    python train.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt   # resume

Each run writes checkpoints/, tensorboard/ and test/ (the test-split table) into its run
directory (``hydra.run.dir=...`` chooses it). Configuration: configs/train.yaml.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hdreg.errors import user_errors
from hdreg.training import train_from_config


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors("train.py"):  # one line for bad input; HDREG_DEBUG=1 shows the traceback
        return train_from_config(cfg)


if __name__ == "__main__":
    main()
