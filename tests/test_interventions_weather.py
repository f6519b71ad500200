"""SFNO interventions on a tiny random SFNO: forecast faithfulness, box/lead edits, physical checks, bad requests."""

import numpy as np
import pytest
import torch
import xarray as xr

pytest.importorskip("torch_harmonics")

from sciinterp.sae import SAEConfig, SparseAutoencoder  # noqa: E402
from sciinterp.splice import FeatureEdit  # noqa: E402
from sciinterp_adapters.weather.interventions import (  # noqa: E402
    G, R_DRY, ForecastLossRecovered, box_mask, conservation, edit_forecast, forecast_faithfulness,
    hydrostatic_thickness_error, lead_step, level_field, shallow_water_budgets,
)
from sciinterp_adapters.weather.sfno import SFNOAdapter, SFNOMeta, build_sfno  # noqa: E402
from sciinterp_adapters.weather.shallow_water import grid_latitudes  # noqa: E402

NLAT, NLON, D = 16, 32, 8


def tiny_adapter():
    torch.manual_seed(0)
    meta = SFNOMeta(
        model=dict(img_size=[NLAT, NLON], scale_factor=1, in_chans=3, out_chans=3, embed_dim=D, num_layers=2),
        variables=["z", "u", "v"], mean={"z": 9.8e4, "u": 10.0, "v": 0.0}, std={"z": 3e3, "u": 10.0, "v": 3.0},
        tendency_std={"z": 500.0, "u": 2.0, "v": 2.0}, model_id="tiny-sfno",
    )
    return SFNOAdapter(None, model=build_sfno(meta.model), meta=meta)


def fields(n_times=4, seed=0):
    rng = np.random.default_rng(seed)
    lat, lon = grid_latitudes(NLAT), np.arange(NLON) * 360.0 / NLON
    base, scale = {"z": 9.8e4, "u": 10.0, "v": 0.0}, {"z": 3e3, "u": 10.0, "v": 3.0}
    units = {"z": "m2 s-2", "u": "m s-1", "v": "m s-1"}
    data = {v: (("time", "lat", "lon"), (base[v] + scale[v] * rng.standard_normal((n_times, NLAT, NLON))).astype("float32"),
                {"units": units[v]}) for v in base}
    time = np.datetime64("2001-03-01T00") + np.arange(n_times) * np.timedelta64(6, "h")
    return xr.Dataset(data, coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                                    "lon": ("lon", lon, {"units": "degrees_east"})})


def linear_sae(d, mean=None, decode=True):
    """Real ReLU SAE with x̂ = mean + (x − mean) (decode) or x̂ = mean (decode=False)."""
    mean = torch.zeros(d) if mean is None else mean
    sae = SparseAutoencoder(SAEConfig(architecture="relu", d_sae=2 * d, k=0), d)
    enc = torch.stack([torch.eye(d), -torch.eye(d)], dim=2).reshape(d, 2 * d)
    with torch.no_grad():
        sae.W_enc.copy_(enc)
        sae.W_dec.copy_(enc.t() if decode else torch.zeros(2 * d, d))
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean)
    return sae


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ad():
    return tiny_adapter()


@pytest.fixture(scope="module")
def ds():
    return fields()


