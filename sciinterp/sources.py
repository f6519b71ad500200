"""Sources of activation rows for training: anything that yields ``(batch, d)`` tensors.

The trainer only needs :class:`RowSource`; a store, a ``.npy`` file and an
in-memory array all fit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["ArraySource", "RowSource", "as_source"]


@runtime_checkable
class RowSource(Protocol):
    """Rows of activations, shape ``(n_rows, d_in)``, read in mini-batches."""

    @property
    def d_in(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[torch.Tensor]:
        """Yield float32 tensors ``(batch_size, d_in)`` (the last may be shorter).

        One call is one pass (epoch) over the rows, deterministic for ``seed``.
        ``start_row`` skips that many rows of the pass (to resume a run).
        """
        ...


class ArraySource:
    """Rows from an in-memory array/tensor or a ``(N, d)`` ``.npy`` file (memory-mapped).

    Parameters
    ----------
    data
        ``numpy.ndarray``, ``torch.Tensor`` or path to a ``.npy`` file, shape ``(N, d)``.
    """

    def __init__(self, data: np.ndarray | torch.Tensor | str | os.PathLike):
        self.origin = str(data) if isinstance(data, (str, os.PathLike)) else "<array>"
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if not path.is_file():
                raise FileNotFoundError(f"activation array {path} does not exist")
            try:
                data = np.load(path, mmap_mode="r")
            except ValueError as err:
                raise ValueError(f"{path} is not a .npy array: {err}") from err
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        if data.ndim != 2:
            raise ValueError(f"activation array {self.origin} has shape {data.shape}, expected (N, d)")
        if data.dtype.kind != "f":
            raise ValueError(f"activation array {self.origin} has dtype {data.dtype}, expected floats")
        self.data = data

    @property
    def d_in(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.data.shape[0])

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[torch.Tensor]:
        n = self.n_rows
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for i in range(start_row, n, batch_size):
            idx = order[i : i + batch_size]
            if shuffle:
                idx = np.sort(idx)  # sorted gathers are faster on memory maps
            yield torch.from_numpy(np.ascontiguousarray(self.data[idx], dtype=np.float32))


def as_source(data: RowSource | np.ndarray | torch.Tensor | str | os.PathLike) -> RowSource:
    """Wrap arrays and ``.npy`` paths; pass sources through."""
    if isinstance(data, RowSource):
        return data
    return ArraySource(data)
