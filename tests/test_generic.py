import numpy as np
import pytest
import torch

from sciinterp.generic import ModuleAdapter, Sample
from sciinterp.harvest import harvest_to_store
from sciinterp.store import open_store


def _conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))


def test_module_adapter_records_grid_tokens_with_coords(tmp_path):
    model = _conv_model()
    adapter = ModuleAdapter(model, hooks={"conv1": "0", "out": "2"}, channel_dim=1, model_id="toy-conv")
    lat, lon = np.meshgrid(np.array([-45.0, 0.0, 45.0]), np.arange(0.0, 360.0, 90.0), indexing="ij")
    xs = [torch.randn(1, 2, 3, 4) for _ in range(3)]
    samples = [Sample(f"t{i}", x, {"time": np.full(12, i), "lat": lat.ravel(), "lon": lon.ravel()}) for i, x in enumerate(xs)]
    harvest_to_store(adapter, samples, ["conv1", "out"], tmp_path / "s.zarr", chunk_rows=16, progress=False)
    ds = open_store(tmp_path / "s.zarr")
    assert ds["conv1"].shape == (36, 4) and ds["out"].shape == (36, 3)
    # token (time=1, lat=45, lon=90) holds channel vector out[0, :, 2, 1] of sample 1
    ref = model(xs[1])[0, :, 2, 1].detach().numpy()
    sel = (ds.time.values == 1) & (ds.lat.values == 45.0) & (ds.lon.values == 90.0)
    np.testing.assert_allclose(ds["out"].values[sel][0], ref, rtol=1e-5)
    assert ds.attrs["model_id"] == "toy-conv"


def test_module_adapter_errors_name_the_problem():
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        ModuleAdapter(_conv_model(), hooks={"x": "nope"})
    adapter = ModuleAdapter(_conv_model(), hooks={"out": "2"}, channel_dim=1)
    bad = [Sample("a", torch.randn(1, 2, 3, 4), {"lat": np.zeros(5)})]
    with pytest.raises(ValueError, match="coordinate 'lat'.*expected \\(12,\\)"):
        list(adapter.harvest(bad, ["out"]))
