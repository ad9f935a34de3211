"""A classical method to interrupt (``evaluate.py 'methods=[slow]'
+method_params.slow._target_=tests.slow_estimator.SlowIdentity ...``): the identity, whose first
pair (in whichever process) creates the file ``marker`` and takes ``seconds``; the others are
quick, so that the other worker processes are idle by then."""

from __future__ import annotations

import os
import time

import numpy as np

from hdreg.estimators import IdentityEstimator


class SlowIdentity(IdentityEstimator):
    name = "slow"

    def __init__(self, seconds: float, marker: str) -> None:
        self.seconds = float(seconds)
        self.marker = str(marker)

    def estimate_pair(self, image_a: np.ndarray, image_b: np.ndarray):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # not the first pair
        else:
            time.sleep(self.seconds)
        return super().estimate_pair(image_a, image_b)
