"""The shallow-water generator: CF layout, physical values, determinism, validation."""

import numpy as np
import pytest

pytest.importorskip("torch_harmonics")

from sciinterp_adapters.weather.shallow_water import ShallowWaterConfig, generate_shallow_water  # noqa: E402

SMALL = dict(nlat=16, nlon=32, n_trajectories=2, n_times=3, spinup_hours=6, eddy_wavenumbers=(3, 6), progress=False)


@pytest.fixture(scope="module")
def ds():
    return generate_shallow_water(seed=3, **SMALL)


def test_layout_is_cf(ds):
    assert dict(ds.sizes) == {"time": 6, "lat": 16, "lon": 32}
    assert set(ds.data_vars) == {"z", "u", "v"}
    assert ds["lat"].values[0] == pytest.approx(90.0) and ds["lat"].values[-1] == pytest.approx(-90.0)
    assert np.all(np.diff(ds["lat"].values) < 0)
    assert ds["lon"].values[0] == 0.0 and ds["lon"].values[-1] == pytest.approx(360 - 360 / 32)
    assert ds["z"].attrs == {"units": "m2 s-2", "standard_name": "geopotential", "long_name": "geopotential of the fluid surface"}
    assert ds["u"].attrs["units"] == "m s-1" and ds["v"].attrs["standard_name"] == "northward_wind"
    # trajectories start on their own day, 6-hourly inside
    assert list(ds["trajectory"].values) == [0, 0, 0, 1, 1, 1]
    t = ds["time"].values
    assert (t[1] - t[0]) == np.timedelta64(6, "h") and (t[3] - t[0]) == np.timedelta64(30, "D")
    assert str(t[0])[:19] == "2000-01-01T00:00:00"  # first output, after the spin-up


def test_values_are_physical(ds):
    # mean depth 10 km: geopotential ~ g * 1e4; jets of 25-50 m/s plus eddies
    z = ds["z"].values
    assert 0.85e5 < z.mean() < 1.05e5
    assert 20 < ds["u"].max() < 80
    assert ds["v"].std() > 0.5  # eddies make meridional wind
    assert np.isfinite(ds.to_array().values).all()
    assert ds["z"].dtype == np.float32


def test_same_seed_identical_other_seed_differs(ds):
    # the first trajectory depends only on the seed, not on how many follow it
    again = generate_shallow_water(seed=3, **{**SMALL, "n_trajectories": 1})
    for v in ds.data_vars:
        np.testing.assert_array_equal(ds[v].values[:3], again[v].values)
    other = generate_shallow_water(seed=4, **{**SMALL, "n_trajectories": 1})
    assert np.abs(other["u"].values - again["u"].values).max() > 1.0


def test_resolution_configurable():
    ds = generate_shallow_water(nlat=24, nlon=48, n_trajectories=1, n_times=1, spinup_hours=0, progress=False, variables=("z", "vo"))
    assert ds["z"].shape == (1, 24, 48) and ds["vo"].attrs["units"] == "s-1"


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(dt=900.5), "outside"),
        (dict(dt=700.0), "multiple of dt"),
        (dict(n_times=0), "must be >= 1"),
        (dict(spacing_days=1, n_times=8), "must exceed"),
        (dict(variables=("z", "t")), "unknown variables"),
        (dict(nlat=16, nlon=32, eddy_wavenumbers=(3, 8)), r"hi < 8 \(the truncation"),
    ],
)
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ShallowWaterConfig(**kw)


def test_64x128_default_truncation_is_stable():
    # (nlat + 1) // 2 = 32 blew up within 12 h at dt = 600 s; the default for 64 latitudes is 22
    assert ShallowWaterConfig(nlat=64, nlon=128).truncation == 22
    assert ShallowWaterConfig().truncation == 16  # 32x64: unchanged, the demo SFNO's data
    ds = generate_shallow_water(nlat=64, nlon=128, n_trajectories=1, n_times=2, spinup_hours=12, seed=2, progress=False)
    assert np.isfinite(ds.to_array().values).all() and 25 < float(ds["u"].max()) < 80
    with pytest.raises(ValueError, match=r"lmax=40 must lie in \[4, 32\]"):
        ShallowWaterConfig(nlat=64, nlon=128, lmax=40)
