"""Activation store: labelled activations on disk, xarray over zarr (v3).

Layout of one store (a zarr v3 group, ``*.zarr``; see ``docs/store.md``)::

    <hook>            (token, d_<hook>)   activations, one array per hook point
    <coord>           (token,)            domain coordinates (protein, position, ...); string
                                          coordinates as int32 codes into ...
    sciinterp_categories_<coord>          ... their distinct values, in order of first appearance
    sciinterp_items   (sciinterp_item,)   keys of the items stored so far, in order
    zarr.json         group attributes: provenance + the commit record ``sciinterp_commit``

The writer writes the zarr v3 files itself (:mod:`sciinterp.store_chunks`: zarr-python's
per-operation cost dwarfed a small model's forward pass); readers use zarr.  Rows go into
one chunk buffer per array and every chunk is written when it fills (no chunk is read
back); items are committed whole (proteins, time steps).  At each commit the arrays'
shapes and then the commit record (rows, items, categories, arrays so far) in the
group's ``zarr.json`` are replaced atomically (temporary name, then rename), as is any
chunk file holding committed rows.  Rows and items beyond the commit are ignored by
readers and cut away when a writer reopens the store, so a harvest killed at any
moment leaves a readable store, and rerunning it skips the committed items:
every token ends up stored exactly once.

Activations that arrive column-major (the ``(token, d)`` transpose of a contiguous
``(d, token)`` block, as channels-first models produce them) are stored column-major
(zarr's ``transpose`` codec), so harvesting does no element-wise transpose; readers see
``(token, d)`` either way.  Coordinate arrays have ``COORD_CHUNK_FACTOR`` times larger chunks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import xarray as xr
import zarr

from sciinterp.adapter import TokenBatch
from sciinterp.store_chunks import ChunkedArray, atomic_write, auto_chunk_rows
from sciinterp.store_format import (
    _ITEM_CHUNK,
    CATEGORIES_ATTR,
    _NUMPY_DTYPE,
    COMMIT_ATTR,
    DTYPE_ATTR,
    FORMAT_VERSION,
    ITEMS_ARRAY,
    Dtype,
    StoreError,
    _finite_rows,
    COMPRESSIONS,
    categories_array,
    factorize_runs,
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
    "auto_chunk_rows",
    "decode_rows",
    "is_store",
    "open_store",
    "part_path",
    "read_commit",
    "store_parts",
    "stored_items",
]

log = logging.getLogger(__name__)

COORD_CHUNK_FACTOR = 4
"""Coordinate arrays have chunks of ``COORD_CHUNK_FACTOR * chunk_rows`` rows: they are small
(4-8 bytes a token), and every chunk is a file, which costs more to create than to fill."""


class _Rows(NamedTuple):
    """A checked batch in on-disk form."""

    acts: dict[str, np.ndarray]
    coords: dict[str, np.ndarray]
    items: list[str]
    n_dropped: int = 0


class _Pending(NamedTuple):
    """Items of a batch pushed to the arrays but not committed yet."""

    items: list[str]
    end: int
    """Row after the batch's last row."""
    n_dropped: int


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
        Rows per zarr chunk along ``token``.  Default: chunks of about 8 MiB of the
        widest hook (:func:`auto_chunk_rows`: 8,192 to 65,536 rows); on resume, the
        store's own.
    flush_rows
        Uncommitted rows that trigger a commit of the items whose rows lie in
        whole chunks already written (chunks are written as they fill; the partly
        filled last one waits, so an activation chunk is written once).  Default:
        whole chunks up to about 64 MiB (1 to 4 chunks).  :meth:`flush` and
        :meth:`close` write and commit everything.
    attrs
        Provenance written into the store's attributes (adapter, model, hooks,
        data source, resolved config...).  On resume, ``model_checksum``,
        ``hooks`` and ``adapter`` must match what the store holds.
    nonfinite
        ``"error"`` raises on NaN/inf activations (checked after conversion to
        ``dtype``, so float16 overflow counts); ``"drop"`` drops those tokens and
        counts them (``open_store(path).attrs["n_dropped_nonfinite"]``).
    compression
        Codec of the activation arrays: ``"lz4"`` (Blosc lz4, bit-shuffled: ~12-16 %
        smaller than raw float32, ~25 % for bfloat16, at ~2-3x the raw write
        cost), ``"zstd"`` (~13 % / ~25 % smaller, ~4x the raw write cost) or
        ``"none"`` (the cheapest to write and read).  Readers need not know.
        Coordinates are always zstd.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: Dtype = "float32",
        chunk_rows: int | None = None,
        flush_rows: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        nonfinite: Literal["error", "drop"] = "error",
        compression: Literal["lz4", "zstd", "none"] = "lz4",
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        self.compression = compression
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(f"dtype must be one of {sorted(_NUMPY_DTYPE)}, got {dtype!r}")
        if nonfinite not in ("error", "drop"):
            raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
        if (chunk_rows is not None and chunk_rows < 1) or (flush_rows is not None and flush_rows < 1):
            raise ValueError(f"chunk_rows and flush_rows must be >= 1, got {chunk_rows} and {flush_rows}")
        self.flush_rows = flush_rows
        self.path = Path(path)
        self.dtype = dtype
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        self.nonfinite = nonfinite
        self._pending: list[_Pending] = []  # batches pushed to the arrays, not committed yet
        self._arrays: dict[str, ChunkedArray] = {}  # written directly (store_chunks), kept across flushes
        self._categories: dict[str, dict[str, int]] = {}  # string coord -> {value: code}
        self._last_encoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # coord -> (read-only values, codes)
        self._schema: dict[str, dict[str, Any]] | None = None  # {"hooks": {h: d}, "coords": {c: kind}}
        attrs = _jsonable(attrs or {})
        if is_store(self.path) or (self.path / "sciinterp_commit.json").exists():
            self._open_existing(attrs)
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(f"{self.path} exists and is not a sciinterp activation store; choose a new path")
            commit = {"format_version": FORMAT_VERSION, "n_rows": 0, "n_items": 0, "complete": False,
                      "n_dropped_nonfinite": 0, "arrays": []}  # fmt: skip
            self._group_meta = {"attributes": {**attrs, DTYPE_ATTR: dtype}, "zarr_format": 3, "node_type": "group"}
            self.path.mkdir(parents=True, exist_ok=True)
            self.commit = {}
            self._commit(commit)
            self._done: set[str] = set()
        self._pushed = self.commit["n_rows"]  # rows pushed to the arrays (committed or not)

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
            n_cats = self.commit.get("categories", {})
            cat_of = {categories_array(c): c for c in n_cats}
            for name in self.commit["arrays"]:
                arr = arrays[name]
                keep = n_items if name == ITEMS_ARRAY else n_cats[cat_of[name]] if name in cat_of else n
                if arr.shape[0] != keep:  # rows past the last commit: a killed write
                    arr.resize((keep, *arr.shape[1:]))
                self._arrays[name] = ChunkedArray.open(self.path / name)
            for c, k in n_cats.items():
                values = arrays[categories_array(c)][:k] if k else []
                self._categories[c] = {str(v): i for i, v in enumerate(values)}
            for partial in self.path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
            if self.commit["arrays"]:
                if self.chunk_rows is None:
                    self.chunk_rows = next(int(arrays[n].chunks[0]) for n in self.commit["arrays"] if arrays[n].ndim == 2)
                self._schema = {
                    "hooks": {h: arrays[h].shape[1] for h in self.commit["arrays"] if arrays[h].ndim == 2},
                    "coords": {
                        c: "str" if c in n_cats else _kind(np.empty(0, arrays[c].dtype))
                        for c in self.commit["arrays"]
                        if arrays[c].ndim == 1 and c != ITEMS_ARRAY and c not in cat_of
                    },
                }
        self._group_meta = json.loads((self.path / "zarr.json").read_text())
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
        """Rows committed plus rows appended since."""
        return self._pushed

    def append(self, batch: TokenBatch) -> None:
        """Check one batch and push its rows to the arrays (whole chunks are written as they fill).

        The caller may reuse the batch's arrays afterwards.  Commits whenever ``flush_rows``
        rows are uncommitted.
        """
        dup = self._done.intersection(batch.items)
        if dup:
            raise StoreError(f"{self.path}: items already stored: {sorted(dup)[:5]}")
        self._check_schema(batch)
        rows = _Rows(
            {h: _to_numpy(x, self.dtype) for h, x in batch.acts.items()},
            {c: np.asarray(v) for c, v in batch.coords.items()},
            list(batch.items),
        )
        rows = self._encode(self._check_finite(rows))
        if self.chunk_rows is None:
            self.chunk_rows = auto_chunk_rows(max(a.shape[1] * a.itemsize for a in rows.acts.values()))
        if not self.commit["arrays"]:
            self._create_arrays(rows)
        with _quiet_zarr():
            for name, values in (*rows.acts.items(), *rows.coords.items()):
                self._arrays[name].push(values)
        self._pushed += len(next(iter(rows.acts.values())))
        self._pending.append(_Pending(rows.items, self._pushed, rows.n_dropped))
        self._done.update(batch.items)
        if self.flush_rows is None:
            row_bytes = sum(a.shape[1] * a.itemsize for a in rows.acts.values())
            self.flush_rows = self.chunk_rows * max(1, min(4, (64 << 20) // max(1, self.chunk_rows * row_bytes)))
        if self._pushed - self.commit["n_rows"] >= self.flush_rows:
            self._flush(whole_chunks=True)

    def _encode(self, rows: _Rows) -> _Rows:
        """String coordinates -> int32 codes; new values get the next codes."""
        if not self.commit["arrays"] and not self._categories:  # a new store: encode every string coordinate
            self._categories = {c: {} for c, v in rows.coords.items() if _kind(v) == "str"}
        coords = dict(rows.coords)
        for c, table in self._categories.items():
            values = coords[c]
            last = self._last_encoded.get(c)
            if last is not None and last[0] is values:  # the same read-only array as the last batch's
                coords[c] = last[1]
                continue
            codes, uniques = factorize_runs(values)
            lut = np.array([table.setdefault(str(u), len(table)) for u in uniques], dtype=np.int32)
            coords[c] = lut[codes] if codes.size else np.zeros(0, np.int32)
            if not values.flags.writeable:  # an adapter's cached column: encode it once
                self._last_encoded[c] = (values, coords[c])
        return rows._replace(coords=coords)

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
        log.warning("dropped %d tokens with non-finite activations in items %s", n_bad, rows.items[:3])
        acts, coords = {h: a[ok] for h, a in rows.acts.items()}, {k: v[ok] for k, v in rows.coords.items()}
        return _Rows(acts, coords, rows.items, n_bad)

    def _create_arrays(self, batch: _Rows) -> None:
        coord_names = " ".join(batch.coords)
        names = [*batch.acts, *batch.coords, *map(categories_array, self._categories), ITEMS_ARRAY]
        for name in names:
            if (self.path / name).exists():  # left by a killed first flush (not in the commit)
                shutil.rmtree(self.path / name)
        make = partial(ChunkedArray.create, chunk_rows=self.chunk_rows)
        coord = partial(ChunkedArray.create, width=(), chunk_rows=self.chunk_rows * COORD_CHUNK_FACTOR,
                        dimension_names=["token"])  # fmt: skip
        strings = partial(ChunkedArray.create, width=(), chunk_rows=_ITEM_CHUNK, dtype="string")
        arrays = {}
        for hook, x in batch.acts.items():
            # column-major input (channels-first models) is stored column-major: no transpose when writing
            order = "F" if x.shape[1] > 1 and not x.flags.c_contiguous and x.T.flags.c_contiguous else "C"
            arrays[hook] = make(self.path / hook, width=(x.shape[1],), dtype=_NUMPY_DTYPE[self.dtype],
                                compression=self.compression, order=order, dimension_names=["token", f"d_{hook}"],
                                attributes={"coordinates": coord_names, DTYPE_ATTR: self.dtype})  # fmt: skip
        for name, values in batch.coords.items():
            if name in self._categories:
                cats = categories_array(name)
                arrays[name] = coord(self.path / name, dtype=np.int32, attributes={CATEGORIES_ATTR: cats})
                arrays[cats] = strings(self.path / cats, dimension_names=[cats])
            else:
                dtype = "string" if values.dtype.kind in "USOT" else values.dtype
                arrays[name] = coord(self.path / name, dtype=dtype)
        arrays[ITEMS_ARRAY] = strings(self.path / ITEMS_ARRAY, dimension_names=["sciinterp_item"])
        self._arrays = {n: arrays[n] for n in names}
        self._commit({"arrays": names, "categories": {c: 0 for c in self._categories}, "format_version": FORMAT_VERSION})

    def _commit(self, changes: Mapping[str, Any]) -> None:
        """Record ``changes`` in the commit: one atomic rewrite of the group's zarr.json."""
        self.commit = {**self.commit, **changes}
        self._group_meta["attributes"][COMMIT_ATTR] = self.commit
        atomic_write(self.path / "zarr.json", json.dumps(self._group_meta, indent=2).encode())

    def flush(self) -> None:
        """Write every buffered row (the last chunk may be partial), then commit them atomically."""
        self._flush(whole_chunks=False)

    def _flush(self, whole_chunks: bool) -> None:
        """Commit the items whose rows are all on disk: in whole chunks of every hook, or (``whole_chunks=False``) all.

        Rows are written before the commit that covers them; rows past the commit are
        invisible to readers and cut on resume, so a kill at any moment is safe.
        """
        if not self._pending:
            return
        hooks = self._schema["hooks"] if self._schema else {}
        token_arrays = [*hooks, *self._schema["coords"]] if self._schema else []
        if not whole_chunks:
            for name in token_arrays:
                self._arrays[name].sync()
        limit = min(self._arrays[h].rows for h in hooks)
        n_done = int(np.searchsorted([p.end for p in self._pending], limit, side="right"))
        if not n_done:
            return
        done, stop = self._pending[:n_done], self._pending[n_done - 1].end
        with _quiet_zarr():
            for name in token_arrays:  # coordinates have larger chunks than activations: write their last one
                if self._arrays[name].rows < stop:
                    self._arrays[name].sync()
            n_cats = {}
            for c, table in self._categories.items():
                cats = self._arrays[categories_array(c)]
                if len(table) > cats.pushed:
                    cats.push(np.array(list(table)[cats.pushed :], dtype=object))
                cats.sync()
                n_cats[c] = len(table)
            items = self._arrays[ITEMS_ARRAY]
            items.push(np.array([i for p in done for i in p.items], dtype=object))
            items.sync()
            for arr in self._arrays.values():
                arr.write_meta()
            self._commit({
                "n_rows": int(stop),
                "n_items": items.rows,
                "n_dropped_nonfinite": self.commit["n_dropped_nonfinite"] + sum(p.n_dropped for p in done),
                **({"categories": n_cats} if n_cats else {}),
            })  # fmt: skip
        del self._pending[:n_done]

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
        n_cats = rec.get("categories", {})
        for name in rec["arrays"]:
            if name == ITEMS_ARRAY or name in map(categories_array, n_cats):
                continue
            arr = group[name]
            n = rec["n_rows"]
            x = da.from_zarr(arr, name=f"sciinterp-{name}-{tokenize(str(path.resolve()), name, n, rec)}")[:n]
            var_attrs = {k: v for k, v in arr.attrs.items() if k not in ("coordinates", CATEGORIES_ATTR)}
            if name in n_cats:  # dictionary-encoded strings: decode lazily, block by block
                k = n_cats[name]
                cats = np.asarray(group[categories_array(name)][:k] if k else [], dtype=object)
                x = x.map_blocks(cats.take, dtype=object)
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
