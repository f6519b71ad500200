"""Physical variables: derived fields, static/calendar/event labels, token alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciinterp_adapters.weather.cf_units import G0
from sciinterp_adapters.weather.derived import EARTH_RADIUS, OMEGA, SphereOps, derive_fields
from sciinterp_adapters.weather.events import great_circle_km, read_tracks, track_labels
from sciinterp_adapters.weather.static import calendar_labels, land_labels
from sciinterp_adapters.weather.variables import physical_labels, sample_fields

A = EARTH_RADIUS


def _grid(kind: str):
    from torch_harmonics.quadrature import precompute_latitudes

    if kind == "equiangular":
        nlat, nlon = 73, 144
    elif kind == "legendre-gauss":
        nlat, nlon = 32, 64
    else:  # equiangular without poles: not a torch-harmonics grid -> finite differences
        lat = np.linspace(90, -90, 91)[1:-1] - 0.0
        lat = (lat[:-1] + lat[1:]) / 2
        return lat, np.arange(0, 360, 2.0)
    theta, _ = precompute_latitudes(nlat, kind)
    return 90.0 - np.rad2deg(theta.numpy()), np.arange(nlon) * 360.0 / nlon


def _mesh(lat, lon):
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return phi, lam


@pytest.mark.parametrize("kind", ["equiangular", "legendre-gauss"])
def test_solid_body_rotation_vorticity_is_2_omega_sin_lat(kind):
    lat, lon = _grid(kind)
    phi, lam = _mesh(lat, lon)
    omega_p = 1.5e-5  # rad s-1, rotation of the flow relative to the Earth
    u, v = omega_p * A * np.cos(phi), np.zeros_like(phi)
    ops = SphereOps(lat, lon)
    assert ops.method == "spectral" and ops.grid == kind
    vrt, div = ops.vorticity_divergence(u, v)
    np.testing.assert_allclose(vrt, 2 * omega_p * np.sin(phi), atol=1e-12 * omega_p / 1e-5)
    assert np.abs(div).max() < 1e-15
    # a purely divergent field v = V cos(phi): div = -2 V sin(phi) / a, zero vorticity
    vrt2, div2 = ops.vorticity_divergence(np.zeros_like(phi), 10.0 * np.cos(phi))
    np.testing.assert_allclose(div2, -2 * 10.0 * np.sin(phi) / A, atol=1e-15)
    assert np.abs(vrt2).max() < 1e-15


def test_vorticity_matches_spherepack_on_ncep_winds():
    from sciinterp_adapters.weather.era5 import load_ncep_winds

    n = load_ncep_winds()
    d = derive_fields(n, ["vorticity", "divergence"])
    assert d["vorticity"].attrs["method"] == "spectral"
    for ours, ref, tol in (("vorticity", "vrt_ref", 2e-3), ("divergence", "div_ref", 3e-2)):
        a, b = d[ours].values.ravel(), n[ref].values.ravel()
        rel = np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2))
        assert rel < tol, (ours, rel)


def test_finite_difference_fallback_on_other_grids():
    lat, lon = _grid("no-poles")
    ops = SphereOps(lat, lon)
    assert ops.method == "fd" and ops.grid is None
    phi, _ = _mesh(lat, lon)
    vrt, _ = ops.vorticity_divergence(20.0 * np.cos(phi), np.zeros_like(phi))
    expect = 2 * 20.0 / A * np.sin(phi)
    err = np.abs(vrt - expect)
    assert err.max() < 1e-2 * np.abs(expect).max()  # one-sided differences at the polar rows
    assert err[np.abs(lat) < 80].max() < 1e-3 * np.abs(expect).max()
    with pytest.raises(ValueError, match="spectral derivatives need equally spaced longitudes"):
        SphereOps(lat, lon, method="spectral")
    # a spectral grid whose transforms exceed the memory budget also falls back
    glat, glon = _grid("legendre-gauss")
    assert SphereOps(glat, glon, max_spectral_bytes=1e5).method == "fd"


def _fields(lat, lon, **vars3d):
    time = np.array(["2021-01-15T00", "2021-01-15T06"], dtype="datetime64[ns]")
    levels = np.array([250.0, 500.0, 1000.0])
    data = {}
    for k, val in vars3d.items():
        arr = np.broadcast_to(val, (2, 3, lat.size, lon.size)).astype("float32")
        data[k] = (("time", "level", "lat", "lon"), arr, {"units": {"u": "m s-1", "v": "m s-1", "z": "m2 s-2", "t": "K"}[k]})
    return xr.Dataset(data, coords={"time": time, "level": levels, "lat": lat, "lon": lon})


def test_geostrophic_wind_of_analytic_geopotential():
    lat, lon = _grid("legendre-gauss")
    phi, lam = _mesh(lat, lon)
    U, amp = 15.0, 2.0e3
    # balanced solid-body flow plus a wave: ug = U cos + ..., vg from the wave
    z = -A * OMEGA * U * np.sin(phi) ** 2 + amp * np.cos(phi) * np.cos(lam)  # smooth (l <= 2) field
    d = derive_fields(_fields(lat, lon, z=z), ["geostrophic_wind"])
    ug, vg = d["ug"].values[0, 0], d["vg"].values[0, 0]
    f = 2 * OMEGA * np.sin(phi)
    ug_exp = U * np.cos(phi) + amp * np.cos(lam) / (2 * OMEGA * A)
    vg_exp = -amp * np.sin(lam) / (A * f)
    far = np.abs(np.rad2deg(phi)) >= 10
    np.testing.assert_allclose(ug[far], ug_exp[far], atol=1e-3)
    np.testing.assert_allclose(vg[far], vg_exp[far], atol=1e-3)
    assert np.isnan(ug[~far]).all() and np.isnan(vg[~far]).all()
    assert d["ug"].attrs["units"] == "m s-1"


def test_geostrophic_wind_tracks_real_wind_in_era5():
    from sciinterp_adapters.weather.era5 import load_era5_sample

    e = load_era5_sample(["u", "v", "z"], levels=[500])
    d = derive_fields(e, ["geostrophic_wind"])
    mid = (np.abs(e.lat) > 25) & (np.abs(e.lat) < 70)
    for g, w in (("ug", "u"), ("vg", "v")):
        a = d[g].where(mid).values.ravel()
        b = e[w].where(mid).values.ravel()
        ok = np.isfinite(a)
        assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.9


def test_temperature_gradient_jet_thickness_and_wind_speed():
    lat, lon = _grid("equiangular")
    phi, _ = _mesh(lat, lon)
    t = 250.0 + 30.0 * np.sin(phi)
    u = np.where(np.abs(np.rad2deg(phi) - 35) < 10, 45.0, 5.0)
    level_u = np.stack([u, np.full_like(u, 50.0), u])  # 500 hPa is fast everywhere but is not "upper"
    z = np.stack([np.full_like(phi, 1.0e5), np.full_like(phi, 5.6e4), np.full_like(phi, 1.0e3)])
    ds = _fields(lat, lon, t=t, u=level_u, v=np.zeros_like(level_u), z=z)
    d = derive_fields(ds, ["temperature_gradient", "jet", "thickness", "wind_speed"], jet_levels=(100, 400))
    tg = d["temperature_gradient"].values[0, 0]
    np.testing.assert_allclose(tg, 30.0 * np.cos(phi) / A * 1e5, atol=2e-5)  # float32 input
    assert d["temperature_gradient"].attrs["units"] == "K (100 km)-1"
    jet = d["jet"].values[0]
    band = np.abs(lat - 35) < 10
    assert (jet[band] == 1).all() and (jet[~band] == 0).all()
    np.testing.assert_allclose(d["thickness_500_1000"].values, (5.6e4 - 1.0e3) / G0, rtol=1e-6)
    np.testing.assert_allclose(d["wind_speed"].values, np.abs(ds["u"].values))
    strict = derive_fields(ds, ["jet"], jet_threshold=50.0)
    assert float(strict["jet"].max()) == 0.0


def test_land_sea_sanity():
    lab = land_labels(np.array([23.0, 0.0, 45.0, -80.0, 40.0]), np.array([10.0, 210.0, 330.0, 100.0, 255.0]), subsamples=1)
    np.testing.assert_array_equal(lab["land"].values, [1, 0, 0, 1, 1])  # Sahara, Pacific, Atlantic, Antarctica, Colorado
    assert lab["land_fraction"].values[0] > 0.95 and lab["land_fraction"].values[1] < 0.05


def test_land_fraction_regrids_coarse_cells():
    # ~5.6 degree cells over the globe: land covers ~29% of the area
    lat = np.linspace(87.1875, -87.1875, 32)
    lon = np.arange(64) * 5.625
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    lab = land_labels(la.ravel(), lo.ravel())
    w = np.cos(np.deg2rad(la.ravel()))
    frac = float(np.sum(lab["land_fraction"].values * w) / w.sum())
    assert 0.26 < frac < 0.32


def test_great_circle_and_track_events(tmp_path):
    assert great_circle_km(0, 0, 1, 0) == pytest.approx(111.195, abs=1e-2)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(np.pi * 6371.0088, rel=1e-9)
    assert great_circle_km(10, 359.5, 10, 0.5) == pytest.approx(great_circle_km(10, 0, 10, 1))
    csv = tmp_path / "tracks.csv"
    csv.write_text(
        "time,lat,lon,radius_km,kind\n"
        "2021-01-15T00,40,0,500,cyclone\n"
        "2021-01-15T12,-20,-60,300,cyclone\n"
    )
    valid = np.array(["2021-01-15T00", "2021-01-15T00", "2021-01-15T06", "2021-01-15T12", "2021-01-16T00"],
                     dtype="datetime64[ns]")
    lat = np.array([40.0, 40.0, 40.0, -20.0, 40.0])
    lon = np.array([5.0, 7.0, 0.0, 301.0, 0.0])  # 5E: 426 km (in); 7E: 596 km (out)
    lab = track_labels(valid, lat, lon, csv)["event_cyclone"]
    np.testing.assert_array_equal(lab.values, [1, 0, 0, 1, np.nan])
    assert lab.kind == "concept"


def test_track_table_errors():
    df = pd.DataFrame({"time": ["2021-01-01"], "lat": [95.0], "lon": [0.0], "radius_km": [100.0]})
    with pytest.raises(ValueError, match=r"track table: lat 95.0 in row 0 is outside \[-90, 90\]"):
        read_tracks(df)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['radius_km'\]"):
        read_tracks(df.drop(columns="radius_km"))
    with pytest.raises(ValueError, match="kind 'tropical cyclone' must be letters"):
        read_tracks(df.assign(lat=10.0, kind="tropical cyclone"))


def test_season_and_time_of_day_labels():
    valid = np.array(["2021-01-15T12", "2021-07-15T12", "2021-01-15T12", "2021-04-01T00"], dtype="datetime64[ns]")
    lat = np.array([45.0, 45.0, -45.0, 0.0])
    lon = np.array([0.0, 0.0, 180.0, 90.0])
    cal = calendar_labels(valid, lat, lon)
    np.testing.assert_array_equal(cal["season_DJF"].values, [1, 0, 1, 0])
    np.testing.assert_array_equal(cal["season_JJA"].values, [0, 1, 0, 0])
    np.testing.assert_array_equal(cal["season_MAM"].values, [0, 0, 0, 1])
    # local solar time: 12 UTC at 0E is noon (cos = -1); at 180E it is midnight (cos = +1); 00 UTC at 90E is 06
    np.testing.assert_allclose(cal["tod_cos"].values[:3], [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(cal["tod_sin"].values[3], 1.0, atol=1e-6)
    np.testing.assert_array_equal(cal["daylight"].values[:3], [1, 1, 0])
    hemi = calendar_labels(valid, lat, lon, hemisphere_aware=True)
    np.testing.assert_array_equal(hemi["season_winter"].values, [1, 0, 0, 0])
    np.testing.assert_array_equal(hemi["season_summer"].values, [0, 1, 1, 0])
    np.testing.assert_array_equal(hemi["season_spring"].values, [0, 0, 0, 1])


def _tokens(fields, n=500, with_levels=False, seed=0):
    rng = np.random.default_rng(seed)
    init = np.array(["2021-01-15T00:00:00", "2021-01-14T18:00:00"])
    ti = rng.integers(0, 2, n)
    lead = np.where(ti == 0, rng.choice([0, 6, 12], n), 6)  # 12 h from 00Z is not in the fields
    coords = {
        "time": ("token", init[ti]),
        "lead": ("token", lead),
        "lat": ("token", rng.choice(fields.lat.values, n)),
        "lon": ("token", rng.choice(fields.lon.values, n)),
        "area_weight": ("token", rng.uniform(0.5, 1.5, n)),
    }
    coords["level"] = ("token", rng.choice([250.0, 500.0, 1000.0], n) if with_levels else np.full(n, np.nan))
    return xr.Dataset(coords=coords), init[ti], lead


def test_labels_align_to_tokens_sfno_style():
    lat, lon = _grid("legendre-gauss")
    rng = np.random.default_rng(1)
    ds = _fields(lat, lon, t=rng.normal(250, 10, (2, 3, lat.size, lon.size)))
    tokens, init, lead = _tokens(ds)
    labels = physical_labels(tokens, ds, derived=(), static=False, calendar=False)
    assert list(labels.data_vars) == ["t_250", "t_500", "t_1000"]
    assert labels.sizes == {"token": tokens.sizes["token"]}
    assert labels.attrs["group"] == "time" and labels.attrs["weight"] == "area_weight"
    valid = init.astype("datetime64[ns]") + lead.astype("timedelta64[h]")
    for i in range(tokens.sizes["token"]):
        got = labels["t_500"].values[i]
        if valid[i] not in ds.time.values:
            assert np.isnan(got)
            continue
        want = ds["t"].sel(time=valid[i], level=500, lat=tokens.lat.values[i], lon=tokens.lon.values[i]).item()
        assert got == np.float32(want)
    assert labels["t_500"].dtype == np.float32 and labels["t_500"].attrs == {
        "kind": "continuous", "long_name": "t at 500 hPa", "units": "K"}
    np.testing.assert_array_equal(labels["lat"].values, tokens["lat"].values)


def test_labels_align_to_tokens_with_levels_and_full_contract():
    lat, lon = _grid("legendre-gauss")
    phi, _ = _mesh(lat, lon)
    rng = np.random.default_rng(2)
    u = rng.normal(0, 10, (2, 3, lat.size, lon.size))
    ds = _fields(lat, lon, u=u, v=np.zeros_like(u), t=rng.normal(250, 10, u.shape), z=5e4 + 0 * u)
    ds["zs"] = (("lat", "lon"), np.full((lat.size, lon.size), 1000.0 * G0, "float32"), {"units": "m2 s-2"})
    tokens, init, lead = _tokens(ds, with_levels=True)
    masks = xr.Dataset({"river": (("time", "lat", "lon"), (np.abs(np.rad2deg(phi)) < 30)[None].repeat(2, 0).astype("float32"))},
                       coords={"time": ds.time, "lat": lat, "lon": lon})
    labels = physical_labels(tokens, ds, event_masks=masks)
    valid = init.astype("datetime64[ns]") + lead.astype("timedelta64[h]")
    have = np.isin(valid, ds.time.values)
    idx = np.flatnonzero(have)[:50]
    want = [ds["u"].sel(time=valid[i], level=tokens.level.values[i], lat=tokens.lat.values[i],
                        lon=tokens.lon.values[i]).item() for i in idx]
    np.testing.assert_array_equal(labels["u"].values[idx], np.float32(want))
    assert np.isnan(labels["u"].values[~have]).all()
    for name, da in labels.data_vars.items():
        assert da.dtype == np.float32 and da.dims == ("token",)
        assert da.attrs["kind"] in ("concept", "continuous")
        if da.attrs["kind"] == "concept":
            assert set(np.unique(da.values[np.isfinite(da.values)])) <= {0.0, 1.0}, name
        else:
            assert "units" in da.attrs, name
    assert labels["jet"].attrs["kind"] == "concept"
    np.testing.assert_allclose(labels["orography"].values, 1000.0, rtol=1e-6)
    np.testing.assert_array_equal(labels["event_river"].values[have], (np.abs(tokens.lat.values) < 30)[have])
    assert labels["season_DJF"].values[have].min() == 1.0
    assert "zs" not in labels


def test_sample_fields_missing_level_is_an_error():
    lat, lon = _grid("legendre-gauss")
    ds = _fields(lat, lon, t=250.0)
    tokens, _, _ = _tokens(ds, n=10)
    with pytest.raises(ValueError, match=r"field 't' has no level 850 hPa \(levels: \[250.0, 500.0, 1000.0\]\)"):
        sample_fields(tokens, ds, levels=[850])


def test_shallow_water_output_prepares_and_labels():
    from sciinterp_adapters.weather.cf import prepare_dataset
    from sciinterp_adapters.weather.shallow_water import generate_shallow_water

    sw = generate_shallow_water(nlat=16, nlon=32, n_trajectories=1, n_times=2, spinup_hours=6,
                                eddy_wavenumbers=(1, 4), variables=("z", "u", "v", "vo"), progress=False)
    ds = prepare_dataset(sw, ["z", "u", "v", "vo"])
    assert ds.attrs["cf_normalisation"] == "none"
    d = derive_fields(ds, ["vorticity", "jet"], jet_threshold=20.0)
    assert d["vorticity"].attrs["method"] == "spectral"
    # our spectral vorticity reproduces the solver's own (same transforms, float32 round-off)
    a, b = d["vorticity"].values, ds["vo"].values
    assert np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) < 1e-3
    speed = np.hypot(ds["u"], ds["v"]).values
    np.testing.assert_array_equal(d["jet"].values, (speed > 20.0).astype("float32"))
    assert d["jet"].attrs["kind"] == "concept"


def test_labels_from_a_real_store_with_era5(tmp_path):
    import torch

    from sciinterp.adapter import TokenBatch
    from sciinterp.store import StoreWriter, open_store
    from sciinterp_adapters.weather.era5 import load_era5_sample

    e = load_era5_sample(["u", "v", "z", "t"], levels=[250, 500, 850, 1000])
    la, lo = np.meshgrid(e.lat.values, e.lon.values, indexing="ij")
    n = la.size
    coords = {
        "time": np.full(2 * n, "1959-01-02T00:00:00"),
        "lead": np.repeat([0, 6], n),
        "level": np.full(2 * n, np.nan),
        "lat": np.tile(la.ravel(), 2),
        "lon": np.tile(lo.ravel(), 2),
        "area_weight": np.tile(np.cos(np.deg2rad(la.ravel())), 2),
    }
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.append(TokenBatch(acts={"h": torch.zeros(2 * n, 4)}, coords=coords, items=["1959-01-02T00"]))
    tokens = open_store(tmp_path / "s.zarr")
    labels = physical_labels(tokens, e, levels=[250, 500])
    assert labels.sizes["token"] == 2 * n
    # lead 0 tokens read the analysis; lead 6 has no field -> NaN, static labels still defined
    np.testing.assert_array_equal(labels["z_500"].values[:n], e["z"].sel(level=500).values.ravel())
    assert np.isnan(labels["z_500"].values[n:]).all() and np.isfinite(labels["land"].values).all()
    sahara = np.flatnonzero((np.abs(coords["lat"] - 22.0) < 3) & (np.abs(coords["lon"] - 11.25) < 0.1))
    assert labels["land"].values[sahara].min() == 1.0
    assert labels["season_DJF"].values.min() == 1.0
    assert labels["jet"].values[:n].mean() > 0.1  # January: the subtropical jets
    assert labels.attrs == {**labels.attrs, "group": "time", "weight": "area_weight"}


def test_raw_fields_are_normalised_before_labelling():
    lat, lon = _grid("legendre-gauss")
    rng = np.random.default_rng(3)
    u = rng.normal(0, 10, (2, 3, lat.size, lon.size))
    ds = _fields(lat, lon, u=u, v=u[::-1].copy(), t=rng.normal(250, 10, u.shape))
    raw = ds.isel(lat=slice(None, None, -1)).rename(lat="latitude", lon="longitude")
    raw = raw.assign_coords(longitude=((raw.longitude + 180) % 360) - 180).sortby("longitude")
    tokens, _, _ = _tokens(ds, n=300, with_levels=True)
    ref = physical_labels(tokens, ds, static=False, calendar=False)
    got = physical_labels(tokens, raw, static=False, calendar=False)
    assert list(got.data_vars) == list(ref.data_vars)
    for v in ref.data_vars:
        np.testing.assert_allclose(got[v].values, ref[v].values, rtol=1e-5, atol=1e-9, err_msg=v)
