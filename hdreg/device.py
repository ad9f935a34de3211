"""Where a network runs: the user's ``device`` option checked and resolved.

``auto`` means CUDA when it is available, else the CPU. :func:`check_device` accepts the common
names without importing torch (``hdreg align --method sift`` needs none).

>>> check_device("cuda:1")
>>> str(resolve_device("cpu"))
'cpu'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["check_device", "resolve_device"]


def check_device(device: object, option: str = "device") -> None:
    """``ValueError`` naming ``option`` unless ``device`` is ``auto`` or a torch device
    (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if str(device) == "auto" or re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", str(device)):
        return  # the common names, without importing torch (hdreg align --method sift needs none)
    import torch  # here, not at the top: a classical method's start-up never loads torch

    if isinstance(device, torch.device):
        return
    try:
        torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"{option} {device!r} is not a device: expected auto, cpu, cuda or cuda:<index>"
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for ``device`` (``auto``: CUDA when available, else the CPU);
    ``ValueError`` for a name that is no device, or for CUDA on a machine without it."""
    import torch  # here, not at the top: the module stays light for check_device

    check_device(device)
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device
