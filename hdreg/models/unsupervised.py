"""Unsupervised deep homography (Nguyen et al. 2018, "Unsupervised Deep Homography: A Fast and
Robust Homography Estimation Model", RA-L): no labels, only photometric alignment.

Forward model, per pair (``H_a_from_b`` maps pixels of B into A, docs/conventions.md)::

    offsets  = HomographyNet(patch A, patch B)                 # four-point, patch frame
    H_a_from_b = TensorDLT(corners, corners + offsets)         # full-image pixel coordinates
    B̂(p) = A(H_a_from_b · p)  for p on patch B's pixel grid   # spatial transformer, full image A
    loss  = mean |B̂ − B| over the pixels whose sample lies inside A

The spatial transformer samples the *full* 320×240 image A (as the official implementation
does), so content from outside patch A fills the window: the loss is
:class:`~hdreg.models.losses.PhotometricL1`. The ground-truth offsets never enter the loss;
validation and test use them only to score (``val/mace``).
"""

from __future__ import annotations

from torch import Tensor

from hdreg.models.base import HomographyModule

__all__ = ["UnsupervisedHomography"]


class UnsupervisedHomography(HomographyModule):
    """A network trained without labels: the loss sees the batch without ``offsets``, so no
    loss can use them by mistake. Arguments as :class:`~hdreg.models.base.HomographyModule`."""

    def loss_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in batch.items() if k != "offsets"}
