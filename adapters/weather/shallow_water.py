"""Shallow-water trajectories on the sphere as CF datasets: training data for the demo SFNO.

Each trajectory starts from two random mid-latitude jets plus random eddies in
nonlinear balance, is spun up (two days by default) with
:class:`torch_harmonics.examples.ShallowWaterSolver`, and is then written every
6 hours.  Trajectories are laid end to end along one ``time`` axis, each starting
on its own day (``start + k * spacing_days``), so the result has the dims
``(time, lat, lon)`` of any gridded weather dataset; the non-dimension coordinate
``trajectory`` says which run a time belongs to.

>>> ds = generate_shallow_water(n_trajectories=2, n_times=8, nlat=32, nlon=64, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

__all__ = ["ShallowWaterConfig", "generate_shallow_water", "grid_latitudes"]

log = logging.getLogger(__name__)

GRAVITY = 9.80616  # m s-2, the solver's value


@dataclass(frozen=True)
class ShallowWaterConfig:
    """Settings of :func:`generate_shallow_water`."""

    nlat: int = 32
    """Latitudes of the equiangular grid (poles included), e.g. 32 or 64."""
    nlon: int = 64
    """Longitudes, equally spaced from 0 degrees east; usually ``2 * nlat``."""
    n_trajectories: int = 4
    """Independent runs, each from its own random initial state."""
    n_times: int = 20
    """Output times per trajectory (after spin-up)."""
    output_hours: float = 6.0
    """Hours between outputs."""
    spinup_hours: float = 48.0
    """Hours integrated (and discarded) before the first output, so eddies and jets adjust."""
    dt: float = 600.0
    """Solver time step in seconds; 600 s is stable at the default truncations up to 64x128, 900 s gave NaNs."""
    lmax: int | None = None
    """Spectral truncation (total wavenumbers kept).  ``None``: ``(nlat + 1) // 2`` (torch-harmonics'
    default) up to 32 latitudes, ``nlat // 3 + 1`` above, because ``(nlat + 1) // 2`` at 64x128 blew up
    within 12 h at dt = 600 s."""
    jet_speed: tuple[float, float] = (25.0, 50.0)
    """Range (m s-1) of each jet's peak zonal wind, drawn uniformly."""
    jet_latitude: tuple[float, float] = (30.0, 60.0)
    """Range (degrees) of each jet's |latitude|; one jet per hemisphere."""
    jet_width: tuple[float, float] = (6.0, 12.0)
    """Range (degrees) of each jet's Gaussian half-width."""
    eddy_speed: float = 15.0
    """Peak wind (m s-1) of the random balanced eddies added to the jets."""
    eddy_wavenumbers: tuple[int, int] = (3, 8)
    """Total wavenumbers (inclusive) of the eddies' streamfunction; the solver's hyperdiffusion
    removes wavenumbers near the truncation ``(nlat + 1) // 2`` during spin-up."""
    start: str = "2000-01-01T00:00"
    """Time stamp (ISO 8601) of the first output of the first trajectory (spin-up happens before it)."""
    spacing_days: int = 30
    """Days between the starts of consecutive trajectories; must exceed a trajectory's length."""
    seed: int = 0
    """Seed of the random initial states: the same seed gives the same dataset."""
    variables: tuple[str, ...] = ("z", "u", "v")
    """Fields to write, a subset of ``z`` (geopotential), ``u``, ``v``, ``vo`` (vorticity)."""

    def __post_init__(self) -> None:
        if self.nlat < 8 or self.nlon < 8:
            raise ValueError(f"grid {self.nlat}x{self.nlon} is too small; use at least 8x8")
        if self.n_trajectories < 1 or self.n_times < 1:
            raise ValueError(f"n_trajectories={self.n_trajectories} and n_times={self.n_times} must be >= 1")
        if self.dt <= 0 or self.dt > 900:
            raise ValueError(f"dt={self.dt} s is outside (0, 900]; 900 s already gave NaNs")
        for name in ("output_hours", "spinup_hours"):
            hours = getattr(self, name)
            if hours < 0 or (hours * 3600) % self.dt:
                raise ValueError(f"{name}={hours} must be a non-negative multiple of dt={self.dt} s")
        if self.output_hours <= 0:
            raise ValueError(f"output_hours must be > 0, got {self.output_hours}")
        span_days = (self.spinup_hours + self.n_times * self.output_hours) / 24
        if self.spacing_days * 1.0 <= span_days:
            raise ValueError(f"spacing_days={self.spacing_days} must exceed a trajectory's {span_days:.1f} days")
        unknown = set(self.variables) - {"z", "u", "v", "vo"}
        if self.lmax is not None and not 4 <= self.lmax <= (self.nlat + 1) // 2:
            raise ValueError(f"lmax={self.lmax} must lie in [4, {(self.nlat + 1) // 2}] for {self.nlat} latitudes")
        if not 1 <= self.eddy_wavenumbers[0] <= self.eddy_wavenumbers[1] < self.truncation:
            raise ValueError(
                f"eddy_wavenumbers={self.eddy_wavenumbers} must satisfy 1 <= lo <= hi < {self.truncation} "
                f"(the truncation of a {self.nlat}-latitude grid)"
            )
        if unknown or not self.variables:
            raise ValueError(f"unknown variables {sorted(unknown)}; choose from z, u, v, vo")

    @property
    def truncation(self) -> int:
        """The spectral truncation used (``lmax`` or its default)."""
        if self.lmax is not None:
            return self.lmax
        return (self.nlat + 1) // 2 if self.nlat <= 32 else self.nlat // 3 + 1


