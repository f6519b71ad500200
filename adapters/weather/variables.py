"""Physical variables per token: the labels SAE features are linked to.

Follows the "Labels" contract of ``docs/architecture.md``: a builder takes the
store's tokens (only their coordinates ``time`` ISO str, ``lead`` int h,
``level`` float hPa or NaN, ``lat``, ``lon`` degrees, ``area_weight``) and
returns an ``xr.Dataset`` along the same ``token`` dim, same order; concepts
float32 1/0/NaN (``kind="concept"``), continuous float32 with ``units``
(``kind="continuous"``); ``attrs group="time"``, ``weight="area_weight"``.

Each token is matched to the gridded fields at its valid time (``time +
lead``), its level and the nearest grid point — vectorised index arithmetic,
no Python loop over tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from .cf_units import G0
from .derived import DERIVED, derive_fields
from .events import track_labels
from .static import Label, calendar_labels, land_labels

__all__ = ["TokenCoords", "physical_labels", "sample_fields", "token_coords"]

log = logging.getLogger(__name__)

_COORD_NAMES = ("time", "lead", "level", "lat", "lon", "area_weight")


class TokenCoords(NamedTuple):
    """Token coordinates as plain arrays, each ``(n_tokens,)``."""

    valid: np.ndarray
    """Valid time = initial time + lead, datetime64[ns]."""
    level: np.ndarray
    """Pressure level (hPa), NaN for single-level tokens."""
    lat: np.ndarray
    """Latitude (degrees north)."""
    lon: np.ndarray
    """Longitude (degrees east, [0, 360))."""


def token_coords(tokens: xr.Dataset) -> TokenCoords:
    """Read and check the weather coordinates of a store's tokens."""
    if "token" not in tokens.dims:
        raise ValueError(f"tokens have no 'token' dimension (dims {dict(tokens.sizes)})")
    missing = [c for c in ("time", "lat", "lon") if c not in tokens.coords]
    if missing:
        raise ValueError(f"tokens lack coordinate(s) {missing}; weather tokens need time, lead, level, lat, lon")
    n = tokens.sizes["token"]
    try:
        init = pd.to_datetime(np.asarray(tokens["time"].values)).values.astype("datetime64[ns]")
    except (ValueError, TypeError) as err:
        raise ValueError(f"token coordinate 'time' is not ISO 8601: {err}") from err
    if "lead" in tokens.coords:
        lead = np.asarray(tokens["lead"].values)
        if np.issubdtype(lead.dtype, np.timedelta64):
            lead_ns = lead.astype("timedelta64[ns]")
        else:
            lead_ns = (np.asarray(lead, dtype="float64") * 3600e9).astype("int64").astype("timedelta64[ns]")
    else:
        log.info("tokens have no 'lead' coordinate; using lead 0 h")
        lead_ns = np.zeros(n, dtype="timedelta64[ns]")
    level = np.asarray(tokens["level"].values, dtype="float64") if "level" in tokens.coords else np.full(n, np.nan)
    lat = np.asarray(tokens["lat"].values, dtype="float64")
    lon = np.mod(np.asarray(tokens["lon"].values, dtype="float64"), 360.0)
    if np.any(np.abs(lat) > 90):
        i = int(np.argmax(np.abs(lat)))
        raise ValueError(f"token {i} has lat {lat[i]} outside [-90, 90]")
    return TokenCoords(init + lead_ns, level, lat, lon)


def _nearest(grid: np.ndarray, values: np.ndarray, period: float | None = None) -> tuple[np.ndarray, float]:
    """Index of the nearest grid value for each value (via the distinct values), and the max offset."""
    uniq, inverse = np.unique(values, return_inverse=True)
    d = np.abs(uniq[:, None] - grid[None, :])
    if period is not None:
        d = np.minimum(d, period - d)
    idx = np.argmin(d, axis=1)
    return idx[inverse.ravel()], float(d[np.arange(uniq.size), idx].max()) if uniq.size else 0.0


class _Index(NamedTuple):
    time: np.ndarray  # -1 where the valid time is not in the fields
    lat: np.ndarray
    lon: np.ndarray


def _grid_index(tc: TokenCoords, fields: xr.Dataset) -> _Index:
    if "time" in fields.dims:
        ftimes = pd.DatetimeIndex(fields["time"].values.astype("datetime64[ns]"))
        ti = ftimes.get_indexer(pd.DatetimeIndex(tc.valid))
    else:  # static fields
        ti = np.zeros(tc.lat.size, dtype="int64")
    yi, dy = _nearest(fields["lat"].values.astype("float64"), tc.lat)
    xi, dx = _nearest(np.mod(fields["lon"].values.astype("float64"), 360.0), tc.lon, 360.0)
    if max(dy, dx) > 1e-3:
        log.warning("tokens are off the field grid by up to %.3g deg lat, %.3g deg lon; using nearest points", dy, dx)
    n_missing = int((ti < 0).sum())
    if n_missing:
        log.warning("%d of %d tokens have valid times not in the fields; their labels are NaN", n_missing, ti.size)
    return _Index(ti, yi, xi)


