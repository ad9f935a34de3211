"""Score homography estimators on the same pairs: one corner-error table for every method.

    python evaluate.py benchmark=synthetic benchmark.path=data/benchmarks/photos_1000.npz \\
        'methods=[identity,sift,orb,akaze,brisk,ecc]'
    python evaluate.py benchmark=pairs benchmark.root=data/oxford-affine 'methods=[identity,sift]'
    python evaluate.py ... 'checkpoints=[outputs/train/.../checkpoints/best.ckpt]'

Writes results.md, results.csv, pairs.csv, results.json and corner_error_cdf.png into the run
directory (``hydra.run.dir=...`` chooses it; one that holds an earlier evaluation's results is
refused unless ``overwrite=true``). The same as ``hdreg evaluate``.
Configuration: hdreg/configs/evaluate.yaml.
"""

from hdreg.apps.evaluate import main

if __name__ == "__main__":
    main()
