"""Fixed synthetic benchmarks: the ``.npz`` format of docs/conventions.md, written and checked here.

Keys (N pairs of P×P patches):

==============  ===========================  ================================================
key             dtype, shape                 meaning
==============  ===========================  ================================================
``patch_a``     uint8 ``(N, P, P)``          patch A
``patch_b``     uint8 ``(N, P, P)``          patch B
``offsets``     float32 ``(N, 4, 2)``        patch B's corners in A's frame minus the corners
``corners``     float32 ``(N, 4, 2)``        patch B's corners in its source image
``sources``     str ``(N,)``                 source file of each pair, relative to the root
``rho``         float scalar                 corner perturbation range ρ
``patch_size``  int scalar                   P
``seed``        int scalar                   seed of the generator
``version``     int scalar                   format version (1)
``image_size``  int ``(2,)``                 (width, height) of the source images
==============  ===========================  ================================================

Extra keys are allowed and kept in :attr:`SyntheticBenchmark.extra` (``image_a``, the full
images, when written with ``full_images=True``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdreg.data.decoding import ImageSet
from hdreg.data.synthetic.detone import DeToneProtocol, SyntheticPairs
from hdreg.files import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "SyntheticBenchmark",
    "cannot_write",
    "make_synthetic_benchmark",
    "read_synthetic_benchmark",
    "read_synthetic_benchmarks",
    "write_synthetic_benchmark",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "patch_a", "patch_b", "offsets", "corners", "sources",
    "rho", "patch_size", "seed", "version", "image_size",
)  # fmt: skip


@dataclass
class SyntheticBenchmark:
    """A fixed set of synthetic pairs (see the module docstring for the fields)."""

    patch_a: np.ndarray
    patch_b: np.ndarray
    offsets: np.ndarray
    corners: np.ndarray
    sources: np.ndarray
    rho: float
    patch_size: int
    seed: int
    image_size: tuple[int, int]
    version: int = FORMAT_VERSION
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def validate(self, where: str = "benchmark") -> None:
        """Raise ``ValueError`` (naming ``where``, the key and what was expected) on any
        mismatch."""
        n = len(self.offsets)
        p = self.patch_size

        def expect(key: str, arr: np.ndarray, dtype: type, shape: tuple) -> None:
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"{where}: {key!r} must be an array, got {type(arr).__name__}")
            if arr.dtype != dtype:
                raise ValueError(
                    f"{where}: {key!r} must have dtype {np.dtype(dtype)}, got {arr.dtype}"
                )
            if arr.shape != shape:
                raise ValueError(f"{where}: {key!r} must have shape {shape}, got {arr.shape}")

        if self.version != FORMAT_VERSION:
            raise ValueError(
                f"{where}: format version {self.version} is not supported "
                f"(expected {FORMAT_VERSION})"
            )
        if p < 2:
            raise ValueError(f"{where}: 'patch_size' must be >= 2, got {p}")
        if n == 0:
            raise ValueError(f"{where}: the benchmark holds no pairs")
        expect("patch_a", self.patch_a, np.uint8, (n, p, p))
        expect("patch_b", self.patch_b, np.uint8, (n, p, p))
        expect("offsets", self.offsets, np.float32, (n, 4, 2))
        expect("corners", self.corners, np.float32, (n, 4, 2))
        if self.sources.shape != (n,) or self.sources.dtype.kind not in "UO":
            raise ValueError(
                f"{where}: 'sources' must be a string array of shape ({n},), got "
                f"{self.sources.dtype} {self.sources.shape}"
            )
        if not (np.isfinite(self.offsets).all() and np.isfinite(self.corners).all()):
            raise ValueError(f"{where}: 'offsets' and 'corners' must be finite")
        if not np.isfinite(self.rho) or self.rho < 0:
            raise ValueError(f"{where}: 'rho' must be a finite number >= 0, got {self.rho}")
        largest = float(np.abs(self.offsets).max())
        if largest > self.rho * (1 + 1e-5) + 1e-4:  # float32 rounding of offsets at ±rho
            raise ValueError(
                f"{where}: 'offsets' reach {largest:.4g} px, beyond its rho = {self.rho:g}: the "
                "labels do not follow the file's own protocol (wrong rho, or offsets of another "
                "convention or scale)"
            )
        if len(self.image_size) != 2 or min(self.image_size) < p:
            raise ValueError(
                f"{where}: 'image_size' must be (width, height) of at least the patch size {p}, "
                f"got {self.image_size}"
            )


def make_synthetic_benchmark(
    images: ImageSet,
    n: int,
    seed: int,
    protocol: DeToneProtocol,
    *,
    full_images: bool = False,
    stream: str = "benchmark",
) -> SyntheticBenchmark:
    """Generate ``n`` fixed pairs from ``images`` (same arguments ⇒ identical arrays).

    Pair ``i`` is pair ``i`` of ``stream`` (``hdreg.data.seeding.STREAMS``) under ``seed``.
    With ``full_images`` the full image A of each pair (``image_a (N, H, W) uint8``) and its
    ``top_left (N, 2)`` are stored as extra keys.
    """
    if protocol.image_size != images.image_size:
        raise ValueError(
            f"images are {images.image_size[0]}x{images.image_size[1]} but the protocol expects "
            f"{protocol.image_size[0]}x{protocol.image_size[1]}"
        )
    if n < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {n}")
    ds = SyntheticPairs(
        images.images, protocol, seed=seed, length=n, stream=stream,
        with_full_image=full_images,
    )  # fmt: skip
    p = protocol.patch_size
    patch_a = np.empty((n, p, p), np.uint8)
    patch_b = np.empty((n, p, p), np.uint8)
    offsets = np.empty((n, 4, 2), np.float32)
    corners = np.empty((n, 4, 2), np.float32)
    sources = []
    extra: dict[str, np.ndarray] = {}
    if full_images:
        w, h = protocol.image_size
        extra["image_a"] = np.empty((n, h, w), np.uint8)
        extra["top_left"] = np.empty((n, 2), np.int64)
    for i in range(n):
        k, pair = ds.pair(i)
        patch_a[i], patch_b[i] = pair["patch_a"], pair["patch_b"]
        offsets[i], corners[i] = pair["offsets"], pair["corners"]
        sources.append(images.names[k])
        if full_images:
            extra["image_a"][i] = pair["image_a"]
            extra["top_left"][i] = pair["top_left"]
    if protocol.jitter is not None:
        j = protocol.jitter
        extra["jitter"] = np.array([j.brightness, j.contrast, j.gamma], np.float64)
    return SyntheticBenchmark(
        patch_a, patch_b, offsets, corners, np.array(sources, dtype=str),
        rho=float(protocol.rho), patch_size=p, seed=int(seed),
        image_size=tuple(protocol.image_size), extra=extra,
    )  # fmt: skip


def write_synthetic_benchmark(bench: SyntheticBenchmark, path: str | Path) -> Path:
    """Write ``bench`` as an uncompressed ``.npz`` (fast to read; patches compress poorly)."""
    bench.validate(str(path))
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"benchmark files end in .npz, got {path}")
    if path.is_dir():
        raise IsADirectoryError(f"benchmark output {path} is a folder: give the .npz file to write")
    arrays = {
        "patch_a": bench.patch_a,
        "patch_b": bench.patch_b,
        "offsets": bench.offsets,
        "corners": bench.corners,
        "sources": bench.sources.astype(str),
        "rho": np.float64(bench.rho),
        "patch_size": np.int64(bench.patch_size),
        "seed": np.int64(bench.seed),
        "version": np.int64(bench.version),
        "image_size": np.asarray(bench.image_size, np.int64),
        **bench.extra,
    }
    try:  # staged beside it and renamed: a crash mid-write never leaves a truncated benchmark
        with atomic_write(path) as tmp:
            _savez_reproducible(tmp, arrays)
    except OSError as exc:
        if exc.filename is None:
            raise
        raise cannot_write(path, exc, "benchmark") from None
    return path


def cannot_write(path: str | Path, exc: OSError, what: str) -> ValueError:
    """The one-line error for an output ``path`` that the OS refused (``exc``): a file where a
    folder of its path should be, or the OS's reason (permission denied, disk full, ...)."""
    path = Path(path)
    reason = exc.strerror or str(exc)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                reason = f"{parent} is a file, not a folder"
            break
    return ValueError(f"cannot write {what} {path}: {reason}")


