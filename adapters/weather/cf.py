"""Validate and normalise CF-convention weather inputs (netCDF, zarr, GRIB).

`prepare_dataset` turns any reasonably CF-compliant ``xr.Dataset`` into the one
layout the weather adapters and label builders expect:

* coordinates ``time`` (datetime64), ``level`` (float, hPa), ``lat`` (degrees,
  descending 90 → -90), ``lon`` (degrees, ascending in [0, 360));
* the requested variables only, renamed to the requested names, in canonical
  units (see `cf_units.VARIABLES`), dims ordered ``(time, [level,] lat, lon)``;
* every change (renames, flips, rolls, unit conversions, assumptions) logged
  and listed in ``attrs["cf_normalisation"]``.

Anything that cannot be fixed without guessing raises `CFError` naming the
variable, level or coordinate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from .cf_units import G0, VarSpec, converter, find_spec, normalise_unit

__all__ = ["CFError", "open_dataset", "prepare_dataset"]

log = logging.getLogger(__name__)


class CFError(ValueError):
    """An input dataset violates the conventions in a way that cannot be fixed unambiguously."""


# role -> (names, standard_names, axis, canonical units)
_COORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, tuple[str, ...]]] = {
    "time": (("time", "valid_time", "Time"), ("time",), "T", ()),
    "level": (
        ("level", "plev", "pressure_level", "isobaricInhPa", "lev", "pressure", "pres", "pl"),
        ("air_pressure",),
        "Z",
        ("hPa", "Pa"),
    ),
    "lat": (("lat", "latitude", "nav_lat", "Latitude", "LAT"), ("latitude",), "Y", ("degrees_north",)),
    "lon": (("lon", "longitude", "nav_lon", "Longitude", "LON"), ("longitude",), "X", ("degrees_east",)),
}


def _find_coord(ds: xr.Dataset, role: str) -> str | None:
    """Name of the coordinate playing ``role``: by name, then standard_name, axis, units."""
    names, std_names, axis, units = _COORDS[role]
    candidates = list(ds.dims) + [c for c in ds.coords if c not in ds.dims]
    for n in names:
        if n in candidates:
            return n
    for c in candidates:
        if c not in ds.variables:
            continue
        attrs = ds[c].attrs
        if attrs.get("standard_name") in std_names or attrs.get("axis") == axis:
            return c
        if units and normalise_unit(attrs.get("units")) in units and ds[c].ndim <= 1:
            return c
    return None


def _rename_coords(ds: xr.Dataset, fixes: list[str], need_level: bool) -> xr.Dataset:
    found = {role: _find_coord(ds, role) for role in _COORDS}
    for role in ("lat", "lon", "time"):
        if found[role] is None:
            names, std, _, units = _COORDS[role]
            raise CFError(
                f"dataset has no {role} coordinate (looked for names {list(names)}, "
                f"standard_name {list(std)}, units {list(units)}); coordinates present: "
                f"{sorted(map(str, ds.coords))}"
            )
    if need_level and found["level"] is None:
        raise CFError(
            "dataset has no pressure-level coordinate (looked for names "
            f"{list(_COORDS['level'][0])} or units hPa/Pa) but levels were requested; "
            f"coordinates present: {sorted(map(str, ds.coords))}"
        )
    for role, src in found.items():
        if src is not None and src not in ds.variables:
            raise CFError(f"dimension '{src}' ({role}) has no coordinate values; assign them first")
    renames = {src: role for role, src in found.items() if src is not None and src != role}
    for src, dst in renames.items():
        if dst in ds.variables and dst not in renames:  # e.g. scalar `time` beside a `valid_time` dim
            ds = ds.drop_vars(dst)
            fixes.append(f"dropped '{dst}' (superseded by '{src}')")
        fixes.append(f"renamed coordinate '{src}' -> '{dst}'")
    return ds.rename(renames) if renames else ds


def _check_degrees(ds: xr.Dataset, name: str, fixes: list[str]) -> None:
    raw = ds[name].attrs.get("units")
    unit = normalise_unit(raw)
    ok = {"lat": ("degrees_north", "degrees"), "lon": ("degrees_east", "degrees")}[name]
    if unit is None:
        fixes.append(f"'{name}' has no units; assumed degrees")
    elif unit not in ok:
        raise CFError(f"coordinate '{name}' has units '{raw}'; expected one of {list(ok)}")


def _normalise_time(ds: xr.Dataset, fixes: list[str]) -> xr.Dataset:
    if "time" not in ds.dims:
        ds = ds.expand_dims("time")
        fixes.append("added length-1 'time' dimension from a scalar time coordinate")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise CFError(
            f"coordinate 'time' is not decoded to datetimes (dtype {ds['time'].dtype}, units "
            f"{ds['time'].attrs.get('units')!r}); open the file with decode_times=True"
        )
    return ds


def _normalise_level(ds: xr.Dataset, fixes: list[str]) -> xr.Dataset:
    if "level" not in ds.coords:
        return ds
    lev = ds["level"]
    if lev.ndim == 0:  # a single-level extract (e.g. 200 hPa winds): every variable is on that level
        ds = ds.expand_dims("level")
        fixes.append(f"added length-1 'level' dimension from the scalar level {float(lev):g}")
        lev = ds["level"]
    raw = lev.attrs.get("units")
    unit = normalise_unit(raw)
    values = lev.values.astype("float64")
    if unit is None:
        unit = "hPa" if np.nanmax(values) <= 1100.0 else "Pa"
        log.warning("coordinate 'level' has no units; assumed %s from its range", unit)
        fixes.append(f"'level' has no units; assumed {unit} (max {np.nanmax(values):g})")
    if unit == "Pa":
        values = values / 100.0
        fixes.append("converted 'level' Pa -> hPa")
    elif unit != "hPa":
        raise CFError(f"coordinate 'level' has units '{raw}'; expected hPa, mbar or Pa")
    return ds.assign_coords(level=("level", values, {"units": "hPa", "standard_name": "air_pressure"}))


def _normalise_latlon(ds: xr.Dataset, fixes: list[str]) -> xr.Dataset:
    for name in ("lat", "lon"):
        if ds[name].ndim != 1:
            raise CFError(f"coordinate '{name}' must be 1-D (a regular or Gaussian grid); got dims {ds[name].dims}")
        _check_degrees(ds, name, fixes)
    lat = ds["lat"].values.astype("float64")
    if np.any(np.abs(lat) > 90.0 + 1e-6):
        raise CFError(f"coordinate 'lat' has values outside [-90, 90]: min {lat.min():g}, max {lat.max():g}")
    if lat.size > 1 and np.all(np.diff(lat) > 0):
        ds = ds.isel(lat=slice(None, None, -1))
        fixes.append("flipped 'lat' from ascending to descending (90 -> -90)")
        log.info("flipped latitude to descending order")
    elif lat.size > 1 and not np.all(np.diff(lat) < 0):
        ds = ds.sortby("lat", ascending=False)
        fixes.append("sorted non-monotonic 'lat' to descending")
        log.warning("latitude was not monotonic; sorted it descending")
    lon = ds["lon"].values.astype("float64")
    wrapped = np.mod(lon, 360.0)
    if np.any(wrapped != lon):
        ds = ds.assign_coords(lon=("lon", wrapped, ds["lon"].attrs))
        fixes.append(f"wrapped 'lon' from [{lon.min():g}, {lon.max():g}] into [0, 360)")
        log.info("wrapped longitude into [0, 360)")
    lon = ds["lon"].values
    _, first = np.unique(lon, return_index=True)
    if first.size < lon.size:
        ds = ds.isel(lon=np.sort(first))
        fixes.append(f"dropped {lon.size - first.size} duplicate longitude(s) (e.g. 0 and 360)")
    if not np.all(np.diff(ds["lon"].values) > 0):
        ds = ds.sortby("lon")
        fixes.append("rolled/sorted 'lon' to ascending order")
        log.info("sorted longitude ascending")
    ds = ds.assign_coords(
        lat=("lat", ds["lat"].values.astype("float64"), {"units": "degrees_north", "standard_name": "latitude"}),
        lon=("lon", ds["lon"].values.astype("float64"), {"units": "degrees_east", "standard_name": "longitude"}),
    )
    return ds


def _attr_names(da: xr.DataArray) -> set[str]:
    return {str(da.attrs[k]) for k in ("short_name", "GRIB_shortName", "cfVarName") if k in da.attrs}


def _locate(ds: xr.Dataset, req: str, spec: VarSpec | None) -> str | None:
    if req in ds.data_vars:
        return req
    if spec is None:
        return None
    for n in spec.names:
        if n in ds.data_vars:
            return n
    for name, da in ds.data_vars.items():
        if _attr_names(da) & set(spec.names):
            return str(name)
    if spec.standard_name is not None:
        hits = [str(n) for n, da in ds.data_vars.items() if da.attrs.get("standard_name") == spec.standard_name]
        if len(hits) == 1:
            return hits[0]
    return None


def _convert_units(da: xr.DataArray, req: str, src_name: str, spec: VarSpec, fixes: list[str]) -> xr.DataArray:
    raw = da.attrs.get("units")
    unit = normalise_unit(raw)
    attrs = dict(da.attrs)
    if unit is None:
        log.warning("variable '%s' has no units; assumed %s", req, spec.units)
        fixes.append(f"'{req}' has no units; assumed {spec.units}")
        unit = spec.units
    if unit != spec.units:
        conv = converter(unit, spec.units) if unit in spec.accepts else None
        if conv is None:
            hint = ""
            if spec.key == "z" and unit == "m":
                hint = (
                    "; 'm' is ambiguous for geopotential (geometric height or geopotential height?). "
                    f"If it is geopotential height, set units='gpm' or standard_name='geopotential_height' "
                    f"to convert by g0 = {G0}"
                )
            accepted = [spec.units, *spec.accepts]
            raise CFError(
                f"variable '{req}' (dataset variable '{src_name}') has units '{raw}'; "
                f"expected {accepted[0]!r}" + (f" or convertible {accepted[1:]}" if len(accepted) > 1 else "") + hint
            )
        da = conv(da)
        fixes.append(f"converted '{req}' from {unit} to {spec.units}")
        log.info("converted %s from %s to %s", req, unit, spec.units)
    attrs["units"] = spec.units
    if spec.standard_name:
        attrs.setdefault("standard_name", spec.standard_name)
    return da.assign_attrs(attrs)


def _get_variable(ds: xr.Dataset, req: str, fixes: list[str]) -> xr.DataArray:
    spec = find_spec(req)
    src = _locate(ds, req, spec)
    if src is None and spec is not None and spec.key == "z":
        gh = find_spec("gh")
        assert gh is not None
        src_gh = _locate(ds, "gh", gh)
        if src_gh is not None:
            da = _convert_units(ds[src_gh], req, src_gh, gh, fixes)
            fixes.append(f"'{req}' = geopotential height '{src_gh}' x g0 ({G0} m s-2)")
            out = (da * G0).assign_attrs(units="m2 s-2", standard_name="geopotential", long_name="geopotential")
            return out.rename(req)
    if src is None:
        looked = [req] if spec is None else list(dict.fromkeys([req, *spec.names]))
        std = "" if spec is None or spec.standard_name is None else f" or standard_name '{spec.standard_name}'"
        raise CFError(
            f"variable '{req}' not found (looked for names {looked}{std}); "
            f"dataset variables: {sorted(map(str, ds.data_vars))}"
        )
    da = ds[src]
    if src != req:
        fixes.append(f"variable '{src}' -> '{req}'")
    if spec is not None:
        da = _convert_units(da, req, src, spec, fixes)
    return da.rename(req)


def _order_dims(da: xr.DataArray, req: str, fixes: list[str]) -> xr.DataArray:
    for d in ("lat", "lon"):
        if d not in da.dims:
            raise CFError(f"variable '{req}' has no '{d}' dimension (dims {da.dims})")
    extra = [d for d in da.dims if d not in ("time", "level", "lat", "lon")]
    for d in extra:
        if da.sizes[d] != 1:
            raise CFError(
                f"variable '{req}' has an extra dimension '{d}' of size {da.sizes[d]}; select one "
                f"value first (e.g. ds.isel({d}=0))"
            )
        da = da.isel({d: 0}, drop=True)
        fixes.append(f"squeezed length-1 dimension '{d}' of '{req}'")
    if "time" not in da.dims:
        # Static field in a time-dependent dataset: keep it static (no time dim).
        order = [d for d in ("level", "lat", "lon") if d in da.dims]
    else:
        order = [d for d in ("time", "level", "lat", "lon") if d in da.dims]
    return da.transpose(*order)


def _select_levels(da: xr.DataArray, req: str, levels: Sequence[float]) -> xr.DataArray:
    if "level" not in da.dims:
        return da
    have = da["level"].values
    want = np.asarray(levels, dtype="float64")
    idx = []
    missing = []
    for w in want:
        hit = np.flatnonzero(np.isclose(have, w, rtol=0, atol=1e-3))
        (idx.append(int(hit[0])) if hit.size else missing.append(float(w)))
    if missing:
        raise CFError(
            f"variable '{req}' lacks level(s) {missing} hPa that the model needs; "
            f"available levels: {[float(h) for h in have]}"
        )
    return da.isel(level=idx)


def _check_finite(da: xr.DataArray, req: str, mode: str) -> xr.DataArray:
    finite = np.isfinite(da)
    n_bad = int((~finite).sum().values)
    if n_bad == 0:
        return da.assign_attrs(n_nonfinite=0)
    if mode == "mask":
        log.warning("variable '%s': %d non-finite values masked as NaN", req, n_bad)
        return da.where(finite).assign_attrs(da.attrs, n_nonfinite=n_bad)
    first = np.argwhere(~np.asarray(finite.values))[0]
    where = []
    for dim, i in zip(da.dims, first, strict=True):
        value = da[dim].values[i]
        if dim == "time":
            where.append(f"time={np.datetime_as_string(value, unit='s')}")
        elif dim == "level":
            where.append(f"level={value:g} hPa")
        else:
            where.append(f"{dim}={value:g}")
    raise CFError(
        f"variable '{req}' has {n_bad} non-finite value(s) (NaN/inf); first at {', '.join(where)}. "
        "Pass nonfinite='mask' to keep them as NaN"
    )


def prepare_dataset(
    ds: xr.Dataset,
    variables: Sequence[str],
    levels: Sequence[float] | None = None,
    *,
    nonfinite: Literal["error", "mask"] = "error",
) -> xr.Dataset:
    """Validate a CF dataset and normalise it to sciinterp's weather layout.

    Parameters
    ----------
    ds
        Input with coordinates for time, (pressure) level, latitude and
        longitude under any common name (``latitude``, ``plev``,
        ``pressure_level``, ``isobaricInhPa``, ``valid_time`` ...) or
        identified by ``standard_name`` / ``axis`` / ``units``.
    variables
        Names the model needs, in any spelling known to `cf_units.VARIABLES`
        (``"t"``, ``"ta"``, ``"temperature"`` ...) or exact dataset names. The
        output variables carry exactly these names.
    levels
        Pressure levels (hPa) to select from variables that have a level
        dimension; every one must exist. ``None`` keeps all levels.
    nonfinite
        ``"error"``: raise on any NaN/inf, naming variable, time, level and the
        first bad lat/lon. ``"mask"``: keep them as NaN and record the count in
        the variable's ``attrs["n_nonfinite"]``.

    Returns
    -------
    xr.Dataset
        Variables ``(time, [level,] lat, lon)`` (static ones without ``time``)
        in canonical units; ``lat`` descending, ``lon`` ascending in [0, 360),
        ``level`` float hPa; ``attrs["cf_normalisation"]`` lists every change.

    Raises
    ------
    CFError
        Missing variables, levels or coordinates, unconvertible units, extra
        non-singleton dimensions, or non-finite values with ``nonfinite="error"``.
    """
    if nonfinite not in ("error", "mask"):
        raise ValueError(f"nonfinite must be 'error' or 'mask', got {nonfinite!r}")
    if isinstance(variables, str):
        raise TypeError(f"variables must be a sequence of names, got the string {variables!r}")
    if len(variables) == 0:
        raise ValueError("variables is empty: name at least one variable the model needs")
    fixes: list[str] = []
    ds = _rename_coords(ds, fixes, need_level=levels is not None)
    ds = _normalise_time(ds, fixes)
    ds = _normalise_level(ds, fixes)
    ds = _normalise_latlon(ds, fixes)
    out = {}
    for req in variables:
        da = _order_dims(_get_variable(ds, req, fixes), req, fixes)
        if levels is not None:
            da = _select_levels(da, req, levels)
        out[req] = _check_finite(da, req, nonfinite)
    result = xr.Dataset(out, attrs=dict(ds.attrs))
    if "level" in result.coords and "level" not in result.dims:
        result = result.drop_vars("level")
    result.attrs["cf_normalisation"] = "; ".join(fixes) if fixes else "none"
    if fixes:
        log.info("prepare_dataset: %s", "; ".join(fixes))
    return result


def open_dataset(path: str | Path, **kwargs) -> xr.Dataset:
    """Open a netCDF (``.nc``), zarr (``.zarr``) or GRIB (``.grib``, needs cfgrib) file lazily.

    Returns the raw dataset; pass it to `prepare_dataset`. Extra keyword
    arguments go to the xarray opener.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"weather input not found: {p}")
    suffix = "".join(s for s in p.suffixes[-1:]).lower()
    if suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())):
        if "consolidated" not in kwargs:  # ask for consolidated metadata only when it is there
            meta = p / "zarr.json"
            kwargs["consolidated"] = (p / ".zmetadata").exists() or (
                meta.exists() and '"consolidated_metadata"' in meta.read_text() and
                '"consolidated_metadata": null' not in meta.read_text()
            )
        return xr.open_zarr(p, **kwargs)
    if suffix in (".grib", ".grib2", ".grb", ".grb2"):
        try:
            import cfgrib  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading GRIB file {p} needs cfgrib: pip install cfgrib eccodes") from err
        return xr.open_dataset(p, engine="cfgrib", **kwargs)
    if suffix in (".nc", ".nc4", ".netcdf", ".cdf", ".nc3"):
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic[:3] == b"CDF":
            return xr.open_dataset(p, engine="scipy", **kwargs)
        if magic == b"\x89HDF":
            return xr.open_dataset(p, engine="h5netcdf", **kwargs)
        raise CFError(f"{p} is neither netCDF-3 nor netCDF-4/HDF5 (first bytes {magic!r})")
    raise CFError(f"unknown weather file type '{p.suffix}' for {p}; expected .nc, .zarr or .grib")