def _take(arr: np.ndarray, dims: tuple[str, ...], idx: _Index, level_idx: np.ndarray | None) -> np.ndarray:
    """Vectorised lookup of ``arr`` (dims among time, level, lat, lon) at each token."""
    n = idx.lat.size
    ok = np.ones(n, dtype=bool)
    pos = []
    for d in dims:
        if d == "time":
            ok &= idx.time >= 0
            pos.append(np.where(idx.time >= 0, idx.time, 0))
        elif d == "level":
            assert level_idx is not None
            ok &= level_idx >= 0
            pos.append(np.where(level_idx >= 0, level_idx, 0))
        elif d == "lat":
            pos.append(idx.lat)
        elif d == "lon":
            pos.append(idx.lon)
        else:
            raise ValueError(f"field dimension '{d}' is not one of time, level, lat, lon")
    vals = arr[tuple(pos)].astype("float32")
    vals[~ok] = np.nan
    return vals


def sample_fields(
    tokens: xr.Dataset,
    fields: xr.Dataset,
    *,
    levels: Sequence[float] | None = None,
) -> dict[str, Label]:
    """Each field's value at each token (valid time, level, nearest grid point).

    Parameters
    ----------
    tokens
        Store tokens (coords only are used).
    fields
        Gridded fields ``(time, [level,] lat, lon)`` as from `prepare_dataset`
        or `derive_fields`; a variable's ``attrs["kind"] == "concept"`` makes
        it a concept, otherwise it is continuous with its ``units``.
    levels
        When the tokens have no levels (all NaN, e.g. SFNO), 3-D fields become
        one variable per level, ``<name>_<level>`` (``z_500``); ``levels``
        restricts which (default: all of the fields' levels). When tokens have
        levels, each token reads its own level (NaN if absent or NaN).

    Returns
    -------
    dict[str, Label]
        One label per variable (per level) in ``fields``.
    """
    tc = token_coords(tokens)
    idx = _grid_index(tc, fields)
    per_level = bool(np.all(np.isnan(tc.level)))
    out: dict[str, Label] = {}
    lev_idx = None
    if "level" in fields.dims:
        flev = fields["level"].values.astype("float64")
        lev_idx = np.full(tc.level.size, -1)
        finite = np.isfinite(tc.level)
        if finite.any():
            li, _ = _nearest(flev, tc.level[finite])
            hit = np.isclose(flev[li], tc.level[finite], rtol=0, atol=1e-3)
            lev_idx[np.flatnonzero(finite)[hit]] = li[hit]
    for name, da in fields.data_vars.items():
        kind = "concept" if da.attrs.get("kind") == "concept" else "continuous"
        units = "1" if kind == "concept" else str(da.attrs.get("units", ""))
        long_name = str(da.attrs.get("long_name", name))
        arr = np.asarray(da.values)
        if "level" in da.dims and per_level:
            flev = da["level"].values.astype("float64")
            want = flev if levels is None else np.asarray(levels, dtype="float64")
            for lv in want:
                hit = np.flatnonzero(np.isclose(flev, lv, rtol=0, atol=1e-3))
                if hit.size == 0:
                    raise ValueError(f"field '{name}' has no level {lv:g} hPa (levels: {[float(x) for x in flev]})")
                li = np.full(tc.lat.size, hit[0])
                out[f"{name}_{lv:g}"] = Label(_take(arr, da.dims, idx, li), kind, units, f"{long_name} at {lv:g} hPa")
        else:
            out[str(name)] = Label(_take(arr, da.dims, idx, lev_idx), kind, units, long_name)
    return out


def _assemble(labels: Mapping[str, Label], tokens: xr.Dataset, attrs: Mapping[str, object]) -> xr.Dataset:
    data = {}
    for name, lab in labels.items():
        a = {"kind": lab.kind, "long_name": lab.long_name}
        if lab.kind == "continuous":
            a["units"] = lab.units
        data[name] = xr.DataArray(np.asarray(lab.values, dtype="float32"), dims="token", attrs=a)
    coords = {c: ("token", np.asarray(tokens[c].values)) for c in _COORD_NAMES if c in tokens.coords}
    ds = xr.Dataset(data, coords=coords, attrs={"group": "time", **attrs})
    if "area_weight" in tokens.coords:
        ds.attrs["weight"] = "area_weight"
    return ds


