"""Static and calendar labels per token: latitude, land/sea, seasons, time of day.

All functions take plain arrays of token coordinates (``lat``, ``lon`` in
degrees, ``valid`` datetime64) and return ``{name: float32 array}`` plus the
attrs to attach; `variables.physical_labels` assembles them.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["LAND_FRACTION_FILE", "Label", "build_land_fraction", "calendar_labels", "land_labels", "season_index"]

log = logging.getLogger(__name__)

SEASONS = ("DJF", "MAM", "JJA", "SON")
_HEMI_SEASONS = ("winter", "spring", "summer", "autumn")


class Label(NamedTuple):
    """One label variable before it becomes an ``xr.DataArray``."""

    values: np.ndarray
    """``(n_tokens,)`` float32; NaN unknown."""
    kind: str
    """``"concept"`` (1/0/NaN) or ``"continuous"``."""
    units: str
    """Units (``"1"`` for concepts and dimensionless values)."""
    long_name: str
    """What it is."""


def season_index(valid: np.ndarray) -> np.ndarray:
    """Meteorological season of each time: 0 DJF, 1 MAM, 2 JJA, 3 SON (int, ``(n,)``)."""
    month = valid.astype("datetime64[M]").astype(int) % 12 + 1
    return (month % 12) // 3


def calendar_labels(
    valid: np.ndarray, lat: np.ndarray, lon: np.ndarray, *, hemisphere_aware: bool = False
) -> dict[str, Label]:
    """Season concepts, time-of-day and day-of-year phases, daylight.

    Parameters
    ----------
    valid
        Valid times, datetime64, ``(n,)``.
    lat, lon
        Token position (degrees), ``(n,)``.
    hemisphere_aware
        ``False``: concepts ``season_DJF`` ... ``season_SON`` by calendar.
        ``True``: ``season_winter`` ... ``season_autumn`` with the southern
        hemisphere (lat < 0) shifted by half a year (DJF is southern summer).

    Returns
    -------
    dict[str, Label]
        Seasons (concepts); ``tod_sin``, ``tod_cos`` of local solar time
        (UTC + lon/15 h, period 24 h); ``doy_sin``, ``doy_cos`` (period
        365.2425 d); ``daylight`` (concept: sun above the horizon, from the
        declination and hour angle, ignoring refraction).
    """
    season = season_index(valid)
    out: dict[str, Label] = {}
    if hemisphere_aware:
        # DJF is winter (0) in the north, summer (2) in the south.
        hemi = np.where(lat >= 0, season, (season + 2) % 4)
        for i, name in enumerate(_HEMI_SEASONS):
            out[f"season_{name}"] = Label(
                (hemi == i).astype("float32"), "concept", "1", f"{name} of the token's hemisphere"
            )
    else:
        for i, name in enumerate(SEASONS):
            out[f"season_{name}"] = Label((season == i).astype("float32"), "concept", "1", f"valid time in {name}")
    day_start = valid.astype("datetime64[D]")
    utc_hours = (valid - day_start).astype("timedelta64[s]").astype("float64") / 3600.0
    lst = np.mod(utc_hours + np.mod(lon, 360.0) / 15.0, 24.0)
    out["tod_sin"] = Label(np.sin(2 * np.pi * lst / 24).astype("float32"), "continuous", "1", "sin of local solar time")
    out["tod_cos"] = Label(np.cos(2 * np.pi * lst / 24).astype("float32"), "continuous", "1", "cos of local solar time")
    year_start = valid.astype("datetime64[Y]").astype("datetime64[D]")
    doy = (day_start - year_start).astype(int) + utc_hours / 24.0  # 0-based fractional day of year
    out["doy_sin"] = Label(np.sin(2 * np.pi * doy / 365.2425).astype("float32"), "continuous", "1", "sin of day of year")
    out["doy_cos"] = Label(np.cos(2 * np.pi * doy / 365.2425).astype("float32"), "continuous", "1", "cos of day of year")
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (doy + 1 + 284) / 365.0)  # Cooper (1969)
    hour_angle = np.deg2rad(15.0 * (lst - 12.0))
    phi = np.deg2rad(lat)
    sin_elev = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    out["daylight"] = Label((sin_elev > 0).astype("float32"), "concept", "1", "sun above the horizon")
    return out


LAND_FRACTION_FILE = Path(__file__).resolve().parent / "data" / "land_fraction_0p25.npz"
"""Land fraction on a 0.25° grid (720 x 1440, cell centres 89.875 → -89.875, 0.125 → 359.875),
block-averaged from global-land-mask's 1 km GLOBE mask (MIT); uint8, value / 200 = fraction."""


