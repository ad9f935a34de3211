"""torch.hub entry points of the repository (hubconf.py), loaded offline from the checkout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hdreg.models.checkpoint import load_net

ROOT = Path(__file__).resolve().parents[1]


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_load_iterative_from_checkout():
    net = torch.hub.load(str(ROOT), "iterative", source="local")
    assert type(net).__name__ == "IterativeHomographyNet" and not net.training
    assert _state_equal(net, load_net("iterative"))
    with torch.no_grad():
        out = net(torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128))
    assert out["offsets"].shape == (2, 4, 2)


def test_one_entry_per_indexed_model():
    index = json.loads((ROOT / "hdreg" / "weights" / "index.json").read_text())
    hub = torch.hub.load(str(ROOT), "homographynet", source="local")
    assert type(hub).__name__ == "HomographyNet" and not hub.training
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    for name, entry in index.items():
        if entry.get("part_of"):  # a part of another model (wide's dense matcher): no entry
            assert not hasattr(hubconf, name)
            continue
        load = getattr(hubconf, name)
        assert callable(load) and load.__name__ == name
        assert entry["description"] in load.__doc__
    assert "torch" in hubconf.dependencies


def test_untrained_architecture():
    net = torch.hub.load(str(ROOT), "homographynet", source="local", pretrained=False)
    trained = load_net("homographynet")
    assert type(net) is type(trained) and not net.training
    assert net.state_dict().keys() == trained.state_dict().keys()
    assert not _state_equal(net, trained)


def test_unknown_entry_is_an_error():
    with pytest.raises(RuntimeError, match="Cannot find callable no_such_model in hubconf"):
        torch.hub.load(str(ROOT), "no_such_model", source="local")
