"""Classical homography estimators: keypoint matching with robust fitting, and ECC; and the
hybrid that refines any estimator's answers with ECC.

All answer through :class:`hdreg.estimators.Estimator` and return ``H_a_from_b`` (maps pixel
coordinates of B into A).
"""

from hdreg.baselines.ecc import ECCEstimator
from hdreg.baselines.features import FeatureEstimator
from hdreg.baselines.refine import RefinedEstimator
from hdreg.estimators import IdentityEstimator

__all__ = ["ECCEstimator", "FeatureEstimator", "IdentityEstimator", "RefinedEstimator"]
