"""Feature store: an activation store encoded by an SAE into sparse codes, and per-feature summaries.

Layout of one feature store (a zarr v3 group, ``features.zarr``)::

    values          (token, k)   float32   active latent values (0 where padded)
    indices         (token, k)   int32     latent ids, ``-1`` pads rows with fewer active latents
    <coord>         (token,)               every token coordinate of the activation store

Group attrs: ``sae_dir``, ``d_sae``, ``hook``, ``k``, ``store`` (the activation store's path),
``n_tokens`` (of the store) and the commit record ``sciinterp_features_commit`` (rows written so far).
A latent is *active* on a token when its value is > 0.

Encoding streams the store ``batch_size`` rows at a time (memory bounded by one
batch); after each batch the commit record is replaced atomically, so a killed
run resumes where it stopped.  The commit lives in the group's ``zarr.json``, which zarr
replaces atomically (temporary name, then rename), as the activation store does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
import zarr
from tqdm.auto import tqdm

from sciinterp.sae.shape import d_sae_of
from sciinterp.store import open_store

__all__ = [
    "FEATURES_COMMIT",
    "SortedCodes",
    "column_of",
    "entries_to_codes",
    "encode_store",
    "feature_summary",
    "iter_codes",
    "make_features",
    "open_features",
    "sorted_codes",
    "subset_rows",
]

log = logging.getLogger(__name__)

FEATURES_COMMIT = "sciinterp_features_commit"
FORMAT_VERSION = 1


def _sae_device(sae: Any) -> torch.device:
    try:
        return next(iter(sae.parameters())).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _read_commit(path: Path) -> dict[str, Any]:
    import json

    meta = path / "zarr.json"
    rec = json.loads(meta.read_text()).get("attributes", {}).get(FEATURES_COMMIT) if meta.is_file() else None
    if not isinstance(rec, dict):
        raise FileNotFoundError(f"{path} is not a sciinterp feature store (no {FEATURES_COMMIT!r} in zarr.json)")
    if rec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: feature store format {rec.get('format_version')}, expected {FORMAT_VERSION}")
    return rec


def _is_features(path: Path) -> bool:
    try:
        _read_commit(path)
        return True
    except (FileNotFoundError, ValueError):
        return False


def encode_store(
    store: str | os.PathLike | xr.Dataset,
    sae: Any,
    hook: str,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 8192,
    progress: bool = True,
) -> Path:
    """Encode every token of an activation store into sparse SAE codes on disk.

    Parameters
    ----------
    store
        Activation store path or the dataset from :func:`sciinterp.store.open_store`.
    sae
        An SAE object (``encode(x) -> (values (B, k), indices (B, k))`` and ``d_sae``) or
        an SAE directory, loaded with ``sciinterp.sae.SparseAutoencoder.load(dir, hook=hook)``.
    hook
        The store variable to encode, shape ``(token, d_in)``.
    out_path
        Feature store directory (created; resumed if it holds a commit record for the same SAE and hook).
    batch_size
        Rows encoded and written per step; also the zarr chunk length along ``token``.

    Returns
    -------
    Path of the feature store.
    """
    out = Path(out_path)
    sae_dir = None
    if isinstance(sae, (str, os.PathLike)):
        from sciinterp.sae import SparseAutoencoder

        sae_dir = str(sae)
        sae = SparseAutoencoder.load(sae, hook=hook)
    sae_dir = sae_dir or str(getattr(sae, "path", None) or getattr(sae, "directory", None) or "")
    if not hasattr(sae, "encode"):  # splice takes encode_dense-only SAEs; a feature store needs sparse codes
        raise TypeError(f"{type(sae).__name__} is not an SAE for a feature store: it needs .encode(x) -> (values, indices)")
    d_sae = d_sae_of(sae)
    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    store_name = str(store) if not isinstance(store, xr.Dataset) else str(ds.attrs.get("path", "<dataset>"))
    if hook not in ds.data_vars:
        raise KeyError(f"hook {hook!r} is not in the activation store; it holds {sorted(ds.data_vars)}")
    x = ds[hook]
    if x.ndim != 2 or x.dims[0] != "token":
        raise ValueError(f"store variable {hook!r} has dims {x.dims}, expected ('token', d)")
    n = x.shape[0]
    coords = {c: ds[c] for c in ds.coords if ds[c].dims == ("token",)}
    attrs = {"sae_dir": sae_dir, "d_sae": d_sae, "hook": hook, "store": store_name, "n_tokens": n}

    if _is_features(out):
        rec = _read_commit(out)
        group = zarr.open_group(out, mode="r+", zarr_format=3)
        for key in ("d_sae", "hook", "sae_dir", "n_tokens"):
            if group.attrs.get(key) != attrs[key]:
                raise ValueError(
                    f"{out}: feature store has {key}={group.attrs.get(key)!r}, this run has {attrs[key]!r}; "
                    "write to a new path"
                )
        start = rec["n_rows"]
        for _, arr in group.arrays():
            if arr.shape[0] != start:
                arr.resize((start, *arr.shape[1:]))
        if start:
            log.info("resuming %s at row %d of %d", out, start, n)
    else:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a sciinterp feature store")
        group = zarr.open_group(out, mode="w", zarr_format=3)
        rec = {"format_version": FORMAT_VERSION, "n_rows": 0, "complete": False}
        group.attrs.update({**attrs, FEATURES_COMMIT: rec})
        start = 0

    device = _sae_device(sae)
    bar = tqdm(total=n, initial=start, desc=f"encode {hook}", unit="tok", disable=not progress)
    k = group.attrs.get("k")
    for i0 in range(start, n, batch_size):
        i1 = min(i0 + batch_size, n)
        xb = torch.from_numpy(np.ascontiguousarray(x[i0:i1].values, dtype=np.float32)).to(device)
        with torch.inference_mode():
            codes = sae.encode(xb)
        vals = codes[0].detach().float().cpu().numpy()
        idx = codes[1].detach().cpu().numpy().astype(np.int32)
        if vals.shape != idx.shape or vals.shape[0] != i1 - i0:
            raise ValueError(f"sae.encode returned values {vals.shape} and indices {idx.shape} for {i1 - i0} rows")
        vals = np.where(idx < 0, 0.0, vals).astype(np.float32)
        if k is None:
            k = int(vals.shape[1])
            group.attrs["k"] = k
            for name, dtype in (("values", np.float32), ("indices", np.int32)):
                group.create_array(name, shape=(0, k), chunks=(batch_size, k), dtype=dtype,
                                   dimension_names=["token", "k"], fill_value=0 if name == "values" else -1)
            for c, v in coords.items():
                dt = str if v.dtype.kind in "USOT" else v.dtype
                group.create_array(c, shape=(0,), chunks=(batch_size,), dtype=dt, dimension_names=["token"])
        if vals.shape[1] > k:  # ReLU/JumpReLU codes: the active count varies; widen, old rows pad with -1
            k = int(vals.shape[1])
            for name in ("values", "indices"):
                group[name].resize((group[name].shape[0], k))
            group.attrs["k"] = k
        elif vals.shape[1] < k:
            pad = k - vals.shape[1]
            vals = np.pad(vals, ((0, 0), (0, pad)))
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        for name, block in [("values", vals), ("indices", idx)] + [(c, v[i0:i1].values) for c, v in coords.items()]:
            arr = group[name]
            arr.resize((i1, *arr.shape[1:]))
            arr[i0:i1] = block
        rec = {**rec, "n_rows": i1}
        group.attrs[FEATURES_COMMIT] = rec
        bar.update(i1 - i0)
    bar.close()
    group.attrs[FEATURES_COMMIT] = {**rec, "complete": True}
    return out


def open_features(path: str | os.PathLike) -> xr.Dataset:
    """Open a feature store lazily: ``values``/``indices`` ``(token, k)`` plus the token coordinates."""
    path = Path(path)
    rec = _read_commit(path)
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3)
    ds = ds.isel(token=slice(0, rec["n_rows"]))
    coord_names = [v for v in ds.data_vars if v not in ("values", "indices")]
    ds = ds.set_coords(coord_names)
    ds.attrs.pop(FEATURES_COMMIT, None)
    ds.attrs["complete"] = rec["complete"]
    return ds


# -- reading codes ----------------------------------------------------------


def iter_codes(features: xr.Dataset, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row0, values (b, k) float32, indices (b, k) int32)`` blocks of a feature store in order."""
    for name in ("values", "indices"):
        if name not in features.data_vars:
            raise KeyError(f"feature dataset has no {name!r} variable (variables: {sorted(features.data_vars)})")
    n = features.sizes["token"]
    for i0 in range(0, n, chunk_rows):
        sl = slice(i0, min(i0 + chunk_rows, n))
        yield i0, np.asarray(features["values"][sl].values, np.float32), np.asarray(features["indices"][sl].values, np.int32)


