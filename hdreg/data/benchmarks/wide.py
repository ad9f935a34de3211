"""Wide-motion benchmarks on disk: whole-image pairs in the HPatches real-pair layout.

``write_wide_benchmark`` renders ``n`` pairs
(:func:`hdreg.data.synthetic.wide.sample_wide_pair`, photometric augmentation included, JPEG
re-encoding too) and writes, for pair ``i``, ``OUT/<i:05d>/1.png`` (view A), ``2.png`` (view B)
and ``H_1_2`` (``H_b_from_a``, nine numbers, last entry 1), plus
``OUT/manifest.json`` (arguments, parameters, each pair's source photo, hdreg's version). Pair
``i`` is pair ``i`` of the ``benchmark`` stream under ``seed`` and comes from photo
``i mod N`` of the ``N`` usable photos of the source (sorted). The same arguments and photos give
byte-identical files. ``evaluate.py benchmark=pairs benchmark.root=OUT`` reads the result.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from hdreg.data.benchmarks.synthetic import SyntheticBenchmark, cannot_write
from hdreg.data.decoding import ImageSet, load_gray, no_usable_image, warn_skipped
from hdreg.data.seeding import STREAMS, pair_rng
from hdreg.data.sources import ImageSource
from hdreg.data.synthetic.wide import WidePairs, check_photo, sample_wide_pair
from hdreg.data.synthetic.wide_protocol import WideProtocol

__all__ = ["FORMAT_VERSION", "MANIFEST", "make_wide_benchmark", "write_wide_benchmark"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _hdreg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hdreg")
    except PackageNotFoundError:
        return "unknown"


def _usable_photos(source: ImageSource, protocol: WideProtocol) -> list[str]:
    """Files of ``source`` that decode and are large enough (one warning names the others)."""
    usable, bad = [], []
    for rel in source.files:
        try:
            check_photo(load_gray(source.root / rel), protocol, str(source.root / rel))
        except ValueError as exc:
            bad.append(f"{rel} ({exc.__cause__ or exc})")
            continue
        usable.append(rel)
    if bad:
        warn_skipped(source, bad, stacklevel=3)
    if not usable:
        raise no_usable_image(source)
    return usable


def _format_matrix(H: np.ndarray) -> str:
    H = H / H[2, 2]
    return "\n".join(" ".join(f"{v:.17g}" for v in row) for row in H) + "\n"


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` and it holds an earlier wide benchmark."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"benchmark output {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no {MANIFEST} of an earlier wide benchmark: choose "
            "another --out (nothing is written into or deleted from a folder of other files)"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out} holds an earlier benchmark ({MANIFEST}): pass --overwrite to replace it "
            "whole, or choose another --out"
        )


def write_wide_benchmark(
    source: ImageSource,
    out: str | Path,
    *,
    n: int,
    seed: int,
    view_size: tuple[int, int] = (640, 480),
    protocol: WideProtocol,
    overwrite: bool = False,
    source_label: str | None = None,
) -> Path:
    """Write ``n`` wide-motion pairs of ``view_size = (W, H)`` views into the folder ``out``.

    The folder is built beside ``out`` and moved into place at the end, so ``out`` holds either
    the earlier benchmark or the new one, never a mix. ``overwrite`` replaces a folder holding an
    earlier benchmark's manifest; any other non-empty folder is refused. ``source_label`` is
    how the manifest names the source (default: its root). Returns ``out``.
    """
    if n < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {n}")
    vw, vh = (int(v) for v in view_size)
    if vw < 8 or vh < 8:
        raise ValueError(f"--view-size must be at least 8x8 pixels, got {vw}x{vh}")
    out = Path(out).expanduser()
    _check_out(out, overwrite)
    photos = _usable_photos(source, protocol)
    stream = STREAMS["benchmark"]
    entries: list[dict[str, str]] = [{} for _ in range(n)]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise cannot_write(out, exc, "benchmark folder") from None
    try:
        for k, rel in enumerate(photos):  # each photo decoded once, all of its pairs in turn
            indices = range(k, n, len(photos))
            if not indices:
                continue
            photo = load_gray(source.root / rel)
            for i in indices:
                pair = sample_wide_pair(
                    photo, (vw, vh), protocol, pair_rng(seed, stream, i), name=rel
                )
                folder = staging / f"{i:05d}"
                folder.mkdir()
                for name, view in (("1.png", pair.view_a), ("2.png", pair.view_b)):
                    if not cv2.imwrite(str(folder / name), view):
                        raise OSError(f"cannot write {out / folder.name / name}")
                (folder / "H_1_2").write_text(_format_matrix(pair.H_b_from_a))
                entries[i] = {"sequence": folder.name, "source": rel}
        manifest = {
            "protocol": "wide",
            "version": FORMAT_VERSION,
            "hdreg": _hdreg_version(),
            "source": source_label if source_label is not None else str(source.root),
            "n": n,
            "seed": int(seed),
            "view_size": [vw, vh],
            "parameters": asdict(protocol),
            "photos": len(photos),
            "pairs": entries,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(retired / out.name)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def make_wide_benchmark(
    images: ImageSet,
    n: int,
    seed: int,
    patch_size: int,
    protocol: WideProtocol,
    *,
    stream: str = "benchmark",
) -> SyntheticBenchmark:
    """``n`` fixed square wide-motion pairs (:class:`hdreg.data.synthetic.wide.WidePairs`) in the
    synthetic benchmark format; ``rho`` holds the largest corner offset (the format's range
    field)."""
    if n < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {n}")
    ds = WidePairs(images.images, patch_size, protocol, seed=seed, length=n, stream=stream)
    p = int(patch_size)
    patch_a = np.empty((n, p, p), np.uint8)
    patch_b = np.empty((n, p, p), np.uint8)
    offsets = np.empty((n, 4, 2), np.float32)
    corners = np.empty((n, 4, 2), np.float32)
    sources = []
    for i in range(n):
        k, pair = ds.pair(i)
        patch_a[i], patch_b[i] = pair["patch_a"], pair["patch_b"]
        offsets[i], corners[i] = pair["offsets"], pair["corners"]
        sources.append(images.names[k])
    return SyntheticBenchmark(
        patch_a, patch_b, offsets, corners, np.array(sources, dtype=str),
        rho=float(np.abs(offsets).max()), patch_size=p, seed=int(seed),
        image_size=images.image_size, extra={"protocol": np.array("wide")},
    )  # fmt: skip
