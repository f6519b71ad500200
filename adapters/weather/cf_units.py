"""Variable and unit tables for CF-convention weather inputs.

A small, explicit table rather than a units library: every conversion here is
unambiguous (affine or a fixed factor). Anything else is an error that says
what was found and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

G0 = 9.80665
"""Standard gravity (m s-2), WMO definition of the geopotential metre."""

# Canonical unit -> spellings seen in the wild (compared after `normalise_unit`).
_UNIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "K": ("k", "kelvin", "degk", "deg_k", "degreek", "degreesk", "degree_kelvin"),
    "degC": ("degc", "deg_c", "c", "celsius", "degreec", "degreesc", "degree_celsius", "°c"),
    "m2 s-2": ("m2s-2", "m2/s2", "m2.s-2"),
    "m": ("m", "metre", "meter", "metres", "meters"),
    "gpm": ("gpm", "geopotential_metre", "geopotential_meter", "m_gp", "dam_gp"),
    "m s-1": ("ms-1", "m/s", "m.s-1", "meter/second", "metre/second"),
    "knot": ("knot", "knots", "kt", "kts"),
    "kg kg-1": ("kgkg-1", "kg/kg", "kg.kg-1"),
    "g kg-1": ("gkg-1", "g/kg", "g.kg-1"),
    "Pa": ("pa", "pascal", "pascals"),
    "hPa": ("hpa", "mb", "mbar", "millibar", "millibars", "hectopascal"),
    "Pa s-1": ("pas-1", "pa/s", "pa.s-1"),
    "kg m-2": ("kgm-2", "kg/m2", "kg.m-2", "mm"),
    "%": ("%", "percent", "pct"),
    "1": ("1", "(0-1)", "0-1", "fraction", "dimensionless", "-"),
    "s-1": ("s-1", "1/s", "/s"),
    "degrees_north": ("degrees_north", "degree_north", "degrees_n", "degree_n", "degreesn", "degn"),
    "degrees_east": ("degrees_east", "degree_east", "degrees_e", "degree_e", "degreese", "dege"),
    "degrees": ("degrees", "degree", "deg"),
}
_SPELLING_TO_UNIT = {s: canon for canon, spellings in _UNIT_SPELLINGS.items() for s in spellings}
for _canon in _UNIT_SPELLINGS:
    _SPELLING_TO_UNIT.setdefault(_canon.lower().replace(" ", ""), _canon)


def normalise_unit(units: str | None) -> str | None:
    """Map a unit string to its canonical spelling in this table.

    ``"m**2 s**-2"``, ``"m^2/s^2"`` and ``"m2 s-2"`` all become ``"m2 s-2"``.
    Returns ``None`` for a missing/empty string and the stripped input for an
    unknown spelling (so error messages can quote it).
    """
    if units is None:
        return None
    raw = str(units).strip()
    if raw == "":
        return None
    key = re.sub(r"[\s*^]", "", raw.lower())
    key = key.replace("m2/s^2", "m2/s2")
    return _SPELLING_TO_UNIT.get(key, raw)


# (from, to) -> converter. Only exact, unambiguous conversions.
_CONVERSIONS: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {
    ("degC", "K"): lambda x: x + 273.15,
    ("K", "degC"): lambda x: x - 273.15,
    ("gpm", "m2 s-2"): lambda x: x * G0,
    ("m", "gpm"): lambda x: x,  # geopotential height is in geopotential metres by definition
    ("g kg-1", "kg kg-1"): lambda x: x * 1e-3,
    ("kg kg-1", "g kg-1"): lambda x: x * 1e3,
    ("hPa", "Pa"): lambda x: x * 100.0,
    ("Pa", "hPa"): lambda x: x / 100.0,
    ("knot", "m s-1"): lambda x: x * (1852.0 / 3600.0),
    ("1", "%"): lambda x: x * 100.0,
    ("%", "1"): lambda x: x / 100.0,
}


def converter(src: str, dst: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The conversion ``src -> dst`` (canonical units), identity if equal, else ``None``."""
    if src == dst:
        return lambda x: x
    return _CONVERSIONS.get((src, dst))


