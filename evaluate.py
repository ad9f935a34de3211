"""Score homography estimators on the same pairs: one corner-error table for every method.

    python evaluate.py benchmark=synthetic benchmark.path=data/benchmarks/photos_1000.npz \\
        'methods=[identity,sift,orb,akaze,brisk,ecc]'
    python evaluate.py benchmark=pairs benchmark.root=data/oxford-affine 'methods=[identity,sift]'
    python evaluate.py ... 'checkpoints=[outputs/train/.../checkpoints/best.ckpt]'

Writes results.md, results.csv, pairs.csv, results.json and corner_error_cdf.png into the run
directory (``hydra.run.dir=...`` chooses it). Configuration: configs/evaluate.yaml.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hdreg.errors import user_errors
from hdreg.evaluation.app import evaluate_from_config


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    with user_errors("evaluate.py"):  # one line for bad input; HDREG_DEBUG=1 shows the traceback
        return evaluate_from_config(cfg)


if __name__ == "__main__":
    main()
