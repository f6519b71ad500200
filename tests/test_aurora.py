"""Aurora adapter with a tiny random-weight config: hooks, latent-token coordinates, items."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

pytest.importorskip("aurora")

from sciinterp.adapter import Adapter, Spliceable  # noqa: E402
from sciinterp.provenance import state_dict_checksum  # noqa: E402
from sciinterp_adapters.weather.aurora import TINY_CONFIG, AuroraAdapter  # noqa: E402
from sciinterp_adapters.weather.sfno import item_key  # noqa: E402

NLAT, NLON, LEVELS = 33, 64, [850.0, 500.0, 250.0]


def era5_like(n_times=3, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.linspace(90, -90, NLAT)
    lon = np.arange(NLON) * 360.0 / NLON
    time = pd.date_range("2020-01-01", periods=n_times, freq="6h")
    surf = {"2t": (280, 10, "K"), "10u": (0, 5, "m s-1"), "10v": (0, 5, "m s-1"), "msl": (101325, 1000, "Pa")}
    atmos = {"z": (5e4, 1e4, "m2 s-2"), "u": (5, 10, "m s-1"), "v": (0, 5, "m s-1"), "t": (250, 20, "K"), "q": (0.003, 0.001, "kg kg-1")}
    data = {k: (("time", "lat", "lon"), (m + s * rng.standard_normal((n_times, NLAT, NLON))).astype("float32"), {"units": u}) for k, (m, s, u) in surf.items()}
    data |= {
        k: (("time", "level", "lat", "lon"), (m + s * rng.standard_normal((n_times, 3, NLAT, NLON))).astype("float32"), {"units": u})
        for k, (m, s, u) in atmos.items()
    }
    data |= {
        "lsm": (("lat", "lon"), (rng.random((NLAT, NLON)) > 0.7).astype("float32"), {"units": "1"}),
        "zs": (("lat", "lon"), (1000 * rng.random((NLAT, NLON))).astype("float32"), {"units": "m2 s-2"}),
        "slt": (("lat", "lon"), rng.integers(0, 7, (NLAT, NLON)).astype("float32"), {"units": "1"}),
    }
    coords = {"time": time, "level": ("level", LEVELS, {"units": "hPa"}), "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})}
    return xr.Dataset(data, coords=coords)


@pytest.fixture(scope="module")
def adapter():
    return AuroraAdapter(config="tiny", n_steps=2, batch_size=2)


@pytest.fixture(scope="module")
def ds():
    return era5_like()


def test_protocol_hooks_provenance(adapter):
    assert isinstance(adapter, Adapter) and isinstance(adapter, Spliceable)
    assert adapter.hook_names() == ["encoder", "enc_layer0", "enc_layer1", "enc_layer2", "dec_layer0", "dec_layer1", "dec_layer2", "backbone"]
    n_params = sum(p.numel() for p in adapter.model.parameters())
    assert 2.5e6 < n_params < 3.5e6
    hp = adapter.hook_point("dec_layer2")
    assert hp.module is adapter.model.backbone.decoder_layers[2] and hp.output_index == 0 and hp.channel_dim == -1
    prov = adapter.provenance()
    assert prov["model_id"] == "aurora-tiny-random-seed0" and prov["model_checksum"] == state_dict_checksum(adapter.model)
    assert AuroraAdapter(config="tiny", seed=0).provenance()["model_checksum"] == prov["model_checksum"]


def test_latent_tokens_map_to_patch_centres(adapter, ds):
    batches = list(adapter.harvest(ds, ["encoder", "dec_layer2"]))
    # 3 times -> 2 initial times (the first is history only), 2 leads
    assert [b.items for b in batches] == [
        [item_key("2020-01-01T06:00:00", 6), item_key("2020-01-01T12:00:00", 6)],
        [item_key("2020-01-01T06:00:00", 12), item_key("2020-01-01T12:00:00", 12)],
    ]
    b = batches[0]
    C, H, W = 4, 8, 16  # latent levels x (32 // 4) x (64 // 4); the 33rd latitude is cropped
    assert b.acts["encoder"].shape == (2 * C * H * W, 64) and b.acts["dec_layer2"].shape == (2 * C * H * W, 64)
    c = b.coords
    assert np.isnan(c["level"]).all()
    np.testing.assert_array_equal(c["latent_level"][: C * H * W].reshape(C, -1)[:, 0], [0, 1, 2, 3])
    # first token: patch rows 90, 84.375, 78.75, 73.125 -> centre 81.5625; lons 0..16.875 -> 8.4375
    assert c["lat"][0] == pytest.approx(81.5625) and c["lon"][0] == pytest.approx(8.4375)
    assert c["lat"][W] == pytest.approx(81.5625 - 22.5) and c["lon"][1] == pytest.approx(8.4375 + 22.5)
    assert c["area_weight"][: H * W].mean() == pytest.approx(1.0)
    assert list(np.unique(c["time"])) == ["2020-01-01T06:00:00", "2020-01-01T12:00:00"]


def test_coarse_stage_coords_and_mixed_error(adapter, ds):
    b = next(adapter.harvest(ds, ["enc_layer0"]))  # after the first merge: 4 x 4 x 8
    assert b.acts["enc_layer0"].shape == (2 * 4 * 4 * 8, 128)
    lats = np.unique(b.coords["lat"])[::-1]
    assert len(lats) == 4 and lats[0] == pytest.approx(81.5625 - 11.25)
    with pytest.raises(ValueError, match="different token grids"):
        next(adapter.harvest(ds, ["encoder", "enc_layer0"]))


def test_values_match_direct_forward_and_skip(adapter, ds):
    skip = {item_key("2020-01-01T06:00:00", 6), item_key("2020-01-01T12:00:00", 6)}
    rest = list(adapter.harvest(ds, ["backbone"], skip=skip))
    assert [b.items for b in rest] == [[item_key("2020-01-01T06:00:00", 12), item_key("2020-01-01T12:00:00", 12)]]
    full = list(adapter.harvest(ds, ["backbone"]))
    torch.testing.assert_close(rest[0].acts["backbone"], full[1].acts["backbone"])
    # lead-6 tokens equal the backbone output of one direct forward
    seen = {}
    h = adapter.model.backbone.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        adapter.model(adapter._batch(adapter.prepare(ds), [1, 2]))
    h.remove()
    torch.testing.assert_close(full[0].acts["backbone"], seen["x"].reshape(-1, seen["x"].shape[-1]))


def test_bad_checkpoint_and_config(tmp_path):
    with pytest.raises(ValueError, match="unknown Aurora config 'huge'"):
        AuroraAdapter(config="huge")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        AuroraAdapter(tmp_path / "nope.ckpt")
    small = AuroraAdapter(config={**TINY_CONFIG, "embed_dim": 32})
    path = tmp_path / "other.ckpt"
    torch.save({k: v for k, v in small.model.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r"checkpoint .*other\.ckpt does not fit the Aurora config 'tiny': size mismatch for encoder\.atmos_latents: .*torch\.Size\(\[3, 32\]\).*\(and \d+ more mismatches\)$"):
        AuroraAdapter(path, config="tiny")


def test_forecast_returns_physical_predictions_per_step(adapter, ds):
    preds = adapter.forecast(ds, 2)
    assert len(preds) == 2
    assert [p.metadata.time[0].isoformat() for p in preds] == ["2020-01-01T12:00:00", "2020-01-01T18:00:00"]
    t2m = preds[0].surf_vars["2t"]
    assert t2m.shape == (2, 1, 32, 64)  # two initial times (batch_size 2), cropped to 32 latitudes
    assert 200 < float(t2m.mean()) < 350  # de-normalised to kelvin
