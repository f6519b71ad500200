"""Activation store: labelled activations on disk, xarray over zarr (v3).

Layout of one store (a zarr v3 group, ``*.zarr``; see ``docs/store.md``)::

    <hook>            (token, d_<hook>)   activations, one array per hook point
    <coord>           (token,)            domain coordinates (protein, position, ...)
    sciinterp_items   (sciinterp_item,)   keys of the items stored so far, in order
    zarr.json         group attributes: provenance + the commit record ``sciinterp_commit``

Arrays are appended in whole items (proteins, time steps).  After each flush the
commit record (rows, items, arrays so far) is rewritten in the group's
``zarr.json``; zarr's local store replaces every file atomically (temporary name,
then rename), chunks included.  Rows and items beyond the commit are ignored by
readers and cut away when a writer reopens the store, so a harvest killed at any
moment leaves a readable store, and rerunning it skips the committed items:
every token ends up stored exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import xarray as xr
import zarr

from sciinterp.adapter import TokenBatch
from sciinterp.store_format import (
    _ITEM_CHUNK,
    _NUMPY_DTYPE,
    COMMIT_ATTR,
    DTYPE_ATTR,
    FORMAT_VERSION,
    ITEMS_ARRAY,
    Dtype,
    StoreError,
    _finite_rows,
    _quiet_zarr,
    _to_numpy,
    decode_rows,
    is_store,
    part_path,
    read_commit,
    store_parts,
    stored_items,
)

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "StoreWriter",
    "decode_rows",
    "is_store",
    "open_store",
    "part_path",
    "read_commit",
    "store_parts",
    "stored_items",
]

log = logging.getLogger(__name__)


class _Rows(NamedTuple):
    """A checked batch in on-disk form, waiting in the writer's buffer."""

    acts: dict[str, np.ndarray]
    coords: dict[str, np.ndarray]
    items: list[str]


def _kind(values: np.ndarray) -> str:
    k = np.asarray(values).dtype.kind
    return {"U": "str", "S": "str", "O": "str", "T": "str", "i": "int", "u": "int", "f": "float", "b": "bool"}.get(k, k)


def _jsonable(obj: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(obj), default=str))


