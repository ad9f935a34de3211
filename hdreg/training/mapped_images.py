"""Images in a ``.npy`` file, memory-mapped on first use in each process (:class:`MappedImages`).

The on-disk cache (:mod:`hdreg.training.image_cache`) keeps a source's decoded images in such a
file. Processes and pickling: on Linux, DataLoader workers are forked and share the parent's map. A
``np.memmap`` that gets *pickled* (spawn or forkserver start methods, the default on macOS and
Windows and from Python 3.14 on Linux, or DDP's spawn launcher) is sent as a full in-memory copy
of the data, and ``ImageSet.subset`` (fancy indexing) copies the selected images into memory.
Rows of a read-only map are read-only, and ``torch.from_numpy`` warns on them (``SyntheticPairs``
with ``with_full_image`` and no jitter hands the source image itself to torch). A
:class:`MappedImages` instead pickles as its path and re-opens the map in the receiving process,
its subsets stay index lists over the one file, and its images come out as small writable copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MappedImages"]


class MappedImages:
    """Read-only ``(N, H, W) uint8`` images in a ``.npy`` file, mapped on first use per process.

    Behaves like the array where the pair generators need it: ``shape``, ``dtype``, ``ndim``,
    ``len``; ``images[k]`` gives image ``k`` as a writable ``(H, W)`` copy (77 KB at 320×240, so
    that ``torch.from_numpy`` never aliases read-only mapped pages); ``images[list]`` or
    ``images[slice]`` gives another ``MappedImages`` over the same file (no copy), and
    ``np.asarray(images)`` reads the selected images into memory.

    Pickling sends the path and the selected indices only; the receiving process maps the file
    itself.

    Args:
        path: a ``.npy`` file of shape ``(N, H, W)`` and dtype ``uint8``.
        indices: optional selection of images (default: all, in file order).
    """

    def __init__(self, path: str | Path, indices: Sequence[int] | np.ndarray | None = None) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None
        full = self.array
        if full.ndim != 3 or full.dtype != np.uint8:
            raise ValueError(
                f"{self.path} must hold (N, H, W) uint8 images, got {full.dtype} {full.shape}"
            )
        self._indices: np.ndarray | None = None
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < -len(full) or idx.max() >= len(full)):
                raise IndexError(f"image index out of range for {len(full)} images in {self.path}")
            self._indices = np.where(idx < 0, idx + len(full), idx)

    @property
    def array(self) -> np.ndarray:
        """The whole file, memory-mapped read-only (opened on first use in this process)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, int, int]:
        n, h, w = self.array.shape
        return (n if self._indices is None else len(self._indices), h, w)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray | MappedImages:
        if isinstance(index, int | np.integer):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"image index {index} out of range for {n} images")
            k = int(index) if self._indices is None else int(self._indices[index])
            return np.array(self.array[k])
        selection = np.arange(len(self))[index]  # slices, lists, integer or boolean arrays
        if selection.ndim != 1:
            raise TypeError(f"MappedImages takes an int, a slice or a 1-D selection, got {index!r}")
        return self._child(selection if self._indices is None else self._indices[selection])

    def _child(self, indices: np.ndarray) -> MappedImages:
        """A selection of this one's images sharing its map (validated already)."""
        child = object.__new__(MappedImages)
        child.path, child._array, child._indices = self.path, self._array, indices
        return child

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.array(self.array) if self._indices is None else self.array[self._indices]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "indices": self._indices}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._indices, self._array = state["path"], state["indices"], None

    def __repr__(self) -> str:
        n, h, w = self.shape
        return f"MappedImages({n} images {w}x{h} from {self.path})"
