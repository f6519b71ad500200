"""Linking features to variables: planted truth, FDR calibration, structured nulls, exact metrics."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sciinterp.analysis import LinkConfig, link_features
from sciinterp.analysis import engine
from sciinterp.analysis.synthetic import planted_links
from sciinterp.features import make_features


def _truth_mask(lt: xr.Dataset, truth) -> np.ndarray:
    mask = np.zeros(lt["qvalue"].shape, bool)
    names = list(lt["variable"].values)
    for f, v in truth:
        mask[f, names.index(v)] = True
    return mask


def test_planted_links_are_recovered_on_held_out_data():
    d = planted_links(n_items=120, item_len=80, d_sae=128, seed=3)
    lt = link_features(d.features, d.labels, n_perm=20, progress=False)
    assert lt["score"].dims == ("feature", "variable") and lt.sizes["feature"] == 128
    for f, v in d.truth:
        row = lt.sel(feature=f, variable=v)
        assert float(row.qvalue) < 1e-6, (f, v)
        if v.startswith("concept"):
            assert float(row.score) > 0.7 and float(row.recall) > 0.6 and float(row.region_recall) > 0.7
            assert float(row.auroc) > 0.8 and float(row.effect) > 2 and np.isnan(row.pearson)
        else:
            assert float(row.pearson) > 0.3 and float(row.spearman) > 0.2 and np.isnan(row.threshold)
    sig = lt["qvalue"].values < 0.05
    assert not (sig & ~_truth_mask(lt, d.truth)).any()
    sel, held = set(lt.attrs["selection_items"]), set(lt.attrs["heldout_items"])
    assert not sel & held and sel | held == set(np.unique(d.features["protein"].values))
    assert lt.attrs["n_tokens_selection"] + lt.attrs["n_tokens_heldout"] == 120 * 80
    assert list(lt["variable_kind"].values) == ["concept"] * 6 + ["continuous"] * 2


def test_false_discovery_proportion_stays_nominal_over_repeats():
    fdp, any_null_discovery = [], 0
    for rep in range(20):
        d = planted_links(n_items=80, item_len=60, d_sae=96, seed=100 + rep)
        lt = link_features(d.features, d.labels, n_perm=20, seed=rep, progress=False)
        sig = lt["qvalue"].values < 0.05
        truth = _truth_mask(lt, d.truth)
        assert sig[truth].all()
        fdp.append((sig & ~truth).sum() / max(sig.sum(), 1))
        # the same data with each protein's labels given to another protein: every pair is null
        perm = np.random.default_rng(rep).permutation(80)
        shuffled = d.labels.copy(data={k: v.values.reshape(80, 60)[perm].ravel() for k, v in d.labels.items()})
        lt0 = link_features(d.features, shuffled, n_perm=20, seed=rep, progress=False)
        any_null_discovery += bool((lt0["qvalue"].values < 0.05).any())
    assert np.mean(fdp) <= 0.05 + 0.03
    assert any_null_discovery <= 3  # BH with all nulls true: P(any discovery) <= alpha = 0.05


def _confounded(seed: int):
    """Concept prevalence varies by protein; feature f fires on every token of a random half of the proteins."""
    rng = np.random.default_rng(seed)
    n_items, L, F = 60, 50, 20
    prev = np.where(rng.random(n_items) < 0.5, 0.6, 0.05)
    y = (rng.random((n_items, L)) < prev[:, None]).astype(np.float32).ravel()
    on = rng.random((n_items, F)) < 0.5
    idx = np.where(np.repeat(on, L, axis=0), np.arange(F), -1).astype(np.int32)
    vals = np.where(idx >= 0, 1 + rng.random(idx.shape), 0).astype(np.float32)
    prot = np.repeat([f"p{i}" for i in range(n_items)], L)
    feats = make_features(vals, idx, F, {"protein": prot})
    labels = xr.Dataset({"c": ("token", y, {"kind": "concept"})}, attrs={"group": "protein"})
    return feats, labels


def test_block_null_absorbs_item_level_confounding_that_a_token_null_does_not():
    n_shift = n_free = 0
    for seed in range(4):
        feats, labels = _confounded(seed)
        n_shift += int((link_features(feats, labels, n_perm=30, progress=False).qvalue < 0.05).sum())
        n_free += int((link_features(feats, labels, n_perm=30, null_method="permute", progress=False).qvalue < 0.05).sum())
    assert n_shift == 0  # the feature fires on whole proteins: shifting labels inside a protein changes nothing
    assert n_free >= 8  # a token-level null calls the protein composition a link


def test_metrics_are_exact_when_bins_resolve_every_value():
    from scipy import stats
    from sklearn.metrics import mutual_info_score, roc_auc_score

    rng = np.random.default_rng(0)
    n, L = 4000, 40
    y = (rng.random(n) < 0.3).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    lvl = np.where(rng.random(n) < 0.5, rng.integers(1, 4, n), 0)  # values in {1, 2, 3}, 0 = inactive
    lvl = np.where(y > 0, np.minimum(lvl + 1, 3), lvl)
    idx = np.where(lvl > 0, 0, -1)[:, None].astype(np.int32)
    feats = make_features(lvl[:, None].astype(np.float32), idx, 1, {"protein": np.repeat(np.arange(n // L), L)})
    w = 0.5 + rng.random(n)
    labels = xr.Dataset({"c": ("token", y, {"kind": "concept"}), "v": ("token", v, {"kind": "continuous"})},
                        coords={"w": ("token", w)}, attrs={"group": "protein", "weight": "w"})  # fmt: skip
    lt = link_features(feats, labels, n_perm=5, progress=False)
    held = ~np.isin(feats["protein"].values, lt.attrs["selection_items"])
    a, yh, vh, wh = lvl[held], y[held], v[held], w[held]
    c = lt.sel(feature=0, variable="c")
    assert float(c.auroc) == pytest.approx(roc_auc_score(yh, a), abs=1e-12)
    fire = a >= (float(c.threshold) if c.threshold > 0 else 1e-9)
    tp = (fire & (yh > 0)).sum()
    assert float(c.precision) == pytest.approx(tp / fire.sum()) and float(c.recall) == pytest.approx(tp / yh.sum())
    assert float(c.score) == pytest.approx(2 * tp / (fire.sum() + yh.sum()))
    assert float(c.mi) == pytest.approx(mutual_info_score(yh, a), rel=1e-5)
    r = lt.sel(feature=0, variable="v")
    cov = np.cov(a, vh, aweights=wh)
    assert float(r.pearson) == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), rel=1e-9)
    ra, rv = stats.rankdata(a), stats.rankdata(vh)
    cov = np.cov(ra, rv, aweights=wh)
    assert float(r.spearman) == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), rel=1e-9)


def test_region_recall_counts_runs_within_proteins():
    # two proteins of 6 tokens; concept runs: [1,2] and [4] in p0, [0..1] and [5] in p1 (a run never spans proteins)
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 1], np.float32)
    fires = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    sel_y = np.tile(y, 1)
    feats = make_features(np.r_[fires, fires][:, None].astype(np.float32), np.where(np.r_[fires, fires] > 0, 0, -1)[:, None],
                          1, {"protein": np.repeat(["a0", "a1", "b0", "b1"], 6)})  # fmt: skip
    labels = xr.Dataset({"c": ("token", np.r_[sel_y, y], {"kind": "concept"})}, attrs={"group": "protein"})
    lt = link_features(feats, labels, n_perm=2, split="contiguous", min_active=1, progress=False)
    assert lt.attrs["selection_items"] == ["a0", "a1"] and lt.attrs["heldout_items"] == ["b0", "b1"]
    assert float(lt.region_recall.sel(feature=0, variable="c")) == pytest.approx(2 / 4)
    assert float(lt.recall.sel(feature=0, variable="c")) == pytest.approx(2 / 6)


def test_screening_keeps_the_discoveries_of_full_permutation(monkeypatch):
    d = planted_links(n_items=60, item_len=60, d_sae=64, n_planted=2, hit=0.25, false_fire=0.05, seed=7)
    fast = link_features(d.features, d.labels, n_perm=20, progress=False)
    monkeypatch.setattr(engine, "_candidates", lambda p, alpha: 1.0)  # permutation variance for every pair
    full = link_features(d.features, d.labels, n_perm=20, progress=False)
    np.testing.assert_array_equal(fast.qvalue.values < 0.05, full.qvalue.values < 0.05)
    assert (full.pvalue.values >= fast.pvalue.values - 1e-12).all()  # the floor is a lower bound
    assert (fast.qvalue.values < 0.05).sum() >= 2


def test_item_level_variables_link_to_pooled_activations():
    d = planted_links(n_items=100, item_len=40, d_sae=32, n_planted=1, seed=5)
    y = d.labels["concept0"].values.reshape(100, 40)
    rng = np.random.default_rng(0)
    items = xr.Dataset(
        {"frac": ("item", y.mean(1), {"kind": "continuous"}), "noise": ("item", rng.random(100), {"kind": "continuous"}),
         "rich": ("item", (y.mean(1) > np.median(y.mean(1))).astype(np.float32), {"kind": "concept"})},
        coords={"item": np.unique(d.features["protein"].values)}, attrs={"group": "protein"},
    )  # fmt: skip
    lt = link_features(d.features, items, n_perm=30, progress=False)
    assert list(lt.variable.values) == ["frac[max]", "noise[max]", "rich[max]", "frac[mean]", "noise[mean]", "rich[mean]"]
    assert float(lt.sel(feature=0, variable="frac[mean]").pearson) > 0.5
    assert float(lt.sel(feature=0, variable="frac[mean]").qvalue) < 0.05
    assert float(lt.sel(feature=0, variable="rich[mean]").auroc) > 0.7
    assert (lt.sel(variable=["noise[max]", "noise[mean]"]).qvalue >= 0.05).all()
    assert lt.attrs["n_items_selection"] + lt.attrs["n_items_heldout"] == 100


def test_bad_inputs_name_the_problem():
    d = planted_links(n_items=10, item_len=10, d_sae=8, n_planted=1, n_concepts=1, n_continuous=0,
                      n_planted_continuous=0)  # fmt: skip
    with pytest.raises(ValueError, match="n_perm=1"):
        LinkConfig(n_perm=1)
    with pytest.raises(ValueError, match="labels.attrs\\['group'\\] is missing"):
        link_features(d.features, d.labels.drop_attrs())
    bad = d.labels.copy()
    bad["concept0"].attrs["kind"] = "category"
    with pytest.raises(ValueError, match="'concept0' has attrs kind='category'"):
        link_features(d.features, bad)
    with pytest.raises(ValueError, match="labels have 50 tokens, features 100"):
        link_features(d.features, d.labels.isel(token=slice(0, 50)))


def _gridded(seed: int = 0, n_time: int = 24, n_lat: int = 8, n_lon: int = 16):
    """Weather-like tokens: time x lat x lon, a static land mask, temperature falling with latitude."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-78.75, 78.75, n_lat)
    lon = np.arange(n_lon) * 360 / n_lon
    tt, la, lo = np.meshgrid(np.arange(n_time), lat, lon, indexing="ij")
    land = ((np.sin(np.radians(lo) * 2) + 0.5 * np.cos(np.radians(la) * 3)) > 0.6).astype(np.float32)
    temp = (30 * np.cos(np.radians(la)) + 3 * rng.standard_normal(la.shape)).astype(np.float32)
    w = np.cos(np.radians(la))
    w = w / w.mean()
    n = tt.size
    fire_land = (land.ravel() > 0) & (rng.random(n) < 0.8)
    warm = np.clip(temp.ravel() / 30, 0, None) * (rng.random(n) < 0.7)
    idx = np.stack([np.where(fire_land, 0, -1), np.where(warm > 0, 1, -1), rng.integers(2, 12, n)], 1)
    vals = np.stack([np.where(fire_land, 1 + rng.random(n), 0), warm, rng.exponential(1.0, n)], 1)
    coords = {"time": np.array([f"2020-01-{1 + t // 4:02d}T{6 * (t % 4):02d}" for t in tt.ravel()]),
              "lead": np.zeros(n, int), "level": np.full(n, np.nan), "lat": la.ravel(), "lon": lo.ravel(),
              "area_weight": w.ravel()}  # fmt: skip
    feats = make_features(vals.astype(np.float32), idx.astype(np.int32), 12, coords)
    labels = xr.Dataset({"land": ("token", land.ravel(), {"kind": "concept"}),
                         "t2m": ("token", temp.ravel(), {"kind": "continuous", "units": "degC"})},
                        attrs={"group": "time", "weight": "area_weight"})  # fmt: skip
    return feats, labels