_ATTRS = {
    "z": {"units": "m2 s-2", "standard_name": "geopotential", "long_name": "geopotential of the fluid surface"},
    "u": {"units": "m s-1", "standard_name": "eastward_wind", "long_name": "eastward wind"},
    "v": {"units": "m s-1", "standard_name": "northward_wind", "long_name": "northward wind"},
    "vo": {"units": "s-1", "standard_name": "atmosphere_relative_vorticity", "long_name": "relative vorticity"},
}


def grid_latitudes(nlat: int, grid: str = "equiangular") -> np.ndarray:
    """Latitudes (degrees north, descending from the north) of a torch-harmonics grid, shape ``(nlat,)``."""
    from torch_harmonics.quadrature import precompute_latitudes

    colat, _ = precompute_latitudes(nlat, grid=grid)
    return 90.0 - np.degrees(colat.double().numpy())


def _initial_state(solver, cfg: ShallowWaterConfig, rng: np.random.Generator) -> torch.Tensor:
    """Spectral state (geopotential, vorticity, divergence) of two jets plus balanced eddies."""
    lat = solver.lats.reshape(-1, 1)  # radians, north first
    lon = solver.lons.reshape(1, -1)
    u = torch.zeros(solver.nlat, solver.nlon, dtype=torch.float64)
    for sign in (1.0, -1.0):
        speed = rng.uniform(*cfg.jet_speed)
        centre = math.radians(sign * rng.uniform(*cfg.jet_latitude))
        width = math.radians(rng.uniform(*cfg.jet_width))
        u = u + speed * torch.exp(-(((lat - centre) / width) ** 2)) * torch.ones_like(lon)
    jet_vrtdiv = solver.vrtdivspec(torch.stack((u, torch.zeros_like(u))))

    # eddies: random streamfunction in a band of wavenumbers, confined to mid-latitudes
    lmax, mmax = solver.lmax, solver.mmax
    l_idx = torch.arange(lmax).reshape(-1, 1)
    m_idx = torch.arange(mmax).reshape(1, -1)
    lo, hi = cfg.eddy_wavenumbers
    band = (l_idx >= lo) & (l_idx <= hi) & (m_idx <= l_idx) & (m_idx >= 1)
    coef = rng.standard_normal((2, lmax, mmax))
    psi_spec = torch.complex(torch.as_tensor(coef[0]), torch.as_tensor(coef[1])) * band
    envelope = torch.exp(-(((lat.abs() - math.radians(45.0)) / math.radians(20.0)) ** 2))
    psi = solver.spec2grid(psi_spec) * envelope
    eddy_vrt = solver.lap * solver.grid2spec(psi)
    eddy_uv = solver.getuv(torch.stack((eddy_vrt, torch.zeros_like(eddy_vrt))))
    eddy_vrt = eddy_vrt * (cfg.eddy_speed / eddy_uv.abs().max().clamp_min(1e-12))

    vrtdiv = jet_vrtdiv.clone()
    vrtdiv[0] = vrtdiv[0] + eddy_vrt
    vrtdiv[1] = 0.0
    uv = solver.getuv(vrtdiv)
    vrt = solver.spec2grid(vrtdiv[0])
    # nonlinear balance (zero divergence tendency), as in the solver's Galewsky case
    tmpspec = solver.vrtdivspec(uv * (vrt + solver.coriolis))
    tmpspec[1] = solver.grid2spec(0.5 * torch.sum(uv**2, dim=0))
    phispec = solver.invlap * tmpspec[0] - tmpspec[1] + solver.grid2spec(solver.gravity * solver.havg * torch.ones_like(u))
    state = torch.zeros(3, lmax, mmax, dtype=phispec.dtype)
    state[0] = phispec
    state[1:] = vrtdiv
    return torch.tril(state)


