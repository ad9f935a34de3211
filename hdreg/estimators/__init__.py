"""Every homography estimator behind one interface, and the one registry of their names.

- :mod:`~hdreg.estimators.base`: the contract (:class:`Estimator`, :class:`Estimate`) and the
  identity;
- :mod:`~hdreg.estimators.features` and :mod:`~hdreg.estimators.ecc`: classical methods
  (keypoints + robust fitting, and intensity-based ECC);
- :mod:`~hdreg.estimators.learned`: a trained network as an estimator;
- :mod:`~hdreg.estimators.refinement`: ``<method>+ecc`` on top of any estimator;
- :mod:`~hdreg.estimators.downsize`: any estimator on downsized copies of large images
  (``max_side``);
- :mod:`~hdreg.estimators.registry`: method names (``hdreg/configs/method/``) and specs
  (``sift+ecc``, ``iterative+ecc``) → estimators.

All return ``H_a_from_b`` (maps pixel coordinates of B into A; docs/conventions.md).
"""

from hdreg.estimators.base import (
    Estimate,
    Estimator,
    IdentityEstimator,
    PairResult,
    PairwiseEstimator,
    reportable,
)
from hdreg.estimators.ecc import ECCEstimator
from hdreg.estimators.features import FeatureEstimator

__all__ = [
    "ECCEstimator",
    "Estimate",
    "Estimator",
    "FeatureEstimator",
    "IdentityEstimator",
    "PairResult",
    "PairwiseEstimator",
    "reportable",
]
