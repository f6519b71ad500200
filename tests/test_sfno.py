"""SFNO adapter: hooks, tokens and coordinates, rollouts, normalisation, checkpoints, parts."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

pytest.importorskip("torch_harmonics")

from sciinterp.adapter import Adapter, Spliceable  # noqa: E402
from sciinterp.harvest import harvest_to_store  # noqa: E402
from sciinterp.provenance import state_dict_checksum  # noqa: E402
from sciinterp.store import open_store  # noqa: E402
from sciinterp_adapters.weather.sfno import SFNOAdapter, SFNOMeta, build_sfno, item_key, save_sfno  # noqa: E402
from sciinterp_adapters.weather.shallow_water import grid_latitudes  # noqa: E402

NLAT, NLON = 16, 32
VARS = ["z", "u", "v"]
UNITS = {"z": "m2 s-2", "u": "m s-1", "v": "m s-1"}


def tiny_meta(scale_factor=1, target="tendency", **model):
    kw = dict(img_size=[NLAT, NLON], scale_factor=scale_factor, in_chans=3, out_chans=3, embed_dim=8, num_layers=2, **model)
    return SFNOMeta(
        model=kw, variables=VARS, mean={"z": 9.8e4, "u": 10.0, "v": 0.0}, std={"z": 3e3, "u": 10.0, "v": 3.0},
        tendency_std={"z": 500.0, "u": 2.0, "v": 2.0}, target=target, model_id="tiny-sfno",
    )


def tiny_adapter(**kw):
    torch.manual_seed(0)
    meta = kw.pop("meta", None) or tiny_meta()
    return SFNOAdapter(None, model=build_sfno(meta.model), meta=meta, **kw)


def fields(n_times=3, seed=0):
    rng = np.random.default_rng(seed)
    lat, lon = grid_latitudes(NLAT), np.arange(NLON) * 360.0 / NLON
    base = {"z": 9.8e4, "u": 10.0, "v": 0.0}
    scale = {"z": 3e3, "u": 10.0, "v": 3.0}
    data = {
        v: (("time", "lat", "lon"), (base[v] + scale[v] * rng.standard_normal((n_times, NLAT, NLON))).astype("float32"), {"units": UNITS[v]})
        for v in VARS
    }
    time = pd.date_range("2001-03-01", periods=n_times, freq="6h")
    return xr.Dataset(data, coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})})


@pytest.fixture(scope="module")
def ds():
    return fields()


def test_protocols_and_hooks():
    ad = tiny_adapter()
    assert isinstance(ad, Adapter) and isinstance(ad, Spliceable)
    assert ad.hook_names() == ["encoder", "block0", "block1", "decoder"]
    hp = ad.hook_point("block1")
    assert hp.module is ad.model.blocks[1] and hp.channel_dim == 1 and hp.output_index is None
    prov = ad.provenance()
    assert prov["model_id"] == "tiny-sfno" and prov["model_checksum"] == state_dict_checksum(ad.model)
    with pytest.raises(KeyError, match="unknown hook 'block7'"):
        ad.hook_point("block7")


def test_tokens_coords_and_values_match_forward(ds):
    ad = tiny_adapter(n_steps=2, batch_size=2)
    batches = list(ad.harvest(ds, ["block0", "decoder"]))
    # 3 initial times in batches of 2, 2 leads each -> (2 times, 6 h), (2, 12 h), (1, 6 h), (1, 12 h)
    assert [b.items for b in batches][:2] == [
        [item_key("2001-03-01T00:00:00", 6), item_key("2001-03-01T06:00:00", 6)],
        [item_key("2001-03-01T00:00:00", 12), item_key("2001-03-01T06:00:00", 12)],
    ]
    assert item_key("2001-03-01T00:00:00", 6) == "2001-03-01T00:00:00/+6h"
    b = batches[1]
    per = NLAT * NLON
    assert b.acts["block0"].shape == (2 * per, 8) and b.acts["decoder"].shape == (2 * per, 3)
    c = b.coords
    assert list(np.unique(c["time"])) == ["2001-03-01T00:00:00", "2001-03-01T06:00:00"]
    assert (c["lead"] == 12).all() and np.isnan(c["level"]).all()
    assert c["lat"][0] == pytest.approx(90.0) and c["lat"][per - 1] == pytest.approx(-90.0)
    assert c["lon"][1] == pytest.approx(360.0 / NLON)
    assert c["area_weight"][:per].mean() == pytest.approx(1.0)
    assert c["area_weight"][0] == pytest.approx(0.0, abs=1e-12)  # the pole
    # lead-12 activations are those of the model applied to the 6-h forecast
    x0 = ad._tensor(ds.isel(time=[0, 1]))
    seen = {}
    h = ad.model.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("b0", o))
    with torch.no_grad():
        x1 = ad.step(x0)
        seen.clear()
        ad.step(x1)
    h.remove()
    i_lat, i_lon, ch = 5, 7, 3
    row = per + i_lat * NLON + i_lon  # second item (06 UTC), grid point (5, 7)
    assert b.acts["block0"][row, ch].item() == pytest.approx(seen["b0"][1, ch, i_lat, i_lon].item(), rel=1e-6)
    assert c["lat"][row] == pytest.approx(grid_latitudes(NLAT)[i_lat]) and c["lon"][row] == pytest.approx(i_lon * 360 / NLON)


def test_batches_are_column_major_with_shared_read_only_coords(ds, tmp_path):
    """No element-wise transpose in the adapter nor the store; coordinate columns built once per batch of times."""
    import zarr

    ad = tiny_adapter(n_steps=2, batch_size=2)
    batches = list(ad.harvest(ds, ["block1"]))
    x = batches[0].acts["block1"]
    assert x.shape == (2 * NLAT * NLON, 8) and x.T.is_contiguous() and not x.is_contiguous()
    t0, t1 = batches[0].coords["time"], batches[1].coords["time"]
    assert t0 is t1 and not t0.flags.writeable  # the two leads of one batch of initial times
    assert all(not v.flags.writeable for v in batches[0].coords.values())
    again = list(ad.harvest(ds, ["block1"]))
    assert again[0].coords["lat"] is batches[0].coords["lat"]  # cached across harvests
    path = harvest_to_store(ad, ds, ["block1"], tmp_path / "s.zarr", progress=False)
    assert type(zarr.open_array(path / "block1").metadata.codecs[0]).__name__ == "TransposeCodec"
    st = open_store(path)
    np.testing.assert_array_equal(st.block1.values, np.concatenate([b.acts["block1"].numpy() for b in batches]))
    np.testing.assert_array_equal(st.time.values, np.concatenate([b.coords["time"] for b in batches]))
    np.testing.assert_array_equal(st.lat.values, np.concatenate([b.coords["lat"] for b in batches]))


def test_skip_resumes_by_item(ds):
    ad = tiny_adapter(n_steps=2, batch_size=3)
    full = {k: b for b in ad.harvest(ds, ["block1"]) for k in b.items}
    skip = {item_key("2001-03-01T00:00:00", 6), item_key("2001-03-01T06:00:00", 6), item_key("2001-03-01T12:00:00", 6)}
    rest = list(ad.harvest(ds, ["block1"], skip=skip))
    assert [b.items for b in rest] == [[item_key(t, 12) for t in ("2001-03-01T00:00:00", "2001-03-01T06:00:00", "2001-03-01T12:00:00")]]
    torch.testing.assert_close(rest[0].acts["block1"], full[rest[0].items[0]].acts["block1"])
    assert list(ad.harvest(ds, ["block1"], skip=set(full))) == []


def test_two_parts_store_every_item_once(ds, tmp_path):
    ad = tiny_adapter(n_steps=2, batch_size=2)
    ds5 = fields(n_times=5, seed=1)
    for rank in (0, 1):
        harvest_to_store(ad, ds5, ["block0"], tmp_path / "parts", part=(rank, 2), progress=False)
    harvest_to_store(ad, ds5, ["block0"], tmp_path / "one", progress=False)
    parts, one = open_store(tmp_path / "parts"), open_store(tmp_path / "one")
    per = NLAT * NLON
    keys = [f"{t}/+{ld}h" for t, ld in zip(parts["time"].values[::per], parts["lead"].values[::per])]
    assert len(keys) == 10 and len(set(keys)) == 10  # 5 initial times x 2 leads, each exactly once
    ref = {f"{t}/+{ld}h": i for i, (t, ld) in enumerate(zip(one["time"].values[::per], one["lead"].values[::per]))}
    k = keys[3]
    np.testing.assert_allclose(
        parts["block0"].values[3 * per : 4 * per], one["block0"].values[ref[k] * per : (ref[k] + 1) * per], rtol=1e-6
    )
    assert parts.attrs["model_checksum"] == state_dict_checksum(ad.model)


def test_forecast_denormalises(ds):
    ad = tiny_adapter(n_steps=3)
    with torch.no_grad():
        ad.model.decoder[0].weight.zero_()  # zero normalised tendency -> persistence
    fc = ad.forecast(ds)
    assert dict(fc.sizes) == {"time": 3, "lead": 3, "lat": NLAT, "lon": NLON}
    assert list(fc["lead"].values) == [6, 12, 18]
    np.testing.assert_allclose(fc["z"].isel(lead=2).values, ds["z"].values, rtol=1e-6)
    meta = tiny_meta(target="state")
    st = SFNOAdapter(None, model=ad.model, meta=meta, n_steps=1)
    fc = st.forecast(ds)  # zero normalised state -> the per-variable mean
    assert np.allclose(fc["z"].values, 9.8e4) and np.allclose(fc["u"].values, 10.0)
    # one step of the real tendency path equals x + net((x - mean) / std) * tendency_std
    ad2 = tiny_adapter()
    x = ad2._tensor(ds)
    with torch.no_grad():
        want = x + ad2.model((x - ad2.meta.vector("mean")) / ad2.meta.vector("std")) * ad2.meta.vector("tendency_std")
    np.testing.assert_allclose(ad2.forecast(x.numpy(), 1)["u"].isel(lead=0).values, want[:, 1].numpy(), rtol=1e-5, atol=1e-4)


def test_internal_grid_coords_and_mixed_grid_error(ds):
    ad = tiny_adapter(meta=tiny_meta(scale_factor=2))
    b = next(ad.harvest(ds, ["block0"]))
    h, w = ad.model.h, ad.model.w
    assert b.acts["block0"].shape[0] == 3 * h * w
    lats = np.unique(b.coords["lat"])[::-1]
    np.testing.assert_allclose(lats, grid_latitudes(h, "legendre-gauss"))
    assert lats[0] < 90  # Gauss latitudes exclude the poles
    with pytest.raises(ValueError, match="different grids"):
        next(ad.harvest(ds, ["block0", "decoder"]))


def test_checkpoint_round_trip_and_wrong_checkpoint(tmp_path, ds):
    ad = tiny_adapter()
    path = save_sfno(tmp_path / "tiny", ad.model, ad.meta)
    assert path.name == "tiny.safetensors" and (tmp_path / "tiny.json").is_file()
    loaded = SFNOAdapter(path)
    assert loaded.provenance()["model_checksum"] == ad.provenance()["model_checksum"]
    rec = json.loads((tmp_path / "tiny.json").read_text())
    rec["model"]["embed_dim"] = 16
    (tmp_path / "tiny.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"tiny\.safetensors: parameter 'encoder\.0\.weight' has shape \(8, 3, 1, 1\) in the file but \(16, 3, 1, 1\)"):
        SFNOAdapter(path)
    rec["model"]["embed_dim"], rec["model"]["num_layers"] = 8, 3
    (tmp_path / "tiny.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"tiny\.safetensors does not fit this architecture.*missing parameters \['blocks\.2"):
        SFNOAdapter(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors \(a checkpoint is NAME\.safetensors \+ NAME\.json\)"):
        SFNOAdapter(tmp_path / "nope.safetensors")


def test_bad_inputs(ds):
    ad = tiny_adapter()
    with pytest.raises(ValueError, match="input grid is 8x32"):
        next(ad.harvest(ds.isel(lat=slice(0, 8)), ["encoder"]))
    shifted = ds.assign_coords(lat=ds["lat"] * 0.9)
    with pytest.raises(ValueError, match="input latitudes differ"):
        next(ad.harvest(shifted, ["encoder"]))
    with pytest.raises(ValueError, match="unknown hooks"):
        next(ad.harvest(ds, ["block9"]))
    with pytest.raises(ValueError, match=r"lacks variables \['v'\]"):
        SFNOMeta(model={"in_chans": 3}, variables=VARS, mean={"z": 0, "u": 0}, std={"z": 1, "u": 1, "v": 1})


def test_prefetch_thread_same_batches_errors_and_early_close(ds):
    import threading

    eager = list(tiny_adapter(n_steps=2, batch_size=2, prefetch=0).harvest(ds, ["block1"]))
    ahead = list(tiny_adapter(n_steps=2, batch_size=2, prefetch=2).harvest(ds, ["block1"]))
    assert [b.items for b in eager] == [b.items for b in ahead]
    for a, b in zip(eager, ahead):
        torch.testing.assert_close(a.acts["block1"], b.acts["block1"])
    ad = tiny_adapter(meta=tiny_meta(scale_factor=2), prefetch=2)
    with pytest.raises(ValueError, match="different grids"):  # raised in the thread, re-raised here
        list(ad.harvest(ds, ["block0", "decoder"]))
    gen = tiny_adapter(n_steps=2, batch_size=1, prefetch=1).harvest(ds, ["block1"])
    next(gen)
    gen.close()
    assert not any(t.name == "sciinterp-sfno-prefetch" for t in threading.enumerate())
    ad = tiny_adapter(prefetch=1)
    list(ad.harvest(ds, ["block1"]))
    assert not ad.model.blocks[1]._forward_hooks  # hooks removed after the thread finished
