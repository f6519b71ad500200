"""Sparse probes, discovery queue, descriptions, analyze() round trip and the Hydra config."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sciinterp.analysis import (
    LinkConfig,
    analyze,
    describe_feature,
    discovery_queue,
    link_features,
    load_analysis,
    sparse_probe,
)
from sciinterp.analysis.synthetic import planted_links
from sciinterp.features import feature_summary


def _dense(feats: xr.Dataset) -> np.ndarray:
    d = np.zeros((feats.sizes["token"], feats.attrs["d_sae"]), np.float32)
    v, i = feats["values"].values, feats["indices"].values
    r, j = np.nonzero(i >= 0)
    d[r, i[r, j]] = v[r, j]
    return d


@pytest.fixture(scope="module")
def data():
    return planted_links(n_items=80, item_len=50, d_sae=64, n_planted=2, n_concepts=3, seed=11)


@pytest.fixture(scope="module")
def neurons(data):
    """A polysemantic basis: 16 neurons, each a random mix of all 64 features, plus noise."""
    rng = np.random.default_rng(0)
    x = _dense(data.features) @ rng.standard_normal((64, 16)).astype(np.float32)
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return xr.Dataset({"h": (("token", "d_h"), x)})


def test_sparse_probe_shows_the_polysemanticity_gap(data, neurons):
    pr = sparse_probe(data.features, data.labels, neurons, "h", probe_ks=[1, 2, 5], n_perm=2)
    assert pr["f1"].dims == ("variable", "k", "basis") and list(pr["basis"].values) == ["sae", "neuron"]
    assert list(pr["variable"].values) == ["concept0", "concept1", "concept2"]
    for c in (0, 1):  # planted: feature c alone probes concept c
        assert int(pr["sae_columns"].sel(variable=f"concept{c}", rank=0)) == c
        assert float(pr["f1"].sel(variable=f"concept{c}", k=1, basis="sae")) > 0.7
        assert float(pr["gap_f1"].sel(variable=f"concept{c}", k=1)) > 0.2
        assert float(pr["auroc"].sel(variable=f"concept{c}", k=5, basis="neuron")) > 0.6
    assert float(pr["auroc"].sel(variable="concept2", k=1, basis="sae")) < 0.65  # nothing planted
    assert pr.attrs["n_train"] == 2000 and pr.attrs["n_test"] == 2000


def test_sparse_probe_without_store_scores_the_sae_only(data):
    pr = sparse_probe(data.features, data.labels, probe_ks=[1])
    assert np.isnan(pr["f1"].sel(basis="neuron")).all() and (pr["neuron_columns"] == -1).all()
    with pytest.raises(KeyError, match="hook 'x' is not in the activation store"):
        sparse_probe(data.features, data.labels, xr.Dataset({"h": (("token", "d"), np.zeros((4000, 2)))}), "x")


def test_discovery_queue_ranks_strong_unlinked_features(data):
    summary = feature_summary(data.features, top_n=4)
    lt = link_features(data.features, data.labels, n_perm=10, progress=False)
    q = discovery_queue(summary, lt, n=10)
    linked = {f for f, _ in data.truth}
    assert q.sizes == {"queue": 10, "example": 4}
    assert not linked & set(q["feature"].values.tolist())
    assert (np.diff(q["priority"].values) <= 0).all()
    f = int(q["feature"][0])
    assert float(q["priority"][0]) == pytest.approx(float(summary["frequency"][f] * summary["mean_active"][f]))
    np.testing.assert_array_equal(q["protein"][0], summary["protein"][f])
    assert q.attrs["n_unlinked"] == 64 - len(linked)
    with pytest.raises(ValueError, match="summary has 64 features, link table 3"):
        discovery_queue(summary, lt.isel(feature=slice(0, 3)))


def test_describe_feature_writes_from_significant_links(data):
    lt = link_features(data.features, data.labels, n_perm=10, progress=False)
    text = describe_feature(lt, 0)
    f1 = float(lt.score.sel(feature=0, variable="concept0"))
    assert text.startswith(f"fires on concept0 residues: F1 {f1:.2f}, precision ") and text.endswith("q < 1e-4")
    cont = describe_feature(lt, 2)
    assert cont.startswith("activation rises with v0: r = +0.") and "Spearman +0." in cont
    assert describe_feature(lt, 40).startswith("no significant link (closest: ")
    summary = feature_summary(data.features, top_n=2)
    assert describe_feature(lt, 0, summary=summary).endswith("% of tokens")
    with pytest.raises(KeyError, match="feature 999 is not in the link table"):
        describe_feature(lt, 999)


def test_analyze_writes_and_reloads_every_output(data, neurons, tmp_path):
    y = data.labels["concept0"].values.reshape(80, 50)
    items = xr.Dataset({"frac": ("item", y.mean(1), {"kind": "continuous"})},
                       coords={"item": np.unique(data.features["protein"].values)})  # fmt: skip
    cfg = LinkConfig(n_perm=40, probe_ks=[1, 2], progress=False)
    res = analyze(data.features, data.labels, item_labels=items, store=neurons, hook="h", config=cfg, out_dir=tmp_path)
    assert list(res.links.variable.values)[-2:] == ["frac[max]", "frac[mean]"]
    assert res.links.sizes == {"feature": 64, "variable": 7}
    assert float(res.links.qvalue.sel(feature=0, variable="frac[mean]")) < 0.05
    back = load_analysis(tmp_path)
    xr.testing.assert_allclose(back.links.drop_attrs(), res.links.drop_attrs())
    xr.testing.assert_equal(back.probes, res.probes)
    assert back.summary.sizes["feature"] == 64 and back.queue.sizes["queue"] > 0
    assert back.links.attrs["heldout_items"] == res.links.attrs["heldout_items"]
    with pytest.raises(FileNotFoundError, match="summary.zarr is missing"):
        load_analysis(tmp_path / "nothing")


def test_hydra_configs_build_link_configs():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        default = instantiate(compose("config").analysis)  # the root config selects analysis=default
        weather = instantiate(compose("config", overrides=["analysis=weather", "seed=3"]).analysis)
    assert isinstance(default, LinkConfig) and default.null_method == "shift" and default.probe_ks == [1, 2, 5, 10]
    assert weather.split == "contiguous" and weather.seed == 3 and type(weather.pool) is list


def test_describe_uses_long_names_and_grid_points(data):
    labels = data.labels.copy()
    labels["concept0"].attrs["long_name"] = "alpha helix"
    lt = link_features(data.features, labels, n_perm=10, progress=False)
    assert list(lt.long_name.values[:2]) == ["alpha helix", "concept1"]
    assert describe_feature(lt, 0).startswith("fires on alpha helix residues: F1 ")
    lt.attrs["group"] = "time"
    assert describe_feature(lt, 0).startswith("fires on alpha helix grid points: F1 ")


def test_end_to_end_from_an_activation_store(tmp_path):
    """harvest -> encode_store (zarr, dask-backed) -> analyze with neuron probes, on the fake adapter."""
    from test_features import StandInSAE

    from sciinterp.features import encode_store, open_features
    from sciinterp.harvest import harvest_to_store
    from sciinterp.store import open_store
    from sciinterp.testing import FakeAdapter

    store_path = tmp_path / "store.zarr"
    harvest_to_store(FakeAdapter(), [40] * 60, ["hidden"], store_path, chunk_rows=256)
    store = open_store(store_path)
    feats = open_features(encode_store(store_path, StandInSAE(16, d_sae=32, k=4), "hidden", tmp_path / "f.zarr",
                                       batch_size=500, progress=False))  # fmt: skip
    dense = _dense(feats)
    f = int(np.argmax((dense > 0).mean(0) * ((dense > 0).mean(0) < 0.5)))  # a feature active on < half the tokens
    rng = np.random.default_rng(0)
    labels = xr.Dataset(
        {"on": ("token", (dense[:, f] > 0).astype(np.float32), {"kind": "concept"}),
         "noise": ("token", (rng.random(dense.shape[0]) < 0.3).astype(np.float32), {"kind": "concept"})},
        attrs={"group": "seq"},
    )  # fmt: skip
    res = analyze(feats, labels, store=store, hook="hidden", config=LinkConfig(n_perm=20, probe_ks=[1], progress=False))
    assert float(res.links.score.sel(feature=f, variable="on")) == pytest.approx(1.0)
    assert float(res.links.qvalue.sel(feature=f, variable="on")) < 1e-4
    assert int(res.probes.sae_columns.sel(variable="on", rank=0)) == f
    assert float(res.probes.f1.sel(variable="on", k=1, basis="sae")) > 0.95
    assert res.summary.sizes["feature"] == 32 and "seq" in res.summary
