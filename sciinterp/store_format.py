"""The activation store's on-disk format: constants, the commit record, dtype codecs, parts.

Shared by the writer (:mod:`sciinterp.store`) and the training reader
(:class:`sciinterp.sources.StoreSource`); see ``docs/store.md`` for the layout.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr

__all__ = [
    "COMMIT_ATTR",
    "DTYPE_ATTR",
    "FORMAT_VERSION",
    "CATEGORIES_ATTR",
    "COMPRESSIONS",
    "ITEMS_ARRAY",
    "READ_VERSIONS",
    "StoreError",
    "decode_rows",
    "is_store",
    "part_path",
    "read_commit",
    "store_parts",
    "stored_items",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Version 3: string coordinates are dictionary-encoded (``int32`` codes + a categories array)."""
READ_VERSIONS = (2, 3)
COMMIT_ATTR = "sciinterp_commit"
ITEMS_ARRAY = "sciinterp_items"
DTYPE_ATTR = "sciinterp_dtype"
Dtype = Literal["float32", "float16", "bfloat16"]
_NUMPY_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_ITEM_CHUNK = 4096
CATEGORIES_ATTR = "sciinterp_categories"
"""Attribute of a dictionary-encoded coordinate: the name of its categories array."""
COMPRESSIONS = ("lz4", "zstd", "none")


def categories_array(coord: str) -> str:
    """Name of the array holding the categories (distinct strings) of coordinate ``coord``."""
    return f"sciinterp_categories_{coord}"


def factorize_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, uniques)`` of a 1-d string array, hashing only the starts of runs of equal values.

    Token coordinates such as ``time`` or ``protein`` come in long runs, so this is
    ~5x cheaper than hashing every value.  ``uniques[codes]`` equals ``values``.
    """
    import pandas as pd

    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(0, np.int64), values[:0]
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    codes, uniques = pd.factorize(values[starts])
    return np.repeat(codes, np.diff(np.append(starts, values.size))), np.asarray(uniques)


class StoreError(ValueError):
    """A store is missing, malformed, or does not match what is being written."""


@contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Hide zarr's warning about a ``*.partial`` temp file a killed write left behind."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at .*\.partial is not recognized", module="zarr")
        yield


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a single store (not a directory of parts)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return COMMIT_ATTR in json.loads(meta.read_text()).get("attributes", {})
    except (ValueError, OSError):
        return False


def read_commit(path: str | os.PathLike) -> dict[str, Any]:
    """The commit record of a store; raises :class:`StoreError` if ``path`` is not one.

    Returns
    -------
    dict with ``format_version``, ``n_rows``, ``n_items``, ``complete``,
    ``n_dropped_nonfinite`` and ``arrays`` (names of the arrays created so far).
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist")
    if (path / "sciinterp_commit.json").is_file():
        raise StoreError(
            f"{path} was written with store format 1 (sciinterp_commit.json), this sciinterp reads "
            f"format {FORMAT_VERSION}; re-harvest it with this version"
        )
    meta = path / "zarr.json"
    if not meta.is_file():
        hint = " (it looks like zarr v2)" if (path / ".zgroup").exists() else ""
        raise StoreError(f"{path} is not a sciinterp activation store: no zarr.json{hint}")
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except ValueError as err:
        raise StoreError(f"{path}/zarr.json is not valid JSON: {err}") from err
    rec = attrs.get(COMMIT_ATTR)
    if not isinstance(rec, dict):
        raise StoreError(f"{path} is a zarr group but not a sciinterp activation store (no {COMMIT_ATTR!r} attribute)")
    version = rec.get("format_version")
    if version not in READ_VERSIONS:
        raise StoreError(
            f"{path} was written with store format {version}, this sciinterp reads "
            f"formats {READ_VERSIONS[0]} to {READ_VERSIONS[-1]}; re-harvest it or use a matching sciinterp version"
        )
    return rec


def stored_items(path: str | os.PathLike) -> list[str]:
    """Keys of the items committed to the store at ``path``, in storage order."""
    n = read_commit(path)["n_items"]
    if not n:
        return []
    with _quiet_zarr():
        arr = zarr.open_array(Path(path) / ITEMS_ARRAY, mode="r")
    return [str(x) for x in arr[:n]]


def decode_rows(block: np.ndarray, dtype: str) -> np.ndarray:
    """On-disk rows -> float32 (``bfloat16`` is stored as its ``uint16`` bit pattern)."""
    if dtype == "bfloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32, copy=False)


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like ``torch``.

    A column-major ``(n, d)`` input gives a column-major output (no transpose).
    """
    a = np.asarray(a)
    if a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous:
        return _bf16_bits(a.T).T
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    out = ((b + np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():  # keep NaN a (quiet) NaN instead of rounding into inf
        out[nan] = ((b[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return out


def _to_numpy(x: torch.Tensor | np.ndarray, dtype: Dtype) -> np.ndarray:
    """Activations -> the on-disk numpy dtype (conversion in numpy: cheap on CPU, no torch threads)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            if dtype == "bfloat16":
                return x.cpu().view(torch.uint16).numpy()
            x = x.float()
        x = x.cpu().numpy()
    x = np.asarray(x)
    if dtype == "bfloat16":
        return _bf16_bits(x)
    with np.errstate(over="ignore"):  # float16 overflow -> inf, reported by the finiteness check
        return x.astype(_NUMPY_DTYPE[dtype], copy=False)


def _finite_rows(a: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of on-disk activations ``(n, d)`` whose values are all finite."""
    if dtype == "bfloat16":
        return ((a & np.uint16(0x7F80)) != np.uint16(0x7F80)).all(axis=1)
    if np.isfinite(np.add.reduce(a, axis=None, dtype=np.float32)):  # fast path: a NaN/inf anywhere makes the sum one
        return np.ones(len(a), dtype=bool)
    return np.isfinite(a).all(axis=1)


def part_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """Where process ``rank`` of ``world`` writes its part of the store at ``path``."""
    return Path(path) / f"part-{rank:05d}-of-{world:05d}.zarr"


def store_parts(path: str | os.PathLike) -> list[Path]:
    """The stores that make up ``path``: ``[path]`` for a store, its parts (rank order) for a parts directory.

    Raises :class:`StoreError` if ``path`` is neither, or its parts disagree on the world size.
    """
    path = Path(path)
    if is_store(path):
        return [path]
    if not path.is_dir() or any((path / f).exists() for f in ("zarr.json", ".zgroup", "sciinterp_commit.json")):
        read_commit(path)  # raises the precise reason: missing, old format, not a sciinterp group
    parts = sorted(p for p in path.glob("part-*-of-*.zarr") if (p / "zarr.json").is_file())
    if not parts:
        raise StoreError(f"{path} is not a sciinterp activation store nor a directory of store parts")
    worlds = sorted({p.name.split("-of-")[1].removesuffix(".zarr") for p in parts})
    if len(worlds) > 1:
        raise StoreError(f"{path} mixes parts of different world sizes {[int(w) for w in worlds]}; remove the stale ones")
    world = int(worlds[0])
    if len(parts) != world:
        log.warning("%s holds %d of %d parts; reading the ones present", path, len(parts), world)
    return parts
