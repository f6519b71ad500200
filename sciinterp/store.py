"""Activation store: labelled activations on disk, xarray over zarr (v3).

Layout of one store (a zarr group, ``*.zarr``)::

    <hook>          (token, d_<hook>)   activations, one array per hook point
    <coord>         (token,)            domain coordinates (protein, position, ...)
    sciinterp_commit.json               rows and items committed so far

Every array is appended in whole items (proteins, time steps).  After each
flush the commit file is replaced atomically (write to a temporary name, then
rename); zarr's local store writes every chunk the same way.  Rows beyond the
committed count are ignored and cut away on the next open, so a harvest killed
at any moment leaves a readable store, and rerunning it skips the committed
items: every token ends up stored exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
import zarr

from sciinterp.adapter import TokenBatch

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "StoreWriter",
    "open_store",
    "part_path",
    "read_commit",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
COMMIT_FILE = "sciinterp_commit.json"
Dtype = Literal["float32", "float16", "bfloat16"]
_NUMPY_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


class StoreError(ValueError):
    """A store is missing, malformed, or does not match what is being written."""


def _atomic_write_json(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_commit(path: str | os.PathLike) -> dict[str, Any]:
    """The commit record of a store; raises :class:`StoreError` if ``path`` is not one."""
    path = Path(path)
    commit = path / COMMIT_FILE
    if not commit.is_file():
        raise StoreError(f"{path} is not a sciinterp activation store (no {COMMIT_FILE})")
    rec = json.loads(commit.read_text())
    version = rec.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path} was written with store format {version}, this sciinterp reads "
            f"format {FORMAT_VERSION}; re-harvest it or use a matching sciinterp version"
        )
    return rec


def _to_numpy(x: torch.Tensor, dtype: Dtype) -> np.ndarray:
    x = x.detach()
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.uint16).cpu().numpy()
    return x.to(getattr(torch, dtype)).cpu().numpy()


class StoreWriter:
    """Append :class:`TokenBatch` es to a store, resuming one that exists.

    Parameters
    ----------
    path
        Directory of the zarr store (created if missing).
    dtype
        On-disk activation dtype; ``bfloat16`` is stored as ``uint16`` bits.
    chunk_rows
        Rows per zarr chunk along ``token``; also the flush size.
    attrs
        Provenance written into the store's attributes (adapter, model, hooks,
        data source, resolved config...).  On resume, ``model_checksum`` and
        ``hooks`` must match what the store holds.
    nonfinite
        ``"error"`` raises on NaN/inf activations; ``"drop"`` drops those tokens
        and counts them in the attribute ``n_dropped_nonfinite``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: Dtype = "float32",
        chunk_rows: int = 8192,
        attrs: Mapping[str, Any] | None = None,
        nonfinite: Literal["error", "drop"] = "error",
    ) -> None:
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(f"dtype must be one of {sorted(_NUMPY_DTYPE)}, got {dtype!r}")
        if nonfinite not in ("error", "drop"):
            raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
        self.path = Path(path)
        self.dtype = dtype
        self.chunk_rows = int(chunk_rows)
        self.nonfinite = nonfinite
        self._buffer: list[TokenBatch] = []
        self._buffered_rows = 0
        attrs = dict(attrs or {})
        if (self.path / COMMIT_FILE).exists():
            self._open_existing(attrs)
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(f"{self.path} exists and is not a sciinterp activation store")
            self.group = zarr.open_group(self.path, mode="w", zarr_format=3)
            self.group.attrs.update({**attrs, "sciinterp_dtype": dtype, "n_dropped_nonfinite": 0})
            self.commit: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "n_rows": 0,
                "items": [],
                "complete": False,
            }
            _atomic_write_json(self.path / COMMIT_FILE, self.commit)
        self._done = set(self.commit["items"])

    # -- opening ---------------------------------------------------------
    def _open_existing(self, attrs: Mapping[str, Any]) -> None:
        self.commit = read_commit(self.path)
        self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        stored = dict(self.group.attrs)
        if stored.get("sciinterp_dtype") != self.dtype:
            raise StoreError(
                f"{self.path} holds {stored.get('sciinterp_dtype')} activations, asked to append {self.dtype}"
            )
        for key in ("model_checksum", "hooks", "adapter"):
            if key in attrs and key in stored and stored[key] != attrs[key]:
                raise StoreError(
                    f"{self.path}: stored {key}={stored[key]!r} but this harvest has {attrs[key]!r}; "
                    "write to a new store instead of mixing them"
                )
        n = self.commit["n_rows"]
        for name, arr in self.group.arrays():
            if arr.shape[0] != n:  # rows past the last commit: a killed write
                arr.resize((n, *arr.shape[1:]))
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)
        if n:
            log.info("resuming %s: %d rows, %d items already stored", self.path, n, len(self.commit["items"]))

    # -- writing ---------------------------------------------------------
    @property
    def done_items(self) -> frozenset[str]:
        """Items already stored (committed or buffered); pass as ``skip`` to ``harvest``."""
        return frozenset(self._done)

    @property
    def n_rows(self) -> int:
        return self.commit["n_rows"] + self._buffered_rows

    def append(self, batch: TokenBatch) -> None:
        """Buffer one batch; flushes whenever ``chunk_rows`` rows are waiting."""
        dup = self._done.intersection(batch.items)
        if dup:
            raise StoreError(f"{self.path}: items already stored: {sorted(dup)[:5]}")
        batch = self._check_finite(batch)
        self._buffer.append(batch)
        self._buffered_rows += batch.n_tokens
        self._done.update(batch.items)
        if self._buffered_rows >= self.chunk_rows:
            self.flush()

    def _check_finite(self, batch: TokenBatch) -> TokenBatch:
        ok = torch.ones(batch.n_tokens, dtype=torch.bool)
        for hook, x in batch.acts.items():
            fin = torch.isfinite(x).all(dim=1).cpu()
            if not fin.all() and self.nonfinite == "error":
                bad = int((~fin).nonzero()[0])
                where = {k: v[bad] for k, v in batch.coords.items()}
                raise StoreError(
                    f"non-finite activation at hook {hook!r}, token {where}; "
                    "set nonfinite='drop' to drop such tokens instead"
                )
            ok &= fin
        if ok.all():
            return batch
        n_bad = int((~ok).sum())
        self.group.attrs["n_dropped_nonfinite"] = int(self.group.attrs["n_dropped_nonfinite"]) + n_bad
        log.warning("dropped %d tokens with non-finite activations", n_bad)
        keep = ok.numpy()
        return TokenBatch(
            acts={h: x[ok.to(x.device)] for h, x in batch.acts.items()},
            coords={k: np.asarray(v)[keep] for k, v in batch.coords.items()},
            items=batch.items,
        )

    def _ensure_arrays(self, batch: TokenBatch) -> None:
        existing = dict(self.group.arrays())
        coord_names = " ".join(batch.coords)
        for hook, x in batch.acts.items():
            d = x.shape[1]
            if hook in existing:
                if existing[hook].shape[1] != d:
                    raise StoreError(
                        f"{self.path}: hook {hook!r} is stored with width {existing[hook].shape[1]}, "
                        f"cannot append width {d}"
                    )
                continue
            self.group.create_array(
                hook,
                shape=(0, d),
                chunks=(self.chunk_rows, d),
                dtype=_NUMPY_DTYPE[self.dtype],
                dimension_names=["token", f"d_{hook}"],
                attributes={"coordinates": coord_names, "sciinterp_dtype": self.dtype},
            )
        for name, values in batch.coords.items():
            if name in existing:
                continue
            values = np.asarray(values)
            dtype = str if values.dtype.kind in "USOT" else values.dtype
            self.group.create_array(
                name, shape=(0,), chunks=(self.chunk_rows,), dtype=dtype, dimension_names=["token"]
            )
        hooks = [h for h, a in self.group.arrays() if a.ndim == 2]
        coords = [c for c, a in self.group.arrays() if a.ndim == 1]
        missing = set(hooks) ^ set(batch.acts) or set(coords) ^ set(batch.coords)
        if missing:
            raise StoreError(
                f"{self.path}: batch has hooks {sorted(batch.acts)} and coords {sorted(batch.coords)}, "
                f"store has hooks {sorted(hooks)} and coords {sorted(coords)}"
            )

    def flush(self) -> None:
        """Write buffered rows, then commit them atomically."""
        if not self._buffer:
            return
        first = self._buffer[0]
        self._ensure_arrays(first)
        n0 = self.commit["n_rows"]
        n1 = n0 + self._buffered_rows
        for hook in first.acts:
            block = np.concatenate([_to_numpy(b.acts[hook], self.dtype) for b in self._buffer])
            arr = self.group[hook]
            arr.resize((n1, arr.shape[1]))
            arr[n0:n1] = block
        for name in first.coords:
            block = np.concatenate([np.asarray(b.coords[name]) for b in self._buffer])
            arr = self.group[name]
            arr.resize((n1,))
            arr[n0:n1] = block
        items = [i for b in self._buffer for i in b.items]
        self.commit = {**self.commit, "n_rows": n1, "items": self.commit["items"] + items}
        _atomic_write_json(self.path / COMMIT_FILE, self.commit)
        self._buffer.clear()
        self._buffered_rows = 0

    def close(self, complete: bool = True) -> None:
        """Flush; with ``complete`` mark the harvest as finished."""
        self.flush()
        if complete and not self.commit["complete"]:
            self.commit = {**self.commit, "complete": True}
            _atomic_write_json(self.path / COMMIT_FILE, self.commit)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(complete=exc_type is None)


