from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N worker processes on N cores: each computes on one thread (its
    # subprocesses too). Two workers whose OpenMP thread pools each span every core spin against
    # each other: two training tests of 10 s each took 250 s side by side.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import cv2
import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # in case torch was imported before the variables above were set

REPO = Path(__file__).resolve().parents[1]
# Tests that need real downloaded data read it from the folder this variable names (`.ci/run`
# sets it when its data folder exists); without it they skip, saying how to get the data.
DATA_ENV = "HDREG_DATA"


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state: a failure reproduces, none is by chance."""
    torch.manual_seed(0)


def real_data_root() -> Path:
    """The folder named by ``HDREG_DATA``, or skip the test saying how to get real data."""
    how = f"get it with `hdreg data download oxford-affine --root data/` and set {DATA_ENV}=data"
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"needs real image pairs: {DATA_ENV} is not set; {how}")
    root = Path(value).expanduser()
    if not root.is_dir():
        pytest.skip(f"needs real image pairs: {DATA_ENV}={value} is not a folder; {how}")
    return root


def oxford_sequence(name: str) -> Path:
    """The Oxford affine sequence ``name`` (a folder holding ``img1.ppm`` and ``H1to2p``)
    anywhere under ``HDREG_DATA``, or skip the test saying how to get it."""
    root = real_data_root()
    found = sorted(p.parent for p in root.rglob("H1to2p") if p.parent.name == name)
    if not found:
        pytest.skip(
            f"needs the Oxford affine sequence {name!r}, not found under {DATA_ENV}={root}; get "
            "it with `hdreg data download oxford-affine --root data/` and set HDREG_DATA=data"
        )
    return found[0]


def textured_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Blurred noise plus a few shapes: texture that every keypoint detector finds."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.uint8), (0, 0), 2.0)
    for _ in range(25):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(4, 20))
        cv2.circle(img, (x, y), r, int(rng.integers(0, 256)), -1)
        cv2.rectangle(img, (x, y), (x + r, y + 2 * r), int(rng.integers(0, 256)), 2)
    return img


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of small images in several formats, one nested, plus files that are not images."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), textured_image(seed=1))
    cv2.imwrite(
        str(root / "b.jpg"), cv2.cvtColor(textured_image(300, 400, seed=2), cv2.COLOR_GRAY2BGR)
    )
    cv2.imwrite(
        str(root / "sub" / "c.ppm"), cv2.cvtColor(textured_image(seed=3), cv2.COLOR_GRAY2BGR)
    )
    return root


def tiny_model_config(kind: str = "regression", **net) -> dict:
    """The config of a tiny model as ``hdreg/configs/model/`` composes it: ``kind`` is
    ``regression``, ``classification`` or ``unsupervised``."""
    head = "classification" if kind == "classification" else "regression"
    loss = {
        "regression": {"_target_": "hdreg.models.losses.OffsetMSE", "rho": 32.0},
        "classification": {
            "_target_": "hdreg.models.losses.BinCrossEntropy", "rho": 32.0, "num_bins": 21,
        },
        "unsupervised": {"_target_": "hdreg.models.losses.PhotometricL1", "rho": 32.0},
    }[kind]  # fmt: skip
    module = "unsupervised.UnsupervisedHomography" if kind == "unsupervised" else (
        "supervised.SupervisedHomography"
    )  # fmt: skip
    return {
        "_target_": f"hdreg.models.{module}",
        "name": kind,
        "net": {
            "_target_": "hdreg.models.homographynet.HomographyNet", "head": head,
            "width": 0.125, "input_size": 32, "rho": 32.0, "dropout": 0.0, **net,
        },
        "loss": loss,
    }  # fmt: skip


def tiny_module(kind: str = "regression", **net):
    from hdreg.models.base import build_module

    return build_module(tiny_model_config(kind, **net))


def pytest_sessionfinish(session, exitstatus):
    """Stop the warm interpreter that forks ``python train.py`` runs (tests/warm_python.py)."""
    from .warm_python import shutdown

    shutdown()
