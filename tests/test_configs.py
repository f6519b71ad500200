"""Every Hydra config group composes, and its `_target_` builds a plain Python object."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import sciinterp.conf

CONF = Path(sciinterp.conf.__file__).parent
LIGHT_GROUPS = ("sae", "trainer", "analysis", "intervene", "labels")  # cheap to instantiate


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_ctx():
    with initialize_config_module("sciinterp.conf", version_base="1.3"):
        yield


@pytest.mark.parametrize("group", LIGHT_GROUPS)
def test_light_groups_instantiate(hydra_ctx, group):
    for name in _options(group):
        cfg = compose("config", overrides=[f"{group}={name}"])
        obj = instantiate(cfg[group])
        if group == "labels":  # partials: label builders called later with the store's tokens
            assert callable(obj), (group, name, obj)
        else:
            assert type(obj).__module__.split(".")[0] == "sciinterp", (group, name, obj)


@pytest.mark.parametrize("group", ("adapter", "data"))
def test_model_and_data_groups_compose_with_importable_targets(hydra_ctx, group):
    import importlib

    for name in _options(group):
        cfg = compose("config", overrides=[f"{group}={name}"])
        target = cfg[group].get("_target_")
        if target is None:  # plain path configs (data=fasta: path is required on the command line)
            assert "path" in cfg[group].keys()
            continue
        module, _, attr = target.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), target


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiments_hold_only_overrides_and_compose(hydra_ctx, experiment):
    cfg = compose("config", overrides=[f"experiment={experiment}"])
    assert cfg.labels._target_ != "sciinterp.pipeline.no_labels"
    assert cfg.train.hook in cfg.harvest.hooks
    sae = instantiate(cfg.sae)
    assert sae.d_sae > 0 and sae.k > 0


@pytest.mark.parametrize("launcher,plugin", [("slurm", "hydra_plugins.hydra_submitit_launcher"),
                                             ("local", "hydra_plugins.hydra_joblib_launcher")])
def test_launcher_configs_compose(hydra_ctx, launcher, plugin):
    pytest.importorskip(plugin)
    cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "Launcher" in cfg.hydra.launcher._target_


def test_multirun_sweep_gives_each_job_its_own_directory(tmp_path):
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).standard_normal((1500, 8)).astype(np.float32))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sciinterp.cli", "train", "-m", f"data.path={acts}", "sae.d_sae=16,32", "sae.k=2",
           "trainer.batch_size=256", "trainer.progress=false", f"out={out}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    found = sorted(str(p.relative_to(out)) for p in out.glob("*/train/*/cfg.json"))
    assert found == ["sae.d_sae=16,sae.k=2,trainer.batch_size=256/train/topk-16-k2/cfg.json",
                     "sae.d_sae=32,sae.k=2,trainer.batch_size=256/train/topk-32-k2/cfg.json"]


def test_matryoshka_widths_from_the_command_line(hydra_ctx):
    cfg = compose("config", overrides=["sae=topk", "sae.matryoshka_widths=[64,256]"])
    sae = instantiate(cfg.sae)
    assert sae.matryoshka_widths == [64, 256, 4096] and sae.run_name == "topk-4096-k32-matryoshka"