class SortedCodes(NamedTuple):
    """Active entries of features ``f0 .. f0 + n_features - 1`` grouped by feature, ascending value.

    Entries of feature ``f0 + j`` are ``rows[indptr[j]:indptr[j+1]]`` (token rows) and ``values[...]``
    (float32, > 0, ascending) -- a CSC matrix ``(token, feature)`` whose columns are sorted by value.
    """

    indptr: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    f0: int
    n_features: int
    n_tokens: int


def sorted_codes(
    features: xr.Dataset, *, f0: int = 0, f1: int | None = None, rows: np.ndarray | None = None
) -> SortedCodes:
    """Collect the active entries of features ``[f0, f1)``, sorted by (feature, value).

    ``rows`` (optional bool mask over tokens) keeps only those tokens; the returned rows are then
    renumbered ``0 .. rows.sum() - 1`` in token order.  Memory: about 16 bytes per active entry.
    """
    d_sae = int(features.attrs["d_sae"])
    f1 = d_sae if f1 is None else f1
    n_tok = features.sizes["token"]
    local = None
    if rows is not None:
        rows = np.asarray(rows, bool)
        if rows.shape != (n_tok,):
            raise ValueError(f"rows mask has shape {rows.shape}, expected ({n_tok},)")
        local = np.cumsum(rows) - 1
    r_parts, c_parts, v_parts = [], [], []
    for i0, vals, idx in iter_codes(features):
        if idx.max(initial=-1) >= d_sae:
            raise ValueError(f"feature index {int(idx.max())} >= d_sae={d_sae} near token {i0}")
        keep = (idx >= f0) & (idx < f1) & (vals > 0)
        if rows is not None:
            keep &= rows[i0 : i0 + len(vals), None]
        r, j = np.nonzero(keep)
        r = r + i0
        r_parts.append(local[r] if local is not None else r)
        c_parts.append(idx[r - i0, j] - f0)
        v_parts.append(vals[r - i0, j])
    r = np.concatenate(r_parts) if r_parts else np.zeros(0, np.int64)
    c = np.concatenate(c_parts) if c_parts else np.zeros(0, np.int64)
    v = np.concatenate(v_parts) if v_parts else np.zeros(0, np.float32)
    n_out = int(rows.sum()) if rows is not None else n_tok
    return entries_to_codes(r, c, v, f1 - f0, n_out, f0=f0)