def _savez_reproducible(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed timestamp on every member: the same arrays give the same bytes,
    so two runs of ``hdreg make-benchmark`` with the same arguments write identical files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def _scalar(data: np.lib.npyio.NpzFile, key: str, kind: type, where: str) -> float | int:
    arr = data[key]
    if arr.shape != () and arr.shape != (1,):
        raise ValueError(f"{where}: {key!r} must be a scalar, got shape {arr.shape}")
    value = arr.reshape(()).item()
    if kind is int and (isinstance(value, float) and not float(value).is_integer()):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {key!r} must be a number, got {value!r}") from exc


def read_synthetic_benchmark(path: str | Path) -> SyntheticBenchmark:
    """Load and validate a benchmark ``.npz`` written by anyone (extra keys are kept).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the key
    for anything that does not match the format (not an npz, a missing key, a wrong dtype, shape
    or version).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    where = f"benchmark {path}"
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # an .npz is a zip archive of .npy arrays
        raise ValueError(f"{where} is not an .npz file (a zip archive of arrays)")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{where} is not a readable .npz file: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} is a single .npy array, not an .npz benchmark")
    with data:
        missing = [k for k in REQUIRED_KEYS if k not in data.files]
        if missing:
            raise ValueError(
                f"{where} is not a synthetic benchmark: missing key(s) {', '.join(missing)} "
                f"(found: {', '.join(sorted(data.files)) or 'none'})"
            )
        try:
            image_size = tuple(int(v) for v in np.asarray(data["image_size"]).reshape(-1))
            bench = SyntheticBenchmark(
                patch_a=data["patch_a"],
                patch_b=data["patch_b"],
                offsets=data["offsets"],
                corners=data["corners"],
                sources=data["sources"],
                rho=_scalar(data, "rho", float, where),
                patch_size=_scalar(data, "patch_size", int, where),
                seed=_scalar(data, "seed", int, where),
                version=_scalar(data, "version", int, where),
                image_size=image_size,  # type: ignore[arg-type]
                extra={k: data[k] for k in data.files if k not in REQUIRED_KEYS},
                path=path,
            )
        except ValueError as exc:
            if str(exc).startswith(where):
                raise
            # e.g. object arrays, which need pickle and are refused for safety
            raise ValueError(f"{where}: cannot read its arrays: {exc}") from exc
    bench.validate(where)
    return bench


def _check_one_whole_run(parts: list[SyntheticBenchmark], pattern: str) -> None:
    """``ValueError`` unless shards that record their run (keys ``run``, ``shard``, ``shards``,
    written by ``hdreg make-benchmark --shard-size``) are exactly the shards of one run, each
    once. Files without these keys are accepted as they are."""
    marked = [b for b in parts if "run" in b.extra]
    if not marked:
        return
    if len(marked) != len(parts):
        other = next(b for b in parts if "run" not in b.extra)
        raise ValueError(
            f"{pattern} mixes shards of a sharded run ({marked[0].path}) with {other.path}, "
            "which is not one of them: narrow the pattern or write the benchmark again"
        )
    runs = {str(b.extra["run"]) for b in parts}
    if len(runs) > 1:
        other = next(b for b in parts if str(b.extra["run"]) != str(parts[0].extra["run"]))
        raise ValueError(
            f"{pattern} matches shards of {len(runs)} different runs ({parts[0].path} and "
            f"{other.path}): narrow the pattern or write the benchmark again"
        )
    count = int(parts[0].extra["shards"])
    got = sorted(int(b.extra["shard"]) for b in parts)
    if got != list(range(count)):
        missing = sorted(set(range(count)) - set(got))
        doubled = sorted({k for k in got if got.count(k) > 1})
        what = [f"missing shard(s) {missing}"] if missing else []
        what += [f"shard(s) {doubled} more than once (copies)"] if doubled else []
        raise ValueError(
            f"{pattern} matches {len(parts)} files, not the {count} shards of one run each once "
            f"({', '.join(what)}): match every shard once (name-*.npz) or write the benchmark again"
        )


def read_synthetic_benchmarks(pattern: str | Path) -> SyntheticBenchmark:
    """One benchmark from a file, or from the shards a glob ``pattern`` matches
    (``data/benchmarks/coco_test2017-*.npz``), concatenated in file-name order.

    Shards must share ``rho``, ``patch_size``, ``image_size`` and ``seed``, and shards that record
    their run must be exactly the shards of one run; an extra key is kept when every shard has it
    (per-pair arrays are concatenated, equal scalars kept once).
    """
    text = str(pattern)
    if not any(c in text for c in "*?["):
        return read_synthetic_benchmark(text)
    pattern_path = Path(text).expanduser()
    paths = sorted(pattern_path.parent.glob(pattern_path.name))
    if not paths:
        raise FileNotFoundError(f"no benchmark file matches {text}")
    parts = [read_synthetic_benchmark(p) for p in paths]
    _check_one_whole_run(parts, text)
    first = parts[0]
    for b in parts[1:]:
        same = (b.rho, b.patch_size, tuple(b.image_size), b.seed) == (
            first.rho, first.patch_size, tuple(first.image_size), first.seed,
        )  # fmt: skip
        if not same:
            raise ValueError(
                f"{b.path} does not match {first.path}: shards must share rho, patch_size, "
                "image_size and seed"
            )
    extra: dict[str, np.ndarray] = {}
    for key in set.intersection(*(set(b.extra) for b in parts)):
        values = [np.asarray(b.extra[key]) for b in parts]
        if all(v.ndim > 0 and len(v) == len(b) for v, b in zip(values, parts, strict=True)):
            extra[key] = np.concatenate(values)
        elif all(np.array_equal(v, values[0]) for v in values):
            extra[key] = values[0]
    bench = SyntheticBenchmark(
        *(np.concatenate([getattr(b, k) for b in parts]) for k in (
            "patch_a", "patch_b", "offsets", "corners", "sources")),
        rho=first.rho, patch_size=first.patch_size, seed=first.seed,
        image_size=first.image_size, extra=extra, path=Path(text),
    )  # fmt: skip
    bench.validate(text)
    return bench
