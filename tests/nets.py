"""Networks that only tests build (through the real configs: ``model.net._target_=tests.nets.X``)."""

from __future__ import annotations

from torch import Tensor

from hdreg.geometry import patch_corners
from hdreg.models.homographynet import HomographyNet


class CollapsingWhileTraining(HomographyNet):
    """HomographyNet whose training predictions send all four corners of patch B to its centre:
    a degenerate quadrilateral on every pair (the loss must mask them all). Still a function of
    the weights, so that every parameter gets a (zero) gradient. Evaluation is unchanged."""

    def forward(self, patch_a: Tensor, patch_b: Tensor) -> dict[str, Tensor]:
        out = super().forward(patch_a, patch_b)
        if not self.training:
            return out
        p = self.patch_size
        corners = patch_corners(out["offsets"].new_zeros(out["offsets"].shape[0], 2), p)
        return {"offsets": out["offsets"] * 0 + ((p - 1) / 2 - corners)}