def _fields(solver, state: torch.Tensor, variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    grid = solver.gethuv(state)  # (geopotential, u, v)
    out = {"z": grid[0], "u": grid[1], "v": grid[2]}
    if "vo" in variables:
        out["vo"] = solver.spec2grid(state[1])
    return {k: out[k].numpy().astype(np.float32) for k in variables}


def _integrate(solver, cfg: ShallowWaterConfig, rng: np.random.Generator, progress: bool):
    """Run every trajectory; returns (fields per variable, output times, trajectory index per time)."""
    spin = round(cfg.spinup_hours * 3600 / cfg.dt)
    every = round(cfg.output_hours * 3600 / cfg.dt)
    start = pd.Timestamp(cfg.start)
    times, traj, frames = [], [], {k: [] for k in cfg.variables}
    bar = tqdm(total=cfg.n_trajectories * (spin + every * (cfg.n_times - 1)), desc="shallow water", unit="step", disable=not progress)
    with torch.no_grad():
        for k in range(cfg.n_trajectories):
            state = _initial_state(solver, cfg, rng)
            if spin:
                state = solver.timestep(state, spin)
                bar.update(spin)
            t0 = start + pd.Timedelta(days=k * cfg.spacing_days)
            for i in range(cfg.n_times):
                if i:
                    state = solver.timestep(state, every)
                    bar.update(every)
                fields = _fields(solver, state, cfg.variables)
                if not all(np.isfinite(f).all() for f in fields.values()):
                    raise FloatingPointError(
                        f"shallow-water trajectory {k} blew up at output {i}; lower dt (now {cfg.dt} s) or jet_speed"
                    )
                for name, f in fields.items():
                    frames[name].append(f)
                times.append(t0 + pd.Timedelta(hours=i * cfg.output_hours))
                traj.append(k)
    bar.close()
    return frames, times, traj


def generate_shallow_water(
    config: ShallowWaterConfig | None = None, *, progress: bool = True, threads: int | None = 1, **overrides
) -> xr.Dataset:
    """Integrate shallow-water trajectories and return them as one CF dataset.

    Parameters
    ----------
    config
        A :class:`ShallowWaterConfig`; keyword ``overrides`` replace its fields
        (``generate_shallow_water(nlat=64, nlon=128, n_trajectories=8)``).
    progress
        Show a progress bar over solver steps.
    threads
        Torch threads while integrating (restored afterwards); one is fastest for these
        small transforms.  ``None`` leaves the setting alone.

    Returns
    -------
    xarray.Dataset
        Variables ``(time, lat, lon)`` float32 (``z`` in m2 s-2, ``u`` and ``v`` in
        m s-1), latitude descending from 90, longitude ascending in [0, 360);
        coordinate ``trajectory (time)``; attrs hold the configuration.
        Identical for identical configurations (seeded, float64 solver on CPU).
    """
    from torch_harmonics.examples import ShallowWaterSolver

    cfg = ShallowWaterConfig(**{**(asdict(config) if config else {}), **overrides})
    lmax = cfg.truncation  # explicit, which also silences torch-harmonics' truncation warning
    solver = ShallowWaterSolver(cfg.nlat, cfg.nlon, cfg.dt, lmax=lmax, mmax=lmax, grid="equiangular").double()
    rng = np.random.default_rng(cfg.seed)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        frames, times, traj = _integrate(solver, cfg, rng, progress)
    finally:
        torch.set_num_threads(saved_threads)
    lat = grid_latitudes(cfg.nlat)
    lon = np.arange(cfg.nlon) * (360.0 / cfg.nlon)
    coords = {
        "time": ("time", pd.DatetimeIndex(times).values),
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        "trajectory": ("time", np.asarray(traj, dtype=np.int32), {"long_name": "trajectory index"}),
    }
    data = {k: (("time", "lat", "lon"), np.stack(v), _ATTRS[k]) for k, v in frames.items()}
    attrs = {
        "title": "shallow-water trajectories (torch-harmonics ShallowWaterSolver)",
        "Conventions": "CF-1.8",
        "source": "sciinterp_adapters.weather.shallow_water.generate_shallow_water",
        **{f"config_{k}": str(v) for k, v in asdict(cfg).items()},
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