@dataclass(frozen=True)
class VarSpec:
    """What a known variable is called and which units it must have."""

    key: str
    """Canonical short name (ECMWF style)."""
    names: tuple[str, ...]
    """Names it goes by in files (ECMWF, CMIP, NCEP, WeatherBench, SFNO/Aurora channel names)."""
    units: str
    """Canonical units the output carries."""
    standard_name: str | None = None
    """CF standard_name, used to identify the variable when no name matches (unique ones only)."""
    accepts: tuple[str, ...] = ()
    """Other units that convert unambiguously (must be in the conversion table)."""
    long_name: str = ""
    """Human-readable name."""


VARIABLES: tuple[VarSpec, ...] = (
    VarSpec("u", ("u", "ua", "uwnd", "U", "u_component_of_wind"), "m s-1", "eastward_wind", ("knot",), "eastward wind"),
    VarSpec("v", ("v", "va", "vwnd", "V", "v_component_of_wind"), "m s-1", "northward_wind", ("knot",), "northward wind"),
    VarSpec("z", ("z", "geopotential", "Z", "phi"), "m2 s-2", "geopotential", ("gpm",), "geopotential"),
    VarSpec("gh", ("gh", "zg", "hgt", "geopotential_height"), "gpm", "geopotential_height", ("m",), "geopotential height"),
    VarSpec("t", ("t", "ta", "air", "T", "temperature", "air_temperature"), "K", "air_temperature", ("degC",), "temperature"),
    VarSpec("q", ("q", "hus", "shum", "specific_humidity"), "kg kg-1", "specific_humidity", ("g kg-1", "1"), "specific humidity"),
    VarSpec("ciwc", ("ciwc", "cli", "specific_cloud_ice_water_content"), "kg kg-1", None, ("g kg-1",), "cloud ice water content"),
    VarSpec("clwc", ("clwc", "clw", "specific_cloud_liquid_water_content"), "kg kg-1", None, ("g kg-1",), "cloud liquid water content"),
    VarSpec("r", ("r", "hur", "rhum", "relative_humidity"), "%", "relative_humidity", ("1",), "relative humidity"),
    VarSpec("w", ("w", "wap", "omega", "vertical_velocity"), "Pa s-1", "lagrangian_tendency_of_air_pressure", (), "pressure vertical velocity"),
    VarSpec("vo", ("vo", "vort", "vorticity", "relative_vorticity"), "s-1", "atmosphere_relative_vorticity", (), "relative vorticity"),
    VarSpec("d", ("d", "div", "divergence"), "s-1", "divergence_of_wind", (), "divergence"),
    VarSpec("2t", ("2t", "t2m", "tas", "2m_temperature"), "K", None, ("degC",), "2 m temperature"),
    VarSpec("10u", ("10u", "u10", "u10m", "uas", "10m_u_component_of_wind"), "m s-1", None, ("knot",), "10 m eastward wind"),
    VarSpec("10v", ("10v", "v10", "v10m", "vas", "10m_v_component_of_wind"), "m s-1", None, ("knot",), "10 m northward wind"),
    VarSpec("msl", ("msl", "psl", "mslp", "prmsl", "mean_sea_level_pressure"), "Pa", "air_pressure_at_mean_sea_level", ("hPa",), "mean sea-level pressure"),
    VarSpec("sp", ("sp", "ps", "surface_pressure"), "Pa", "surface_air_pressure", ("hPa",), "surface pressure"),
    VarSpec("tcwv", ("tcwv", "prw", "total_column_water_vapour"), "kg m-2", "atmosphere_mass_content_of_water_vapor", (), "total column water vapour"),
    VarSpec("sst", ("sst", "tos", "sea_surface_temperature"), "K", "sea_surface_temperature", ("degC",), "sea-surface temperature"),
    VarSpec("siconc", ("siconc", "ci", "sic", "sea_ice_cover"), "1", "sea_ice_area_fraction", ("%",), "sea-ice fraction"),
    VarSpec("zs", ("zs", "orog_z", "geopotential_at_surface", "surface_geopotential"), "m2 s-2", "surface_geopotential", ("gpm",), "surface geopotential"),
    VarSpec("lsm", ("lsm", "land_sea_mask", "sftlf"), "1", "land_binary_mask", ("%",), "land-sea mask"),
)
_BY_NAME: dict[str, VarSpec] = {n: s for s in VARIABLES for n in s.names}
_BY_NAME_LOWER: dict[str, VarSpec] = {n.lower(): s for s in VARIABLES for n in s.names}


def find_spec(name: str) -> VarSpec | None:
    """The table entry a requested variable name belongs to (exact, then case-insensitive)."""
    return _BY_NAME.get(name) or _BY_NAME_LOWER.get(name.lower())