def test_perfect_sae_forecast_is_the_model_and_mean_sae_is_mean_ablation(ad, ds):
    r = forecast_faithfulness(ad, ds, "block0", linear_sae(D), n_steps=3)
    assert r.attrs["fve"] == pytest.approx(1.0, abs=1e-5) and list(r["lead"].values) == [6, 12, 18]
    np.testing.assert_allclose(r["rmse_clean"].sel(run=["sae", "sae_error"]), 0.0, atol=1e-2)
    np.testing.assert_allclose(r["recovered"], 1.0, atol=1e-6)
    assert float(r["rmse_clean"].sel(run="zero", variable="z").min()) > 1.0
    # truth exists for init 0..2 at +6 h (4 times 6 h apart), init 0 at +18 h
    assert np.isfinite(r["rmse_truth"].sel(run="clean")).all()
    mean = torch.linspace(-1, 1, D)
    m = forecast_faithfulness(ad, ds, "block1", linear_sae(D, mean, decode=False), n_steps=2, mean=mean)
    np.testing.assert_allclose(m["rmse_clean"].sel(run="sae"), m["rmse_clean"].sel(run="mean"), rtol=1e-4)
    np.testing.assert_allclose(m["recovered"], 0.0, atol=1e-4)
    np.testing.assert_allclose(m["rmse_clean"].sel(run="sae_error"), 0.0, atol=1e-2)


def test_edit_at_a_lead_changes_nothing_before_it(ad, ds):
    r = edit_forecast(ad, ds, "block1", linear_sae(D), [FeatureEdit([0, 2, 4], "scale", 5.0)],
                      lat=(20, 60), lon=(350, 40), lead=12, n_steps=3)
    assert r.attrs["edit_leads"] == "[12]"
    for v in ("z", "u", "v"):
        assert float(abs(r[f"{v}_diff"].sel(lead=6)).max()) == 0.0
        assert float(abs(r[f"{v}_diff"].sel(lead=12)).max()) > 0.0
    assert float(r["rmse_diff"].sel(variable="z", lead=6)) == 0.0 and float(r["rmse_diff"].sel(variable="z", lead=18)) > 0
    assert float(r["mass_change"].sel(lead=6)) == 0.0 and float(r["mass_ratio"].sel(lead=12)) > 0


def test_edit_at_the_pointwise_decoder_stays_in_the_box(ad, ds):
    r = edit_forecast(ad, ds, "decoder", linear_sae(3), [FeatureEdit([0], "clamp", 2.0)],
                      lat=(-30, 10), lon=(100, 160), lead=6, n_steps=1)
    changed = abs(r["z_diff"].isel(time=0, lead=0)) > 0
    inside = (r["lat"] >= -30) & (r["lat"] <= 10) & (r["lon"] >= 100) & (r["lon"] <= 160)
    assert bool(changed.where(~inside, False).any()) is False and int(changed.sum()) > 0
    assert int(inside.sum()) == int((changed | inside).sum())


def test_box_mask_wraps_longitude_and_rejects_bad_boxes(ad):
    m = box_mask(ad, (NLAT, NLON), None, (340, 15))
    lons = np.arange(NLON) * 360 / NLON
    assert set(lons[m[0].numpy()]) == {348.75, 0.0, 11.25}
    assert set(lons[box_mask(ad, (NLAT, NLON), None, (-20, 15))[0].numpy()]) == {348.75, 0.0, 11.25}
    assert int(box_mask(ad, (NLAT, NLON), (-90, 90), None).sum()) == NLAT * NLON
    with pytest.raises(ValueError, match=r"lat box \(95, 100\) must satisfy -90 <= south <= north <= 90"):
        box_mask(ad, (NLAT, NLON), (95, 100), None)
    with pytest.raises(ValueError, match=r"lon box \(400, 410\) is outside \[-180, 360\]"):
        box_mask(ad, (NLAT, NLON), None, (400, 410))
    with pytest.raises(ValueError, match=r"lat/lon box lat=\(1, 2\) lon=\(3, 4\) contains no point of the hook's 16x32 grid"):
        box_mask(ad, (NLAT, NLON), (1, 2), (3, 4))


