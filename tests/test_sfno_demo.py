"""The shipped demo SFNO: loads, beats persistence (its recorded skill), harvests exact values."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torch_harmonics")

from sciinterp.provenance import state_dict_checksum  # noqa: E402
from sciinterp_adapters.weather.sfno import DEMO_CHECKPOINT, SFNOAdapter, item_key  # noqa: E402
from sciinterp_adapters.weather.shallow_water import generate_shallow_water  # noqa: E402

pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="demo checkpoint not built")


@pytest.fixture(scope="module")
def demo():
    return SFNOAdapter("demo", n_steps=2, batch_size=2)


@pytest.fixture(scope="module")
def ds():
    return generate_shallow_water(nlat=32, nlon=64, n_trajectories=1, n_times=2, spinup_hours=12, seed=7, progress=False)


def test_demo_checkpoint_is_small_and_recorded_skill_beats_persistence(demo):
    assert DEMO_CHECKPOINT.stat().st_size < 2 * 1024 * 1024
    assert demo.hook_names() == ["encoder", "block0", "block1", "block2", "block3", "decoder"]
    assert sum(p.numel() for p in demo.model.parameters()) == 82368
    rec = json.loads(DEMO_CHECKPOINT.with_suffix(".json").read_text())
    skill = rec["extra"]["skill"]
    for lead in ("6", "24", "48"):
        assert skill["z"][lead] > 0.2, (lead, skill["z"])
    assert demo.provenance()["model_checksum"] == state_dict_checksum(demo.model)
    card = DEMO_CHECKPOINT.parent / "sfno_demo.MODEL_CARD.md"
    assert f"| z | 48 | " in card.read_text()


def test_harvested_value_equals_direct_forward(demo, ds):
    batches = list(demo.harvest(ds, ["block3"]))
    assert [b.items for b in batches][1] == [item_key("2000-01-01T00:00:00", 12), item_key("2000-01-01T06:00:00", 12)]
    b = batches[1]  # lead 12 h: the second forward from each initial time
    i_lat, i_lon, ch, item = 9, 40, 17, 1
    row = item * 32 * 64 + i_lat * 64 + i_lon
    assert b.coords["lat"][row] == pytest.approx(90 - 9 * 180 / 31) and b.coords["lon"][row] == pytest.approx(40 * 5.625)
    assert b.coords["time"][row] == "2000-01-01T06:00:00" and b.coords["lead"][row] == 12
    # direct: normalise, one step by hand (tendency x std), then the network up to block 3
    x = torch.as_tensor(np.stack([ds[v].values for v in ("z", "u", "v")], axis=1))
    m = demo.meta
    mean, std, tstd = m.vector("mean"), m.vector("std"), m.vector("tendency_std")
    net = demo.model
    with torch.no_grad():
        x6 = x + net((x - mean) / std) * tstd
        h = net.encoder((x6 - mean) / std)
        for blk in net.blocks:
            h = blk(h)
    assert b.acts["block3"][row, ch].item() == pytest.approx(h[item, ch, i_lat, i_lon].item(), rel=1e-5, abs=1e-6)
    fc = demo.forecast(ds, 2)
    np.testing.assert_allclose(fc["z"].isel(time=item, lead=0).values, x6[item, 0].numpy(), rtol=1e-6)