def part_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """Where process ``rank`` of ``world`` writes its part of the store at ``path``."""
    return Path(path) / f"part-{rank:05d}-of-{world:05d}.zarr"


def _parts(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("part-*-of-*.zarr") if (p / COMMIT_FILE).is_file())


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a store lazily (dask-backed) as an ``xarray.Dataset`` of committed rows.

    ``path`` may also be a directory of parts written by several processes
    (:func:`part_path`); they are concatenated along ``token`` in rank order.
    ``bfloat16`` stores are decoded to ``float32`` on access.
    """
    path = Path(path)
    if not (path / COMMIT_FILE).exists() and (parts := _parts(path)):
        dss = [open_store(p) for p in parts]
        worlds = {p.name.split("-of-")[1] for p in parts}
        ds = xr.concat(dss, dim="token", data_vars="all", coords="all", join="exact", combine_attrs="drop_conflicts")
        ds.attrs["complete"] = all(d.attrs["complete"] for d in dss) and len(worlds) == 1 and len(parts) == int(
            worlds.pop().removesuffix(".zarr")
        )
        return ds
    rec = read_commit(path)
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3)
    ds = ds.isel(token=slice(0, rec["n_rows"]))
    for name, var in ds.data_vars.items():
        if var.attrs.get("sciinterp_dtype") == "bfloat16":
            bits = var.data.astype(np.uint32) << 16
            ds[name] = var.copy(data=bits.view(np.float32))
    ds.attrs["complete"] = rec["complete"]
    return ds


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store directory after checking it is one."""
    read_commit(path)
    shutil.rmtree(path)
