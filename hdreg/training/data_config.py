"""The typed settings of a DataModule (:class:`DataConfig`), from ``hdreg/configs/data/*.yaml``.

The YAML files hold every value (the protocol's in ``hdreg/configs/protocol/``); the flat keys
people override (``data.batch_size=16``, ``data.rho=45``, ``data.wide.rotation=30``) are grouped
here into the source, the pair protocol, the split and the loaders, and checked once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter
from hdreg.data.synthetic.wide_protocol import WideProtocol

__all__ = ["PAIR_KINDS", "DataConfig", "LoaderSettings", "SourceSettings", "SplitSettings"]

PAIR_KINDS = ("detone", "wide")
GENERATORS = ("cpu", "torch")


@dataclass(frozen=True)
class SourceSettings:
    """Where the images come from.

    Attributes:
        source: ``"samples"`` (scikit-image's photos), ``"samples-all"`` (those and the
            public-domain photos of other required packages), a folder, or a COCO root.
        coco_split: for a COCO root, the folder the train/val/test images come from (``train``
            uses the COCO train images; the split still holds out val and test images).
        cache_dir: decode and resize the source once into a memory-mapped file in this folder
            and reuse it in later runs (None: decode in memory at every start).
    """

    source: str
    coco_split: str
    cache_dir: str | None


@dataclass(frozen=True)
class SplitSettings:
    """Shares of images (groups) for train / val / test, and the seed that orders them."""

    fractions: tuple[float, float, float]
    seed: int


@dataclass(frozen=True)
class LoaderSettings:
    """How pairs are batched.

    Attributes:
        batch_size: training batch size per process.
        steps_per_epoch: optimizer steps per epoch; validation and ``last.ckpt`` come at the end
            of each.
        val_pairs, test_pairs: sizes of the fixed sets.
        eval_batch_size: batch size for validation and test.
        num_workers: DataLoader worker processes for training pairs.
        generator: ``"cpu"`` (DataLoader workers) or ``"torch"`` (batches made on the training
            device; the training images are copied there once).
    """

    batch_size: int
    steps_per_epoch: int
    val_pairs: int
    test_pairs: int
    eval_batch_size: int
    num_workers: int
    generator: str

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be 'cpu' or 'torch', got {self.generator!r}")
        if self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size and steps_per_epoch must be >= 1, got {self.batch_size}, "
                f"{self.steps_per_epoch}"
            )


#: the flat keys of ``hdreg/configs/data/*.yaml`` that make up each group
_SOURCE_KEYS = ("source", "coco_split", "cache_dir")
_PROTOCOL_KEYS = ("image_size", "patch_size", "rho", "jitter")
_SPLIT_KEYS = ("split_fractions", "split_seed")
_LOADER_KEYS = tuple(f.name for f in fields(LoaderSettings))
_OTHER_KEYS = ("seed", "pairs", "wide", "with_full_image", "flips")


@dataclass(frozen=True)
class DataConfig:
    """Everything a :class:`~hdreg.training.datamodule.SyntheticDataModule` takes.

    Attributes:
        source, protocol, split, loader: the groups above (``protocol``: the DeTone pair
            protocol, its ``jitter`` applied to training pairs only).
        seed: seed of the pair streams.
        pairs: ``"detone"`` (DeTone pairs of ``protocol``) or ``"wide"`` (wide-motion pairs of
            :mod:`hdreg.data.synthetic.wide`, rendered into ``protocol.patch_size`` squares from
            the images of ``protocol.image_size``; validation and test pairs are wide pairs too).
        wide: the wide-pair parameters, with ``pairs="wide"`` (None otherwise).
        with_full_image: also deliver each pair's full image A (the unsupervised model warps it).
        flips: flip training source images at random.
    """

    source: SourceSettings
    protocol: DeToneProtocol
    split: SplitSettings
    loader: LoaderSettings
    seed: int
    pairs: str
    wide: WideProtocol | None
    with_full_image: bool
    flips: bool

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_KINDS:
            raise ValueError(
                f"data.pairs must be one of {', '.join(PAIR_KINDS)}, got {self.pairs!r}"
            )
        if self.pairs == "wide" and self.wide is None:
            raise ValueError("data.pairs=wide needs data.wide (hdreg/configs/protocol/wide.yaml)")
        if self.pairs == "wide" and self.with_full_image:
            raise ValueError("data.pairs=wide has no full image A: set data.with_full_image=false")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The flat keys of the data config this class is built from."""
        return _SOURCE_KEYS + _PROTOCOL_KEYS + _SPLIT_KEYS + _LOADER_KEYS + _OTHER_KEYS

    @classmethod
    def _checked(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        values = {k: v for k, v in values.items() if k != "_target_"}
        known = cls.keys()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown data setting(s) {', '.join(unknown)}: valid are {', '.join(known)}"
            )
        missing = [k for k in known if k not in values]
        if missing:
            raise ValueError(f"missing data setting(s) {', '.join(missing)}")
        return values

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DataConfig:
        """From the flat keys of ``hdreg/configs/data/*.yaml`` (every one of them; a key that
        is not one is an error naming it)."""
        v = cls._checked(values)
        return cls(**cls._groups(v))

    @staticmethod
    def _groups(v: Mapping[str, Any]) -> dict[str, Any]:
        pairs = str(v["pairs"])
        return {
            "source": SourceSettings(
                str(v["source"]),
                str(v["coco_split"]),
                None if v["cache_dir"] is None else str(v["cache_dir"]),
            ),
            "protocol": DeToneProtocol(
                tuple(v["image_size"]),
                int(v["patch_size"]),
                float(v["rho"]),
                PhotometricJitter.from_spec(v["jitter"]),
            ),
            "split": SplitSettings(
                tuple(float(f) for f in v["split_fractions"]), int(v["split_seed"])
            ),
            "loader": LoaderSettings(
                **{k: int(v[k]) for k in _LOADER_KEYS if k != "generator"},
                generator=str(v["generator"]),
            ),
            "seed": int(v["seed"]),
            "pairs": pairs,
            # parsed only for wide pairs, as before: DeTone runs ignore data.wide
            "wide": WideProtocol.from_mapping(dict(v["wide"]))
            if pairs == "wide" and v["wide"] is not None
            else None,
            "with_full_image": bool(v["with_full_image"]),
            "flips": bool(v["flips"]),
        }
