"""``hdreg train [overrides]`` (and ``train.py``): the Hydra application around the training
job (:func:`hdreg.training.job.train_from_config`), configured by ``hdreg/configs/train.yaml``."""

from __future__ import annotations

from omegaconf import DictConfig

from hdreg.apps.hydra_app import hydra_app

__all__ = ["main"]


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    """Train as the composed config says; returns the best ``val/mace`` (for sweeps)."""
    from hdreg.errors import program_name, user_errors
    from hdreg.training.job import train_from_config

    # one line for bad input; HDREG_DEBUG=1 shows the traceback
    with user_errors(program_name("train")):
        return train_from_config(cfg)