def test_gridded_fields_use_area_weights_time_blocks_and_spatial_shifts():
    feats, labels = _gridded()
    lt = link_features(feats, labels, n_perm=30, split="contiguous", progress=False)
    times = sorted(set(feats["time"].values))
    assert lt.attrs["selection_items"] == times[:12] and lt.attrs["weight"] == "area_weight"
    assert float(lt.qvalue.sel(feature=0, variable="land")) < 1e-4
    assert float(lt.qvalue.sel(feature=1, variable="t2m")) < 1e-4
    assert (lt.qvalue.sel(feature=slice(2, None)) >= 0.05).all()
    held = ~np.isin(feats["time"].values, lt.attrs["selection_items"])
    a = np.where(feats["indices"].values[held, 1] == 1, feats["values"].values[held, 1], 0)
    cov = np.cov(a, labels["t2m"].values[held], aweights=feats["area_weight"].values[held])
    assert float(lt.pearson.sel(feature=1, variable="t2m")) == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    # swapping whole fields between time steps cannot test a static field: the land mask never moves
    shuffled = link_features(feats, labels, n_perm=30, split="contiguous", null_method="shuffle", progress=False)
    assert float(shuffled.pvalue.sel(feature=0, variable="land")) > 0.4  # the observed count is its own null mean
