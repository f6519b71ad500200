"""User-defined event concepts (cyclones, atmospheric rivers, ...) from tracks or masks.

A track table has one row per event position: ``time`` (valid time), ``lat``,
``lon`` (degrees), ``radius_km`` and optionally ``kind`` (default
``"event"``). A token is in the event (concept 1) when its valid time equals a
row's time and its great-circle distance to that row's position is at most
``radius_km``; 0 at other times the table covers; NaN outside the table's time
range (the table says nothing there).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .static import Label

__all__ = ["EARTH_RADIUS_KM", "great_circle_km", "read_tracks", "track_labels"]

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (km, IUGG)."""
_REQUIRED = ("time", "lat", "lon", "radius_km")


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Haversine distance (km) between points given in degrees; broadcasts."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dphi = p2 - p1
    dlam = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def read_tracks(tracks: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Load and validate a track table (CSV path or DataFrame).

    Returns
    -------
    pd.DataFrame
        Columns ``time`` (datetime64[ns]), ``lat``, ``lon`` (float, lon in
        [0, 360)), ``radius_km`` (float > 0), ``kind`` (str, a valid
        identifier fragment).
    """
    where = str(tracks) if isinstance(tracks, (str, Path)) else "track table"
    df = pd.read_csv(tracks) if isinstance(tracks, (str, Path)) else tracks.copy()
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing}; needs {list(_REQUIRED)} (+ optional 'kind')")
    try:
        df["time"] = pd.to_datetime(df["time"]).astype("datetime64[ns]")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: column 'time' is not parseable as datetimes: {err}") from err
    for c in ("lat", "lon", "radius_km"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        bad = np.flatnonzero(~np.isfinite(df[c].to_numpy()))
        if bad.size:
            raise ValueError(f"{where}: column '{c}' has a missing/non-numeric value in row {bad[0]}")
    bad_lat = np.flatnonzero(np.abs(df["lat"].to_numpy()) > 90)
    if bad_lat.size:
        raise ValueError(f"{where}: lat {df['lat'].iloc[bad_lat[0]]} in row {bad_lat[0]} is outside [-90, 90]")
    bad_r = np.flatnonzero(df["radius_km"].to_numpy() <= 0)
    if bad_r.size:
        raise ValueError(f"{where}: radius_km must be > 0; row {bad_r[0]} has {df['radius_km'].iloc[bad_r[0]]}")
    df["lon"] = np.mod(df["lon"], 360.0)
    df["kind"] = df["kind"].astype(str) if "kind" in df.columns else "event"
    for k in df["kind"].unique():
        if not re.fullmatch(r"[A-Za-z0-9_]+", k):
            raise ValueError(f"{where}: kind {k!r} must be letters, digits or '_' (it names a label variable)")
    return df[["time", "lat", "lon", "radius_km", "kind"]]


def track_labels(
    valid: np.ndarray, lat: np.ndarray, lon: np.ndarray, tracks: pd.DataFrame | str | Path
) -> dict[str, Label]:
    """Event concepts ``event_<kind>`` per token from a track table.

    Parameters
    ----------
    valid
        Token valid times, datetime64[ns], ``(n,)``.
    lat, lon
        Token position (degrees), ``(n,)``.
    tracks
        Track table (see module docstring) or a CSV path.

    Returns
    -------
    dict[str, Label]
        One concept per kind: 1 within ``radius_km`` of a same-time track
        point, 0 at other covered times, NaN outside the table's time range.
    """
    df = read_tracks(tracks)
    valid = valid.astype("datetime64[ns]")
    times, inverse = np.unique(valid, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(times.size + 1))
    out: dict[str, Label] = {}
    for kind, rows in df.groupby("kind", sort=True):
        values = np.zeros(valid.shape, dtype="float32")
        t0, t1 = rows["time"].min().to_datetime64(), rows["time"].max().to_datetime64()
        values[(valid < t0) | (valid > t1)] = np.nan
        idx_of_time = {t: i for i, t in enumerate(times)}
        for t, pts in rows.groupby("time"):
            i = idx_of_time.get(np.datetime64(t, "ns"))
            if i is None:
                continue
            tok = order[bounds[i] : bounds[i + 1]]
            d = great_circle_km(lat[tok, None], lon[tok, None], pts["lat"].to_numpy()[None], pts["lon"].to_numpy()[None])
            inside = (d <= pts["radius_km"].to_numpy()[None]).any(axis=1)
            values[tok[inside]] = 1.0
        n_in = int(np.nansum(values))
        log.info("event %s: %d tokens inside, %d outside the table's time range", kind, n_in, int(np.isnan(values).sum()))
        out[f"event_{kind}"] = Label(values, "concept", "1", f"within radius of a '{kind}' track point")
    return out
