"""The applications: the ``hdreg`` command (:mod:`~hdreg.apps.cli`), ``hdreg align``
(:mod:`~hdreg.apps.align`), and the evaluation and training jobs behind ``evaluate.py`` /
``train.py`` (:mod:`~hdreg.apps.evaluate`, :mod:`~hdreg.apps.train`)."""
