"""The shipped demo ESM-2: loads through the real-weights path, harvests end to end into a store."""

import argparse
import json

import numpy as np
import torch

from sciinterp.harvest import harvest_to_store
from sciinterp.store import open_store
from sciinterp_adapters.protein.esm2 import ESM2Adapter
from sciinterp_adapters.protein.esm2_load import DEMO, package_path
from sciinterp_adapters.protein.fasta import read_fasta

PROTEOME = package_path("sciinterp_adapters.protein:data/proteome.fasta.gz")


def test_demo_is_a_released_layout_checkpoint_loaded_by_name_or_package_path():
    path = package_path(DEMO)
    assert path.is_file() and path.stat().st_size < 10 * 2**20
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    assert isinstance(data["cfg"]["model"], argparse.Namespace)
    assert data["cfg"]["sciinterp"]["demo_model"] is True
    by_name, by_path = ESM2Adapter(model="demo"), ESM2Adapter(checkpoint=DEMO)
    assert by_name.loaded.layout == by_path.loaded.layout == "fair-esm"
    assert by_name.provenance()["model_checksum"] == by_path.provenance()["model_checksum"]
    assert by_name.model_id == "esm2_demo" and by_name.n_layers == 4 and by_name.d_model == 128
    metrics = json.loads(path.with_name("esm2_demo_metrics.json").read_text())
    assert metrics["heldout_ppl"] < metrics["heldout_ppl_unigram"]  # it learned more than residue frequencies


def test_demo_harvest_into_store_matches_a_direct_forward(tmp_path):
    records = sorted(read_fasta(PROTEOME), key=len)[:4]
    ad = ESM2Adapter(model="demo")
    store = harvest_to_store(ad, records, ["layer2", "final"], tmp_path / "demo.zarr", progress=False)
    ds = open_store(store)
    assert ds.attrs["model_id"] == "esm2_demo" and ds.attrs["model_checksum"] == ad.provenance()["model_checksum"]
    assert ds.sizes["token"] == sum(len(r) for r in records)
    a = ad.alphabet
    for r in records:
        sel = ds.protein.values == r.id
        np.testing.assert_array_equal(ds.position.values[sel], np.arange(1, len(r) + 1))
        assert "".join(ds.residue.values[sel]) == r.sequence
        toks = torch.tensor([[a.cls_idx, *(a.get_idx(c) for c in r.sequence), a.eos_idx]])
        with torch.no_grad():
            ref = ad.model(toks, repr_layers=[2, 4])["representations"]
        np.testing.assert_allclose(ds["layer2"].values[sel], ref[2][0, 1:-1].numpy(), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(ds["final"].values[sel], ref[4][0, 1:-1].numpy(), atol=2e-5, rtol=1e-4)


def test_every_esm2_config_composes_and_instantiates_or_names_missing_weights(tmp_path, monkeypatch):
    import os

    import pytest
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path / "home")
    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    names = sorted(p[:-5] for p in os.listdir(os.path.join(conf, "adapter")) if p.startswith("esm2_"))
    assert names == ["esm2_demo", "esm2_t12_35M", "esm2_t30_150M", "esm2_t33_650M", "esm2_t36_3B",
                     "esm2_t48_15B", "esm2_t6_8M"]
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        for name in names:
            cfg = compose("config", overrides=[f"adapter={name}", "adapter.device=cpu", "data=fasta_demo"])
            if name == "esm2_demo":
                adapter = instantiate(cfg.adapter)
                assert isinstance(adapter, ESM2Adapter) and adapter.model_id == "esm2_demo"
                assert len(instantiate(cfg.data)) == 50
            else:
                # Hydra wraps the loader's FileNotFoundError; the message names the weights looked for
                with pytest.raises(InstantiationException, match=f"no local weights for '{cfg.adapter.model}'"):
                    instantiate(cfg.adapter)
