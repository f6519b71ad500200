"""Hydra config groups of the weather adapters compose and build working objects."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

pytest.importorskip("torch_harmonics")

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_sfno_demo_and_shallow_water_compose_and_harvest():
    from sciinterp_adapters.weather.sfno import DEMO_CHECKPOINT

    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("demo checkpoint not built (python -m sciinterp_adapters.weather.train_demo)")
    cfg = _compose("adapter=sfno_demo", "data=shallow_water", "data.n_trajectories=1", "data.n_times=1", "data.spinup_hours=6", "adapter.n_steps=1")
    adapter, ds = instantiate(cfg.adapter), instantiate(cfg.data)
    assert adapter.name == "sfno" and adapter.meta.model_id == "sfno-demo-shallow-water"
    assert dict(ds.sizes) == {"time": 1, "lat": 32, "lon": 64}
    batch = next(adapter.harvest(ds, ["block3"]))
    assert batch.acts["block3"].shape == (32 * 64, 32) and batch.items == ["2000-01-01T00:00:00/+6h"]


def test_aurora_configs_compose():
    pytest.importorskip("aurora")
    cfg = _compose("adapter=aurora_tiny")
    assert cfg.adapter.config == "tiny" and cfg.adapter.checkpoint is None and cfg.adapter._target_.endswith("AuroraAdapter")
    adapter = instantiate(cfg.adapter)
    assert adapter.model_id == "aurora-tiny-random-seed0"
    assert _compose("adapter=aurora_small").adapter.config == "small"