class StoreWriter:
    """Append :class:`TokenBatch` es to a store, resuming one that exists.

    Parameters
    ----------
    path
        Directory of the zarr store (created if missing).
    dtype
        On-disk activation dtype; ``bfloat16`` is stored as ``uint16`` bits.
    chunk_rows
        Rows per zarr chunk along ``token``.
    flush_rows
        Rows buffered before they are written and committed.  Default: whole
        chunks up to about 64 MiB (1 to 4 chunks), so the partly filled last
        chunk, which every flush reads back and rewrites, is a small share.
    attrs
        Provenance written into the store's attributes (adapter, model, hooks,
        data source, resolved config...).  On resume, ``model_checksum``,
        ``hooks`` and ``adapter`` must match what the store holds.
    nonfinite
        ``"error"`` raises on NaN/inf activations (checked after conversion to
        ``dtype``, so float16 overflow counts); ``"drop"`` drops those tokens and
        counts them (``open_store(path).attrs["n_dropped_nonfinite"]``).
    compression
        ``"zstd"`` (zarr's default codec: ~5-10 % smaller for float activations)
        or ``"none"`` (about twice the write speed).  Readers need not know.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: Dtype = "float32",
        chunk_rows: int = 8192,
        flush_rows: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        nonfinite: Literal["error", "drop"] = "error",
        compression: Literal["zstd", "none"] = "zstd",
    ) -> None:
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
        self.compressors = "auto" if compression == "zstd" else None
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(f"dtype must be one of {sorted(_NUMPY_DTYPE)}, got {dtype!r}")
        if nonfinite not in ("error", "drop"):
            raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
        if chunk_rows < 1 or (flush_rows is not None and flush_rows < 1):
            raise ValueError(f"chunk_rows and flush_rows must be >= 1, got {chunk_rows} and {flush_rows}")
        self.flush_rows = flush_rows
        self.path = Path(path)
        self.dtype = dtype
        self.chunk_rows = int(chunk_rows)
        self.nonfinite = nonfinite
        self._buffer: list[_Rows] = []
        self._buffered_rows = 0
        self._pending_dropped = 0
        self._schema: dict[str, dict[str, Any]] | None = None  # {"hooks": {h: d}, "coords": {c: kind}}
        attrs = _jsonable(attrs or {})
        if is_store(self.path) or (self.path / "sciinterp_commit.json").exists():
            self._open_existing(attrs)
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(f"{self.path} exists and is not a sciinterp activation store; choose a new path")
            commit = {"format_version": FORMAT_VERSION, "n_rows": 0, "n_items": 0, "complete": False,
                      "n_dropped_nonfinite": 0, "arrays": []}  # fmt: skip
            self.group = zarr.open_group(
                self.path, mode="w", zarr_format=3, attributes={**attrs, DTYPE_ATTR: dtype, COMMIT_ATTR: commit}
            )
            self.commit = commit
            self._done: set[str] = set()

    # -- opening ---------------------------------------------------------
    def _open_existing(self, attrs: Mapping[str, Any]) -> None:
        self.commit = read_commit(self.path)
        with _quiet_zarr():
            self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
            stored = dict(self.group.attrs)
            if stored.get(DTYPE_ATTR) != self.dtype:
                raise StoreError(
                    f"{self.path} holds {stored.get(DTYPE_ATTR)} activations, asked to append {self.dtype}"
                )
            for key in ("model_checksum", "hooks", "adapter"):
                if key in attrs and key in stored and stored[key] != attrs[key]:
                    raise StoreError(
                        f"{self.path}: stored {key}={stored[key]!r} but this harvest has {attrs[key]!r}; "
                        "write to a new store instead of mixing them"
                    )
            arrays = dict(self.group.arrays())
            for name in set(arrays) - set(self.commit["arrays"]):  # created by a killed first flush
                del self.group[name]
            missing = set(self.commit["arrays"]) - set(arrays)
            if missing:
                raise StoreError(f"{self.path} is damaged: committed arrays {sorted(missing)} are missing")
            n, n_items = self.commit["n_rows"], self.commit["n_items"]
            for name in self.commit["arrays"]:
                arr = arrays[name]
                keep = n_items if name == ITEMS_ARRAY else n
                if arr.shape[0] != keep:  # rows past the last commit: a killed write
                    arr.resize((keep, *arr.shape[1:]))
            for partial in self.path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
            if self.commit["arrays"]:
                self._schema = {
                    "hooks": {h: arrays[h].shape[1] for h in self.commit["arrays"] if arrays[h].ndim == 2},
                    "coords": {
                        c: _kind(np.empty(0, arrays[c].dtype))
                        for c in self.commit["arrays"]
                        if arrays[c].ndim == 1 and c != ITEMS_ARRAY
                    },
                }
        self._done = set(stored_items(self.path))
        if n:
            log.info("resuming %s: %d rows, %d items already stored", self.path, n, n_items)

    # -- writing ---------------------------------------------------------
    @property
    def done_items(self) -> frozenset[str]:
        """Items already stored (committed or buffered); pass as ``skip`` to ``harvest``."""
        return frozenset(self._done)

    @property
    def n_rows(self) -> int:
        """Rows committed plus rows waiting in the buffer."""
        return self.commit["n_rows"] + self._buffered_rows

    def append(self, batch: TokenBatch) -> None:
        """Check and buffer one batch; flushes whenever ``flush_rows`` rows are waiting."""
        dup = self._done.intersection(batch.items)
        if dup:
            raise StoreError(f"{self.path}: items already stored: {sorted(dup)[:5]}")
        self._check_schema(batch)
        rows = _Rows(
            {h: _to_numpy(x, self.dtype) for h, x in batch.acts.items()},
            {c: np.asarray(v) for c, v in batch.coords.items()},
            list(batch.items),
        )
        rows = self._check_finite(rows)
        self._buffer.append(rows)
        self._buffered_rows += len(next(iter(rows.acts.values())))
        self._done.update(batch.items)
        if self.flush_rows is None:
            row_bytes = sum(a.shape[1] * a.itemsize for a in rows.acts.values())
            self.flush_rows = self.chunk_rows * max(1, min(4, (64 << 20) // max(1, self.chunk_rows * row_bytes)))
        if self._buffered_rows >= self.flush_rows:
            self.flush()

    def _check_schema(self, batch: TokenBatch) -> None:
        hooks = {h: int(x.shape[1]) for h, x in batch.acts.items()}
        coords = {c: _kind(v) for c, v in batch.coords.items()}
        if ITEMS_ARRAY in hooks or ITEMS_ARRAY in coords:
            raise StoreError(f"{ITEMS_ARRAY!r} is reserved and cannot be a hook or coordinate name")
        if self._schema is None:
            self._schema = {"hooks": hooks, "coords": coords}
            return
        want_h, want_c = self._schema["hooks"], self._schema["coords"]
        if set(hooks) != set(want_h) or set(coords) != set(want_c):
            raise StoreError(
                f"{self.path}: batch has hooks {sorted(hooks)} and coords {sorted(coords)}, "
                f"store has hooks {sorted(want_h)} and coords {sorted(want_c)}"
            )
        for h, d in hooks.items():
            if d != want_h[h]:
                raise StoreError(f"{self.path}: hook {h!r} is stored with width {want_h[h]}, cannot append width {d}")
        for c, kind in coords.items():
            if kind != want_c[c] and not (kind in ("int", "bool") and want_c[c] == "float"):
                raise StoreError(f"{self.path}: coordinate {c!r} is stored as {want_c[c]}, this batch has {kind}")

    def _check_finite(self, rows: _Rows) -> _Rows:
        """Raise on, or drop, tokens with NaN/inf (checked in the on-disk dtype: fp16 overflow counts)."""
        ok = None
        for hook, a in rows.acts.items():
            fin = _finite_rows(a, self.dtype)
            if not fin.all() and self.nonfinite == "error":
                bad = int(np.flatnonzero(~fin)[0])
                where = {k: v[bad].item() for k, v in rows.coords.items()}
                raise StoreError(
                    f"non-finite activation at hook {hook!r} (stored as {self.dtype}), token {where} "
                    f"(items {rows.items[:3]}); set nonfinite='drop' to drop such tokens instead"
                )
            ok = fin if ok is None else ok & fin
        if ok is None or ok.all():
            return rows
        n_bad = int((~ok).sum())
        self._pending_dropped += n_bad
        log.warning("dropped %d tokens with non-finite activations in items %s", n_bad, rows.items[:3])
        return _Rows({h: a[ok] for h, a in rows.acts.items()}, {k: v[ok] for k, v in rows.coords.items()}, rows.items)

    def _create_arrays(self, batch: _Rows) -> None:
        coord_names = " ".join(batch.coords)
        for hook, x in batch.acts.items():
            d = x.shape[1]
            self.group.create_array(
                hook, shape=(0, d), chunks=(self.chunk_rows, d), dtype=_NUMPY_DTYPE[self.dtype], compressors=self.compressors,
                dimension_names=["token", f"d_{hook}"],
                attributes={"coordinates": coord_names, DTYPE_ATTR: self.dtype},
            )  # fmt: skip
        for name, values in batch.coords.items():
            values = np.asarray(values)
            dtype = str if values.dtype.kind in "USOT" else values.dtype
            self.group.create_array(name, shape=(0,), chunks=(self.chunk_rows,), dtype=dtype, dimension_names=["token"])
        self.group.create_array(
            ITEMS_ARRAY, shape=(0,), chunks=(_ITEM_CHUNK,), dtype=str, dimension_names=["sciinterp_item"]
        )
        self._commit({"arrays": [*batch.acts, *batch.coords, ITEMS_ARRAY]})

    def _commit(self, changes: Mapping[str, Any]) -> None:
        """Record ``changes`` in the commit: one atomic rewrite of the group's zarr.json."""
        self.commit = {**self.commit, **changes}
        self.group.attrs[COMMIT_ATTR] = self.commit

    @staticmethod
    def _append(arr: zarr.Array, n0: int, block: np.ndarray) -> None:
        n1 = n0 + block.shape[0]
        arr.resize((n1, *arr.shape[1:]))
        arr[n0:n1] = block

    def flush(self) -> None:
        """Write buffered rows, then commit them atomically."""
        if not self._buffer:
            return
        with _quiet_zarr():
            first = self._buffer[0]
            if not self.commit["arrays"]:
                self._create_arrays(first)
            n0 = self.commit["n_rows"]
            for hook in first.acts:
                block = np.concatenate([b.acts[hook] for b in self._buffer])
                self._append(self.group[hook], n0, block)
            for name in first.coords:
                block = np.concatenate([b.coords[name] for b in self._buffer])
                if block.dtype.kind in "SOT":
                    block = block.astype(str)
                self._append(self.group[name], n0, block)
            items = np.array([i for b in self._buffer for i in b.items], dtype=str)
            if items.size:
                self._append(self.group[ITEMS_ARRAY], self.commit["n_items"], items)
            self._commit({
                "n_rows": n0 + self._buffered_rows,
                "n_items": self.commit["n_items"] + items.size,
                "n_dropped_nonfinite": self.commit["n_dropped_nonfinite"] + self._pending_dropped,
            })  # fmt: skip
        self._buffer.clear()
        self._buffered_rows = 0
        self._pending_dropped = 0

    def close(self, complete: bool = True) -> None:
        """Flush; with ``complete`` mark the harvest as finished."""
        self.flush()
        if complete and not self.commit["complete"]:
            self._commit({"complete": True})

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(complete=exc_type is None)


