"""FourCastNet-v2 network layout: a small random net saved in the released checkpoint layout."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

pytest.importorskip("torch_harmonics")
pytest.importorskip("ai_models_fourcastnetv2")

from sciinterp.provenance import state_dict_checksum  # noqa: E402
from sciinterp_adapters.weather.fcn2 import FCN2_CHANNELS, FourCastNetV2Adapter, build_fcn2, save_fcn2, split_channel  # noqa: E402
from sciinterp_adapters.weather.sfno import item_key  # noqa: E402

CHANNELS = ["10u", "msl", "u850", "u500", "z500"]
SMALL = dict(img_size=(17, 32), scale_factor=2, embed_dim=16, num_layers=2)
MEANS = np.array([0.0, 101325.0, 5.0, 10.0, 55000.0, 99.0])  # one extra channel, as in the release
STDS = np.array([5.0, 1000.0, 8.0, 12.0, 3000.0, 1.0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_fcn2({**SMALL, "in_chans": 5, "out_chans": 5})
    d = save_fcn2(tmp_path_factory.mktemp("fcn2") / "small", net, MEANS, STDS)
    return d, net


def data(n_times=2):
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(90, -90, 17), np.arange(32) * 11.25
    t = pd.date_range("2018-01-01", periods=n_times, freq="6h")
    sfc = lambda m, s: (("time", "lat", "lon"), (m + s * rng.standard_normal((n_times, 17, 32))).astype("float32"))  # noqa: E731
    pl = lambda m, s: (("time", "level", "lat", "lon"), (m + s * rng.standard_normal((n_times, 2, 17, 32))).astype("float32"))  # noqa: E731
    ds = xr.Dataset(
        {"10u": sfc(0, 5), "msl": sfc(101325, 1000), "u": pl(8, 10), "z": pl(50000, 5000)},
        coords={"time": t, "level": ("level", [850.0, 500.0], {"units": "hPa"}), "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})},
    )
    ds["10u"].attrs["units"] = ds["u"].attrs["units"] = "m s-1"
    ds["msl"].attrs["units"], ds["z"].attrs["units"] = "Pa", "m2 s-2"
    return ds


def test_channel_names():
    assert len(FCN2_CHANNELS) == 73 and FCN2_CHANNELS[:3] == ["10u", "10v", "100u"]
    assert split_channel("u850") == ("u", 850.0) and split_channel("100u") == ("100u", None) and split_channel("msl") == ("msl", None)


def test_released_layout_loads_and_harvests(ckpt):
    d, net = ckpt
    record = torch.load(d / "weights.tar", weights_only=True)
    assert all(k.startswith("module.") for k in record["model_state"])
    ad = FourCastNetV2Adapter(d, channels=CHANNELS, model_kwargs=SMALL, n_steps=2)
    assert ad.provenance()["model_checksum"] == state_dict_checksum(net)
    assert ad.hook_names() == ["encoder", "block0", "block1", "decoder"] and ad.hook_point("block0").channel_dim == 1
    assert ad.meta.mean["z500"] == 55000.0 and ad.meta.std["msl"] == 1000.0 and ad.meta.target == "state"
    ds = data()
    batches = list(ad.harvest(ds, ["block1"]))
    assert [b.items for b in batches] == [[item_key("2018-01-01T00:00:00", 6), item_key("2018-01-01T06:00:00", 6)],
                                          [item_key("2018-01-01T00:00:00", 12), item_key("2018-01-01T06:00:00", 12)]]
    # channel order follows CHANNELS: u850 is ds.u at 850 hPa
    x = ad._tensor(ad.prepare(ds))
    np.testing.assert_array_equal(x[:, 2].numpy(), ds["u"].sel(level=850.0).values)
    seen = {}
    h = net.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("b", o))
    mean = torch.tensor(MEANS[:5], dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(STDS[:5], dtype=torch.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        y = net.eval()((x - mean) / std)
    h.remove()
    torch.testing.assert_close(batches[0].acts["block1"][: 17 * 32], seen["b"][0].reshape(16, -1).T)
    fc = ad.forecast(ds, 1)
    np.testing.assert_allclose(fc["msl"].isel(lead=0).values, (y * std + mean)[:, 1].numpy(), rtol=1e-5)


def test_missing_transform_buffers_ok_wrong_width_fails(ckpt, tmp_path):
    d, net = ckpt
    record = torch.load(d / "weights.tar", weights_only=True)
    record["model_state"] = {k: v for k, v in record["model_state"].items() if not k.startswith("module.trans_down.")}
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    torch.save(record, stripped / "weights.tar")
    for f in ("global_means.npy", "global_stds.npy"):
        (stripped / f).write_bytes((d / f).read_bytes())
    assert FourCastNetV2Adapter(stripped, channels=CHANNELS, model_kwargs=SMALL).provenance()["model_checksum"] == state_dict_checksum(net)
    with pytest.raises(ValueError, match=r"weights\.tar: parameter 'pos_embed' has shape \(1, 16, 17, 32\) in the file but \(1, 32, 17, 32\)"):
        FourCastNetV2Adapter(d, channels=CHANNELS, model_kwargs={**SMALL, "embed_dim": 32})
    with pytest.raises(FileNotFoundError, match=r"nowhere/weights\.tar"):
        FourCastNetV2Adapter(tmp_path / "nowhere", channels=CHANNELS, model_kwargs=SMALL)