def build_land_fraction(out: str | Path = LAND_FRACTION_FILE, cells_per_degree: int = 4) -> Path:
    """Block-average global-land-mask's 1 km mask (21600 x 43200) to a coarse land-fraction grid.

    Needs ~1 GB of memory and ~30 s; the result ships as `LAND_FRACTION_FILE`.
    """
    from global_land_mask import globe

    ocean = globe._mask  # (21600, 43200) bool, True = ocean; lat 90 -> -90, lon -180 -> 180, 1/120 deg
    block = 120 // cells_per_degree
    ny, nx = ocean.shape[0] // block, ocean.shape[1] // block
    counts = block**2 - ocean.reshape(ny, block, nx, block).sum(axis=(1, 3), dtype=np.uint32)
    frac = np.rint(counts * (200.0 / block**2)).astype(np.uint8)
    frac = np.roll(frac, -nx // 2, axis=1)  # lon -180.. -> 0..
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, land_fraction_x200=frac, cells_per_degree=np.int64(cells_per_degree))
    tmp.replace(out)
    return out


@lru_cache(maxsize=1)
def _land_grid() -> tuple[np.ndarray, int]:
    if not LAND_FRACTION_FILE.exists():
        raise FileNotFoundError(
            f"{LAND_FRACTION_FILE} is missing; rebuild it with "
            "python -c 'from sciinterp_adapters.weather.static import build_land_fraction; build_land_fraction()'"
        )
    with np.load(LAND_FRACTION_FILE) as f:
        return f["land_fraction_x200"].astype("float32") / 200.0, int(f["cells_per_degree"])


def _spacing(values: np.ndarray, period: float | None = None) -> float:
    u = np.unique(values)
    if u.size < 2:
        return 0.0
    d = np.diff(u)
    if period is not None:
        d = np.append(d, u[0] + period - u[-1])
    return float(np.median(d))


def land_labels(lat: np.ndarray, lon: np.ndarray, *, subsamples: int = 5, threshold: float = 0.5) -> dict[str, Label]:
    """Land fraction of each token's grid cell and a land concept.

    The shipped 0.25° land fraction (`LAND_FRACTION_FILE`, from
    `global-land-mask`'s 1 km GLOBE mask) is sampled on a
    ``subsamples x subsamples`` lattice inside each token's cell (cell size =
    median spacing of the tokens' distinct latitudes / longitudes, at least
    0.25°) and averaged: an area regrid to the token grid.

    Parameters
    ----------
    lat, lon
        Token position (degrees), ``(n,)``.
    subsamples
        Points per cell side (1 samples the cell centre only).
    threshold
        Land fraction at or above which ``land`` is 1.

    Returns
    -------
    dict[str, Label]
        ``land_fraction`` (continuous, 1) and ``land`` (concept).
    """
    grid, cpd = _land_grid()
    pts, inverse = np.unique(np.stack([lat, np.mod(lon, 360.0)], axis=1), axis=0, return_inverse=True)
    dlat, dlon = _spacing(lat), _spacing(np.mod(lon, 360.0), 360.0)
    n = subsamples if max(dlat, dlon) > 1.0 / cpd else 1
    offs = (np.arange(n) + 0.5) / n - 0.5
    oy, ox = np.meshgrid(offs * dlat, offs * dlon, indexing="ij")
    sub_lat = np.clip(pts[:, :1] + oy.ravel()[None, :], -90.0, 90.0)
    sub_lon = np.mod(pts[:, 1:] + ox.ravel()[None, :], 360.0)
    iy = np.clip(np.floor((90.0 - sub_lat) * cpd).astype(int), 0, grid.shape[0] - 1)
    ix = np.clip(np.floor(sub_lon * cpd).astype(int), 0, grid.shape[1] - 1)
    frac = grid[iy, ix].mean(axis=1)
    frac_tok = frac[inverse.ravel()].astype("float32")
    return {
        "land_fraction": Label(frac_tok, "continuous", "1", "land fraction of the grid cell (GLOBE 1 km mask)"),
        "land": Label((frac_tok >= threshold).astype("float32"), "concept", "1", f"land fraction >= {threshold:g}"),
    }