def _open_one(path: Path) -> xr.Dataset:
    """One store as a lazy Dataset of its committed rows.

    Built array by array (not with ``xr.open_zarr``): after a killed write the
    arrays may be longer than the commit, and by different amounts.
    """
    import dask.array as da
    from dask.base import tokenize

    rec = read_commit(path)
    with _quiet_zarr():
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = {k: v for k, v in group.attrs.items() if k != COMMIT_ATTR}
        data_vars, coords = {}, {}
        for name in rec["arrays"]:
            if name == ITEMS_ARRAY:
                continue
            arr = group[name]
            n = rec["n_rows"]
            x = da.from_zarr(arr, name=f"sciinterp-{name}-{tokenize(str(path.resolve()), name, n, rec)}")[:n]
            var_attrs = {k: v for k, v in arr.attrs.items() if k != "coordinates"}
            if var_attrs.get(DTYPE_ATTR) == "bfloat16":
                x = (x.astype(np.uint32) << 16).view(np.float32)
            if x.dtype.kind == "T":  # numpy's StringDType breaks .astype(str), pandas, netCDF: use objects
                x = x.astype(object)
            target = data_vars if arr.ndim == 2 else coords
            target[name] = xr.Variable(arr.metadata.dimension_names, x, var_attrs)
    ds = xr.Dataset(data_vars, coords, attrs)
    ds.attrs.update(
        complete=rec["complete"], n_dropped_nonfinite=rec["n_dropped_nonfinite"], format_version=FORMAT_VERSION
    )
    return ds


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a store lazily (dask-backed) as an ``xarray.Dataset`` of committed rows.

    Hooks are data variables ``(token, d_<hook>)``; domain coordinates are
    coordinates along ``token``; provenance is in ``attrs`` (plus ``complete``
    and ``n_dropped_nonfinite``).  ``path`` may also be a directory of parts
    written by several processes (:func:`part_path`); they are concatenated
    along ``token`` in rank order.  ``bfloat16``/``float16`` stores are decoded
    to ``float32`` / kept ``float16`` on access.
    """
    parts = store_parts(path)
    if len(parts) == 1 and parts[0] == Path(path):
        return _open_one(parts[0])
    dss = [_open_one(p) for p in parts]
    ref = dss[0]
    for p, ds in zip(parts[1:], dss[1:]):
        if dict(ds.sizes, token=0) != dict(ref.sizes, token=0) or set(ds.coords) != set(ref.coords):
            raise StoreError(
                f"parts {parts[0].name} and {p.name} of {path} differ: hooks/widths {dict(ref.sizes)} vs "
                f"{dict(ds.sizes)}, coords {sorted(ref.coords)} vs {sorted(ds.coords)}"
            )
    ds = xr.concat(dss, dim="token", data_vars="all", coords="all", join="exact", combine_attrs="drop_conflicts")
    world = int(parts[0].name.split("-of-")[1].removesuffix(".zarr"))
    ds.attrs.update(
        complete=all(d.attrs["complete"] for d in dss) and len(parts) == world,
        n_dropped_nonfinite=sum(d.attrs["n_dropped_nonfinite"] for d in dss),
        parts=[p.name for p in parts],
    )
    return ds


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store (or a directory of parts) after checking it is one."""
    store_parts(path)
    shutil.rmtree(path)
