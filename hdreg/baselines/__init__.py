"""Classical homography estimators: keypoint matching with robust fitting, and ECC.

All answer through :class:`hdreg.estimators.Estimator` and return ``H_a_from_b`` (maps pixel
coordinates of B into A). Refining any estimator's answers (``sift+ecc``) is
:mod:`hdreg.refinement`'s job.
"""

from hdreg.baselines.ecc import ECCEstimator
from hdreg.baselines.features import FeatureEstimator
from hdreg.estimators import IdentityEstimator

__all__ = ["ECCEstimator", "FeatureEstimator", "IdentityEstimator"]
