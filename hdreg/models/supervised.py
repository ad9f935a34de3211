"""Supervised training on the four-point labels (DeTone et al. 2016 and any network like it)."""

from __future__ import annotations

from hdreg.models.base import HomographyModule

__all__ = ["SupervisedHomography"]


class SupervisedHomography(HomographyModule):
    """A network trained on the labels: its loss sees the whole batch, ``offsets`` included.

    The network and the loss come from the config (``hdreg/configs/model/*.yaml``), e.g.
    HomographyNet's regression head with :class:`~hdreg.models.losses.OffsetMSE` or its
    classification head with :class:`~hdreg.models.losses.BinCrossEntropy`; arguments as
    :class:`~hdreg.models.base.HomographyModule`.
    """
