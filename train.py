"""Train a homography network on synthetic pairs (Lightning + Hydra).

    python train.py                                  # experiment=cpu_quick on the sample photos
    python train.py experiment=detone2016 data=coco data.source=/path/to/coco
    python train.py model=homographynet_classification trainer.max_steps=2000
    python train.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt   # resume

Each run writes checkpoints/, tensorboard/ and test/ (the test-split table) into its run
directory (``hydra.run.dir=...`` chooses it; one that holds an earlier run is refused, except to
resume that run from its own checkpoints/last.ckpt). The same as ``hdreg train``.
Configuration: hdreg/configs/train.yaml.
"""

from hdreg.apps.train import main

if __name__ == "__main__":
    main()
