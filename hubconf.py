"""torch.hub entry points: one per model shipped in ``hdreg/weights`` (its ``index.json``).

From a clone, offline::

    import torch
    net = torch.hub.load("/path/to/hdreg", "iterative", source="local")
    offsets = net(patch_a, patch_b)["offsets"]  # (B, 1, 128, 128) in [0, 1] -> (B, 4, 2)

Each entry returns the network (a plain ``nn.Module``) in eval mode with its trained weights;
its docstring says how it was trained (``hdreg weights`` lists the same models). The offsets
are where patch B's corners lie in patch A minus the corners, in pixels:
``H_a_from_b = hdreg.geometry.four_point_to_homography(corners, corners + offsets)``.
"""

from __future__ import annotations

from collections.abc import Callable as _Callable

from torch import nn as _nn

import hdreg.weights as _weights

# modules torch.hub checks before loading (what rebuilding a network imports)
dependencies = ["torch", "numpy"]


def _entry(name: str) -> _Callable[..., _nn.Module]:
    """The hub entry point of shipped model ``name``."""

    def load(pretrained: bool = True, device: str = "cpu") -> _nn.Module:
        from hdreg.models.checkpoint import build_net, load_net, read_checkpoint

        if pretrained:
            return load_net(name, device=device).eval()
        return build_net(read_checkpoint(name).config).to(device).eval()

    entry = _weights.shipped(name)
    load.__name__ = load.__qualname__ = name
    load.__doc__ = (
        f"{entry.description}.\n\n"
        f"Trained: {entry.command}\nData: {entry.data}\n\n"
        "Args:\n"
        "    pretrained: load the shipped weights (False: the same architecture, untrained).\n"
        "    device: where the network lives (cpu, cuda).\n\n"
        "Returns:\n"
        "    The network in eval mode: ``net(patch_a, patch_b)`` with ``(B, 1, P, P)`` float32\n"
        "    patches in [0, 1] returns a dict whose ``offsets (B, 4, 2)`` are where patch B's\n"
        "    corners lie in patch A, minus the corners, in pixels.\n"
    )
    return load


# (a network that is only a part of another model, as wide's dense matcher, has no entry)
globals().update({n: _entry(n) for n, w in _weights.shipped_weights().items() if not w.part_of})