def _as_fields(fields: xr.Dataset | str | Path) -> xr.Dataset:
    """Open a path and CF-normalise fields that did not come from `prepare_dataset`."""
    from .cf import open_dataset, prepare_dataset

    if isinstance(fields, (str, Path)):
        fields = open_dataset(fields)
    if not isinstance(fields, xr.Dataset):
        raise TypeError(f"fields must be an xarray.Dataset or a path, got {type(fields).__name__}")
    if "cf_normalisation" in fields.attrs:
        return fields
    gridded = [str(v) for v, da in fields.data_vars.items() if da.ndim >= 2]
    if not gridded:
        raise ValueError(f"fields hold no gridded variables (variables: {sorted(map(str, fields.data_vars))})")
    return prepare_dataset(fields, gridded, nonfinite="mask")


def physical_labels(
    tokens: xr.Dataset,
    fields: xr.Dataset | str | Path | None,
    *,
    derived: Sequence[str] = DERIVED,
    levels: Sequence[float] | None = None,
    static: bool = True,
    land: bool = True,
    calendar: bool = True,
    hemisphere_aware: bool = False,
    events: pd.DataFrame | str | Path | None = None,
    event_masks: xr.Dataset | None = None,
    derive_kwargs: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Physical labels for weather tokens.

    Parameters
    ----------
    tokens
        The store's tokens (``open_store`` output; only coords are read).
    fields
        Gridded fields covering the tokens' valid times: a `prepare_dataset`
        output, or any CF dataset / file path (then normalised here with all
        its gridded variables, NaN kept); ``None`` for static/calendar/event
        labels only.
    derived
        Names from `derive_fields` to compute on the fields' grid (skipped
        when their inputs are missing).
    levels
        Levels to expand into ``<name>_<level>`` variables for level-less
        (SFNO) tokens; default all.
    static
        Add ``latitude`` (continuous, degrees_north), ``land_fraction``, ``land``
        and, when ``fields`` has ``zs`` (surface geopotential), ``orography``
        (m).
    land
        With ``static``: land fraction and the land/sea concept (leave out for idealised models
        without land, e.g. shallow water, where they would only echo latitude bands).
    calendar
        Add season concepts, ``tod_sin``/``tod_cos``, ``doy_sin``/``doy_cos``
        and ``daylight`` (see `static.calendar_labels`).
    hemisphere_aware
        Seasons as winter/spring/summer/autumn of the token's hemisphere.
    events
        Track table (CSV path or DataFrame: time, lat, lon, radius_km[, kind])
        → ``event_<kind>`` concepts.
    event_masks
        Gridded 0/1 masks ``(time, lat, lon)``; each variable ``v`` becomes
        concept ``event_<v>`` (NaN at valid times the masks lack).
    derive_kwargs
        Extra keyword arguments for `derive_fields` (``jet_threshold`` ...).

    Returns
    -------
    xr.Dataset
        Along ``token`` (same length and order as ``tokens``) with the token
        coordinates; ``attrs group="time"``, ``weight="area_weight"``.
    """
    tc = token_coords(tokens)
    labels: dict[str, Label] = {}

    def add(new: Mapping[str, Label]) -> None:
        for k, v in new.items():
            if k in labels:
                raise ValueError(f"label variable '{k}' is produced twice; rename the input field")
            labels[k] = v

    if fields is not None:
        fields = _as_fields(fields)
        base = fields
        if derived:
            extra = derive_fields(fields, list(derived), **dict(derive_kwargs or {}))
            base = xr.merge([fields.drop_vars("zs", errors="ignore"), extra], combine_attrs="override")
        else:
            base = fields.drop_vars("zs", errors="ignore")
        add(sample_fields(tokens, base, levels=levels))
    if static:
        add({"latitude": Label(tc.lat.astype("float32"), "continuous", "degrees_north", "latitude")})
        if land:
            add(land_labels(tc.lat, tc.lon))
        if fields is not None and "zs" in fields:
            orog = (fields["zs"] / G0).assign_attrs(units="m", long_name="orography (surface geopotential / g0)")
            if "time" in orog.dims:
                orog = orog.isel(time=0, drop=True)
            add(sample_fields(tokens, xr.Dataset({"orography": orog})))
    if calendar:
        add(calendar_labels(tc.valid, tc.lat, tc.lon, hemisphere_aware=hemisphere_aware))
    if events is not None:
        add(track_labels(tc.valid, tc.lat, tc.lon, events))
    if event_masks is not None:
        masks = event_masks.rename({v: f"event_{v}" for v in event_masks.data_vars})
        for v in masks.data_vars:
            masks[v].attrs["kind"] = "concept"
        add(sample_fields(tokens, masks))
    return _assemble(labels, tokens, {"derived": ",".join(derived) if fields is not None else ""})