def test_bad_requests_name_the_value(ad, ds):
    sae = linear_sae(D)
    with pytest.raises(ValueError, match=r"lead 30 h is not in this rollout of 3 steps of 6 h \(leads \[6, 12, 18\]\)"):
        edit_forecast(ad, ds, "block0", sae, [FeatureEdit([0])], lead=30, n_steps=3)
    assert lead_step(ad, 18, 3) == 2
    with pytest.raises(ValueError, match="level=500: hook 'block0' of sfno has no levels"):
        edit_forecast(ad, ds, "block0", sae, [FeatureEdit([0])], level=500)
    with pytest.raises(ValueError, match="unknown feature index 16: this SAE has 16 features"):
        edit_forecast(ad, ds, "block0", sae, [FeatureEdit([16])], n_steps=1)
    with pytest.raises(KeyError, match="unknown hook 'block7'"):
        edit_forecast(ad, ds, "block7", sae, [FeatureEdit([0])], n_steps=1)
    with pytest.raises(ValueError, match="contains no point"):
        edit_forecast(ad, ds, "block0", sae, [FeatureEdit([0])], lat=(1, 2), lon=(3, 4), n_steps=1)


def _state(h, u, v):
    lat, lon = grid_latitudes(32), np.arange(64) * 360 / 64
    dims = ("time", "lat", "lon")
    da = lambda a: xr.DataArray(np.broadcast_to(a, (1, 32, 64)).astype(float), dims=dims, coords={"lat": lat, "lon": lon})  # noqa: E731
    return da(G * h), da(u), da(v), lat


def test_shallow_water_budgets_on_analytic_states():
    z, u, v, lat = _state(1000.0, 0.0, 0.0)
    b = shallow_water_budgets(z, u, v).squeeze("time")
    assert float(b["mass"]) == pytest.approx(1000.0) and float(b["energy"]) == pytest.approx(0.5 * G * 1000.0**2)
    # solid-body rotation U cos φ: KE = ½ H U² <cos² φ>, <cos² φ> = 2/3 on the sphere
    U = 20.0
    z, u, v, lat = _state(1000.0, U * np.cos(np.radians(lat))[:, None], 0.0)
    ke = float(shallow_water_budgets(z, u, v)["energy"].squeeze()) - 0.5 * G * 1000.0**2
    assert ke == pytest.approx(0.5 * 1000.0 * U**2 * 2 / 3, rel=0.02)


def test_conservation_tells_a_mass_preserving_edit_from_a_mass_adding_one():
    z, u, v, lat = _state(1000.0, 10.0, 0.0)
    init = xr.Dataset({"z": z, "u": u, "v": v})
    lead = xr.DataArray([6, 12], dims="lead")
    clean = {k: (init[k] * xr.ones_like(lead)).transpose("time", "lead", "lat", "lon") for k in "zuv"}
    clean["z"] = clean["z"] + G * xr.DataArray([0.5, 1.0], dims="lead")  # the model drifts by 1 m of depth
    pattern = xr.DataArray(np.sin(np.radians(np.arange(64) * 360 / 64)), dims="lon")  # zero mean along lon
    for bump, expect in ((G * 5.0 * pattern, 0.0), (G * 5.0 * xr.ones_like(pattern), 5.0)):
        edit = xr.Dataset({f"{k}_clean": clean[k] for k in "zuv"})
        for k in "zuv":
            edit[f"{k}_edited"] = clean[k] + (bump if k == "z" else 0)
        c = conservation(init, edit)
        np.testing.assert_allclose(c["mass_change"], expect, atol=1e-6)
        np.testing.assert_allclose(c["mass_drift"], [0.5, 1.0], atol=1e-9)
        np.testing.assert_allclose(c["mass_ratio"], expect / 1.0, atol=1e-6)
        assert c["mass"].dims == ("forecast", "time", "lead")