def entries_to_codes(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_features: int, n_tokens: int, *, f0: int = 0
) -> SortedCodes:
    """:class:`SortedCodes` from active entries ``(rows, cols - f0, values > 0)`` in any order."""
    c = np.asarray(cols).astype(np.uint64)
    v = np.asarray(values, np.float32)
    order = np.argsort((c << np.uint64(32)) | v.view(np.uint32).astype(np.uint64))
    indptr = np.zeros(n_features + 1, np.int64)
    np.cumsum(np.bincount(c.astype(np.int64), minlength=n_features), out=indptr[1:])
    return SortedCodes(indptr, np.asarray(rows)[order].astype(np.int32), v[order], f0, n_features, n_tokens)


def column_of(sc: SortedCodes) -> np.ndarray:
    """The feature column (``0 .. n_features - 1``, relative to ``f0``) of every entry of ``sc``."""
    return np.repeat(np.arange(sc.n_features), np.diff(sc.indptr))


def subset_rows(sc: SortedCodes, keep: np.ndarray) -> SortedCodes:
    """The entries of ``sc`` on tokens where ``keep`` (bool, (n_tokens,)) holds, rows renumbered in order."""
    keep = np.asarray(keep, bool)
    local = np.cumsum(keep) - 1
    mask = keep[sc.rows]
    cnt = np.bincount(column_of(sc)[mask], minlength=sc.n_features)
    indptr = np.zeros(sc.n_features + 1, np.int64)
    np.cumsum(cnt, out=indptr[1:])
    return SortedCodes(indptr, local[sc.rows[mask]].astype(np.int32), sc.values[mask], sc.f0, sc.n_features,
                       int(keep.sum()))


# -- summaries ---------------------------------------------------------------


