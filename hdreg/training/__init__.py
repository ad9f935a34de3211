"""Training support: the job behind ``train.py`` / ``hdreg train`` (:mod:`~hdreg.training.job`),
its callbacks, atomic checkpointing and learning-rate schedules."""