def test_hydrostatic_thickness_error_is_zero_for_an_isothermal_atmosphere():
    levels = np.array([1000.0, 850.0, 700.0, 500.0])
    lat, lon = grid_latitudes(8), np.arange(16) * 22.5
    T = 250.0
    z = R_DRY * T * np.log(1000.0 / levels)  # geopotential relative to 1000 hPa
    dims, coords = ("level", "lat", "lon"), {"level": levels, "lat": lat, "lon": lon}
    zz = xr.DataArray(np.broadcast_to(z[:, None, None], (4, 8, 16)).copy(), dims=dims, coords=coords)
    tt = xr.DataArray(np.full((4, 8, 16), T), dims=dims, coords=coords)
    assert float(hydrostatic_thickness_error(zz, tt)) == pytest.approx(0.0, abs=1e-9)
    zz.loc[{"level": 500.0}] += G * 40.0
    assert float(hydrostatic_thickness_error(zz, tt)) == pytest.approx(40.0)
    with pytest.raises(ValueError, match=r"t lacks level\(s\) \[500.0\] hPa"):
        hydrostatic_thickness_error(zz, tt.sel(level=[1000.0, 850.0]))


def test_downstream_eval_for_the_trainer(ad, ds):
    out = ForecastLossRecovered(ad, "block0", ds, n_steps=2)(linear_sae(D))
    assert out["recovered"] == pytest.approx(1.0, abs=1e-6) and out["fve"] == pytest.approx(1.0, abs=1e-5)
    assert set(out) >= {"recovered_z", "rmse_sae_u", "rmse_mean_v"}


def test_thickness_check_on_a_model_with_pressure_level_channels():
    """A tiny SFNO over z500, z1000, t500, t700, t1000: thickness consistency before and after an edit."""
    torch.manual_seed(0)
    names = ["z500", "z1000", "t500", "t700", "t1000"]
    mean = {"z500": 5.5e4, "z1000": 1e3, "t500": 250.0, "t700": 265.0, "t1000": 285.0}
    std = {"z500": 2e3, "z1000": 1e3, "t500": 5.0, "t700": 5.0, "t1000": 5.0}
    meta = SFNOMeta(model=dict(img_size=[NLAT, NLON], scale_factor=1, in_chans=5, out_chans=5, embed_dim=D, num_layers=1),
                    variables=names, mean=mean, std=std, tendency_std={k: v / 10 for k, v in std.items()}, model_id="tiny-levels")
    ad = SFNOAdapter(None, model=build_sfno(meta.model), meta=meta)
    lat, lon = grid_latitudes(NLAT), np.arange(NLON) * 360.0 / NLON
    t = {"t500": 250.0, "t700": 265.0, "t1000": 285.0}
    lnp = np.log([500.0, 700.0, 1000.0])
    tbar = np.trapezoid([t["t500"], t["t700"], t["t1000"]], lnp) / (lnp[-1] - lnp[0])
    z1000 = 1000.0
    state = {**t, "z1000": z1000, "z500": z1000 + R_DRY * tbar * np.log(2.0)}  # exactly hydrostatic
    time = np.datetime64("2001-03-01T00") + np.arange(2) * np.timedelta64(6, "h")
    ds = xr.Dataset({k: (("time", "lat", "lon"), np.full((2, NLAT, NLON), v, dtype="float32"), {"units": "m2 s-2" if k[0] == "z" else "K"})
                     for k, v in state.items()}, coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                                                         "lon": ("lon", lon, {"units": "degrees_east"})})
    assert float(hydrostatic_thickness_error(*(level_field(ds.isel(time=0), n) for n in "zt"))) == pytest.approx(0, abs=0.01)
    r = edit_forecast(ad, ds, "block0", linear_sae(D), [FeatureEdit([0, 2], "scale", 5.0)], lead=12, n_steps=2)
    assert r["thickness_error"].dims == ("forecast", "time", "lead")
    assert float(r["thickness_change"].sel(lead=6)) == 0 and float(r["thickness_change"].sel(lead=12)) > 0
    assert float(r["thickness_drift"].sel(lead=6)) > 0 and np.isfinite(r["thickness_ratio"]).all()
    before = r["thickness_error"].sel(lead=6)
    np.testing.assert_array_equal(before.sel(forecast="clean"), before.sel(forecast="edited"))