def feature_summary(
    features: xr.Dataset,
    *,
    top_n: int = 20,
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99),
    feature_block: int = 4096,
) -> xr.Dataset:
    """Per-feature statistics and top-activating examples.

    Returns
    -------
    ``xr.Dataset`` along ``feature`` (``d_sae``): ``frequency`` (share of tokens active),
    ``n_active``, ``mean_active`` (mean value where active), ``mean`` (over all tokens), ``max``,
    ``quantile_value`` (feature, quantile) of active values; and along ``(feature, rank)``:
    ``top_value``, ``top_token`` (row, ``-1`` pads) and each token coordinate under its own name.
    """
    n_tok = features.sizes["token"]
    d_sae = int(features.attrs["d_sae"])
    qs = np.asarray(quantiles, float)
    out = {k: np.zeros(d_sae) for k in ("n_active", "sum", "max")}
    qv = np.full((d_sae, len(qs)), np.nan)
    top_v = np.full((d_sae, top_n), np.nan, np.float32)
    top_t = np.full((d_sae, top_n), -1, np.int64)
    for f0 in range(0, d_sae, feature_block):
        sc = sorted_codes(features, f0=f0, f1=min(f0 + feature_block, d_sae))
        cnt = np.diff(sc.indptr)
        sl = slice(f0, f0 + sc.n_features)
        out["n_active"][sl] = cnt
        csum = np.concatenate([[0.0], np.cumsum(sc.values, dtype=np.float64)])
        out["sum"][sl] = csum[sc.indptr[1:]] - csum[sc.indptr[:-1]]
        has = cnt > 0
        out["max"][sl] = np.where(has, sc.values[np.maximum(sc.indptr[1:] - 1, 0)] if sc.values.size else 0, 0.0)
        for j, q in enumerate(qs):  # lower empirical quantile of the active values
            pos = sc.indptr[:-1] + np.floor(q * np.maximum(cnt - 1, 0)).astype(np.int64)
            qv[sl, j] = np.where(has, sc.values[np.minimum(pos, max(sc.values.size - 1, 0))] if sc.values.size else 0, np.nan)
        for r in range(top_n):  # rank 0 = largest
            pos = sc.indptr[1:] - 1 - r
            ok = pos >= sc.indptr[:-1]
            top_v[sl][ok, r] = sc.values[pos[ok]]
            top_t[sl][ok, r] = sc.rows[pos[ok]]
    n_act = out["n_active"]
    data = {
        "frequency": ("feature", n_act / max(n_tok, 1)),
        "n_active": ("feature", n_act.astype(np.int64)),
        "mean_active": ("feature", np.where(n_act > 0, out["sum"] / np.maximum(n_act, 1), np.nan)),
        "mean": ("feature", out["sum"] / max(n_tok, 1)),
        "max": ("feature", out["max"]),
        "quantile_value": (("feature", "quantile"), qv),
        "top_value": (("feature", "rank"), top_v),
        "top_token": (("feature", "rank"), top_t),
    }
    valid = top_t >= 0
    for c in features.coords:
        if features[c].dims != ("token",):
            continue
        vals = np.asarray(features[c].values)
        picked = vals[np.where(valid, top_t, 0)]
        if vals.dtype.kind in "iu":
            picked = np.where(valid, picked, -1)
        elif vals.dtype.kind == "f":
            picked = np.where(valid, picked, np.nan)
        else:
            picked = np.where(valid, picked.astype(object), "").astype(str)
        data[c] = (("feature", "rank"), picked)
    return xr.Dataset(
        data,
        coords={"feature": np.arange(d_sae), "quantile": qs, "rank": np.arange(top_n)},
        attrs={"n_tokens": n_tok, "d_sae": d_sae, **{k: v for k, v in features.attrs.items() if k in ("sae_dir", "hook")}},
    )


def make_features(
    values: np.ndarray, indices: np.ndarray, d_sae: int, coords: dict[str, np.ndarray] | None = None, **attrs: Any
) -> xr.Dataset:
    """An in-memory feature dataset with the feature-store layout (for tests, benchmarks, notebooks)."""
    values = np.asarray(values, np.float32)
    indices = np.asarray(indices, np.int32)
    if values.shape != indices.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and indices {indices.shape} must both be (token, k)")
    return xr.Dataset(
        {"values": (("token", "k"), values), "indices": (("token", "k"), indices)},
        coords={c: ("token", np.asarray(v)) for c, v in (coords or {}).items()},
        attrs={"d_sae": int(d_sae), "k": values.shape[1], **attrs},
    )
