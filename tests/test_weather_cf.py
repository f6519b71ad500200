"""CF input validation and normalisation (adapters/weather/cf.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciinterp_adapters.weather.cf import CFError, open_dataset, prepare_dataset
from sciinterp_adapters.weather.cf_units import G0, normalise_unit


def _raw(lat_ascending=True, lon_180=True, t_units="K", z_units="m**2 s**-2", names="era5"):
    """A small dataset in a 'foreign' layout whose values encode their own coordinates."""
    lat = np.linspace(-80, 80, 9) if lat_ascending else np.linspace(80, -80, 9)
    lon = np.arange(-180, 180, 30.0) if lon_180 else np.arange(0, 360, 30.0)
    lev = np.array([1000.0, 850.0, 500.0])
    time = pd.date_range("2020-01-01", periods=2, freq="6h").values
    L, T, Y, X = np.meshgrid(lev, np.arange(2), lat, lon, indexing="ij")
    # t encodes (lat, lon, level, time) so tests can check a value lands at the right coordinates.
    t = 250.0 + 0.1 * Y + 0.001 * np.mod(X, 360) + 0.01 * L + T
    tt = t.transpose(1, 0, 2, 3).astype("float32")
    if t_units == "degC":
        tt = tt - 273.15
    z = (np.full_like(tt, 5.5e4) + np.mod(X, 360).transpose(1, 0, 2, 3)).astype("float32")
    if z_units in ("m", "gpm"):
        z = z / G0
    dims = ("time", "pressure_level", "latitude", "longitude") if names == "era5" else ("time", "plev", "lat", "lon")
    ds = xr.Dataset(
        {
            "temperature": (dims, tt, {"units": t_units, "standard_name": "air_temperature"}),
            "geopotential": (dims, z, {"units": z_units}),
            "msl": (("time", dims[2], dims[3]), np.full((2, 9, 12), 1013.0, "float32"), {"units": "hPa"}),
        },
        coords={
            "time": time,
            dims[1]: (dims[1], lev if names == "era5" else lev * 100, {"units": "hPa" if names == "era5" else "Pa"}),
            dims[2]: (dims[2], lat, {"units": "degrees_north"}),
            dims[3]: (dims[3], lon, {"units": "degrees_east"}),
        },
    )
    return ds


def _expected_t(lat, lon, level, ti):
    return 250.0 + 0.1 * lat + 0.001 * lon + 0.01 * level + ti


def test_normalises_layout_and_roundtrips_values_to_coordinates():
    out = prepare_dataset(_raw(), ["t", "z", "msl"], levels=[850, 500])
    assert out["t"].dims == ("time", "level", "lat", "lon")
    assert out["msl"].dims == ("time", "lat", "lon")
    assert np.all(np.diff(out.lat.values) < 0) and out.lat.values[0] == 80.0
    lon = out.lon.values
    assert np.all(np.diff(lon) > 0) and lon.min() == 0.0 and lon.max() == 330.0
    assert list(out.level.values) == [850.0, 500.0]
    # every value sits at the coordinates it encodes (flip + roll kept values with their coords)
    T, L, Y, X = np.meshgrid([0, 1], out.level.values, out.lat.values, out.lon.values, indexing="ij")
    np.testing.assert_allclose(out["t"].values, _expected_t(Y, X, L, T), atol=1e-3)
    # a specific point: lon -150 became 210
    v = out["t"].sel(time="2020-01-01T06", level=500, lat=40, lon=210).item()
    assert v == pytest.approx(_expected_t(40, 210, 500, 1), abs=1e-3)
    notes = out.attrs["cf_normalisation"]
    assert "flipped 'lat' from ascending to descending" in notes
    assert "wrapped 'lon' from [-180, 150] into [0, 360)" in notes
    assert "rolled/sorted 'lon' to ascending order" in notes
    assert "renamed coordinate 'pressure_level' -> 'level'" in notes
    assert "converted 'msl' from hPa to Pa" in notes
    assert out["msl"].values[0, 0, 0] == pytest.approx(101300.0)


def test_already_normalised_input_is_untouched():
    out = prepare_dataset(_raw(lat_ascending=False, lon_180=False), ["t"])
    assert "flipped" not in out.attrs["cf_normalisation"] and "wrapped" not in out.attrs["cf_normalisation"]
    assert out.lat.values[0] == 80.0 and out.lon.values[0] == 0.0


def test_pa_levels_and_cmip_names():
    out = prepare_dataset(_raw(names="cmip"), ["ta", "zg" if False else "z"], levels=[500])
    assert list(out.level.values) == [500.0]
    assert "converted 'level' Pa -> hPa" in out.attrs["cf_normalisation"]
    assert out["ta"].attrs["units"] == "K"


def test_degc_converted_to_kelvin():
    ref = prepare_dataset(_raw(), ["t"])
    out = prepare_dataset(_raw(t_units="degC"), ["t"])
    np.testing.assert_allclose(out["t"].values, ref["t"].values, atol=1e-3)
    assert "converted 't' from degC to K" in out.attrs["cf_normalisation"]


def test_gpm_geopotential_converted_by_g0():
    ref = prepare_dataset(_raw(), ["z"])
    out = prepare_dataset(_raw(z_units="gpm"), ["z"])
    np.testing.assert_allclose(out["z"].values, ref["z"].values, rtol=1e-6)
    assert out["z"].attrs["units"] == "m2 s-2"


def test_geopotential_in_metres_is_ambiguous_error():
    with pytest.raises(CFError) as err:
        prepare_dataset(_raw(z_units="m"), ["z"])
    msg = str(err.value)
    assert "variable 'z' (dataset variable 'geopotential') has units 'm'; expected 'm2 s-2'" in msg
    assert "ambiguous" in msg and "9.80665" in msg


def test_geopotential_height_variable_becomes_geopotential():
    ds = _raw().rename(geopotential="zg")
    ds["zg"] = (ds["zg"] / G0).assign_attrs(units="m", standard_name="geopotential_height")
    out = prepare_dataset(ds, ["z"])
    ref = prepare_dataset(_raw(), ["z"])
    np.testing.assert_allclose(out["z"].values, ref["z"].values, rtol=1e-6)
    assert "geopotential height 'zg' x g0" in out.attrs["cf_normalisation"]


def test_unknown_unit_error_names_variable():
    ds = _raw()
    ds["temperature"].attrs["units"] = "degF"
    with pytest.raises(CFError, match=r"variable 't' \(dataset variable 'temperature'\) has units 'degF'; "
                       r"expected 'K' or convertible \['degC'\]"):
        prepare_dataset(ds, ["t"])


def test_missing_variable_and_level_errors():
    with pytest.raises(CFError, match=r"variable 'q' not found \(looked for names \['q', 'hus', 'shum', "
                       r"'specific_humidity'\] or standard_name 'specific_humidity'\)"):
        prepare_dataset(_raw(), ["t", "q"])
    with pytest.raises(CFError, match=r"variable 't' lacks level\(s\) \[250.0\] hPa that the model needs; "
                       r"available levels: \[1000.0, 850.0, 500.0\]"):
        prepare_dataset(_raw(), ["t"], levels=[500, 250])


def test_missing_coordinate_errors():
    ds = _raw().drop_vars("latitude")
    ds = ds.rename_dims(latitude="y")
    with pytest.raises(CFError, match="dataset has no lat coordinate"):
        prepare_dataset(ds, ["t"])
    ds2 = _raw().isel(pressure_level=0).drop_vars("pressure_level")
    with pytest.raises(CFError, match="dataset has no pressure-level coordinate"):
        prepare_dataset(ds2, ["t"], levels=[500])


def test_coordinates_identified_by_standard_name():
    ds = _raw().rename(latitude="yy", longitude="xx")
    ds["yy"].attrs["standard_name"] = "latitude"
    ds["xx"].attrs["standard_name"] = "longitude"
    out = prepare_dataset(ds, ["t"])
    assert out["t"].dims == ("time", "level", "lat", "lon")


def test_nan_error_names_variable_time_level_and_point():
    ds = _raw()
    ds["temperature"][1, 2, 3, 4] = np.nan  # time 06:00, level 500, lat -20, lon -60 -> 300
    with pytest.raises(CFError) as err:
        prepare_dataset(ds, ["t"])
    assert str(err.value) == (
        "variable 't' has 1 non-finite value(s) (NaN/inf); first at time=2020-01-01T06:00:00, "
        "level=500 hPa, lat=-20, lon=300. Pass nonfinite='mask' to keep them as NaN"
    )


def test_nan_mask_keeps_nan_and_counts():
    ds = _raw()
    ds["temperature"][0, 0, 0, 0] = np.inf
    ds["temperature"][1, 1, 1, 1] = np.nan
    out = prepare_dataset(ds, ["t", "z"], nonfinite="mask")
    assert out["t"].attrs["n_nonfinite"] == 2 and out["z"].attrs["n_nonfinite"] == 0
    assert int(np.isnan(out["t"]).sum()) == 2 and not np.isinf(out["t"].values).any()


def test_extra_dimension_error_and_squeeze():
    ds = _raw().expand_dims(number=2)
    with pytest.raises(CFError, match="extra dimension 'number' of size 2"):
        prepare_dataset(ds, ["t"])
    out = prepare_dataset(_raw().expand_dims(number=1), ["t"])
    assert out["t"].dims == ("time", "level", "lat", "lon")


def test_valid_time_and_scalar_time():
    ds = _raw().rename(time="valid_time")
    assert prepare_dataset(ds, ["t"]).sizes["time"] == 2
    one = _raw().isel(time=0)
    assert prepare_dataset(one, ["t"]).sizes["time"] == 1


def test_normalise_unit_spellings():
    assert normalise_unit("m**2 s**-2") == normalise_unit("m^2/s^2") == normalise_unit("m2 s-2") == "m2 s-2"
    assert normalise_unit("kg kg**-1") == "kg kg-1"
    assert normalise_unit("millibar") == "hPa"
    assert normalise_unit("furlongs") == "furlongs"


def test_open_dataset_netcdf_and_zarr(tmp_path):
    ds = _raw()
    ds.to_netcdf(tmp_path / "a.nc", engine="scipy")  # netCDF-3
    ds.to_zarr(tmp_path / "a.zarr", consolidated=False)
    names = ["a.nc", "a.zarr"]
    try:
        import h5py  # noqa: F401

        ds.to_netcdf(tmp_path / "b.nc", engine="h5netcdf")  # netCDF-4 / HDF5
        names.append("b.nc")
    except ImportError:
        pass
    for p in names:
        out = prepare_dataset(open_dataset(tmp_path / p), ["t"], levels=[500])
        assert out["t"].shape == (2, 1, 9, 12)
    with pytest.raises(FileNotFoundError, match="weather input not found"):
        open_dataset(tmp_path / "nope.nc")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CFError, match="unknown weather file type '.txt'"):
        open_dataset(tmp_path / "x.txt")


def test_grib_needs_cfgrib(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cfgrib", None)
    (tmp_path / "a.grib").write_bytes(b"GRIB")
    with pytest.raises(ImportError, match=r"a.grib needs cfgrib: pip install cfgrib eccodes"):
        open_dataset(tmp_path / "a.grib")


def test_dimension_without_coordinate_values_is_an_error():
    ds = _raw().drop_vars("pressure_level")
    with pytest.raises(CFError, match=r"dimension 'pressure_level' \(level\) has no coordinate values"):
        prepare_dataset(ds, ["t"])
