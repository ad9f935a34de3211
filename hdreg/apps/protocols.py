"""The pair protocols with the defaults of ``hdreg/configs/protocol/`` (DeTone and wide pairs), for
the applications and for scripts that build pairs outside a Hydra job.

The library's protocol classes take every value as an argument; these read the values from the
configs (the one place of the defaults) and apply ``overrides``.

    >>> detone_protocol(rho=45).rho, wide_protocol(photometric=None).rotation
    (45.0, 45.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hdreg.config import compose_config
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter
from hdreg.data.synthetic.wide_protocol import WideProtocol

__all__ = ["detone_protocol", "wide_protocol"]


def detone_protocol(**overrides: Any) -> DeToneProtocol:
    """``hdreg/configs/protocol/detone.yaml`` with ``overrides`` (e.g. ``rho=45``; ``jitter`` as
    for :meth:`PhotometricJitter.from_spec`)."""
    cfg = compose_config("protocol/detone")
    values = {k: cfg[k] for k in ("image_size", "patch_size", "rho", "jitter")}
    values.update(overrides)
    return DeToneProtocol(
        tuple(int(v) for v in values["image_size"]),  # type: ignore[arg-type]
        int(values["patch_size"]),
        float(values["rho"]),
        PhotometricJitter.from_spec(values["jitter"]),
    )


def wide_protocol(**overrides: Any) -> WideProtocol:
    """``hdreg/configs/protocol/wide.yaml`` with ``overrides`` (``photometric=None`` turns the
    augmentation off; a mapping changes some of its parameters)."""
    from omegaconf import OmegaConf

    values: dict[str, Any] = OmegaConf.to_container(compose_config("protocol/wide"), resolve=True)  # type: ignore[assignment]
    photometric = overrides.get("photometric", values["photometric"])
    if isinstance(photometric, Mapping):
        unknown = sorted(set(photometric) - set(values["photometric"]))
        if not unknown:  # an unknown name is refused, naming it, by WidePhotometric
            photometric = {**values["photometric"], **photometric}
    return WideProtocol.from_mapping({**values, **overrides, "photometric": photometric})
