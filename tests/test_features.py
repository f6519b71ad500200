"""Feature store: encoding a store with an SAE, resuming, opening, per-feature summaries."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch
import xarray as xr

from sciinterp.features import (
    encode_store,
    entries_to_codes,
    feature_summary,
    make_features,
    open_features,
    sorted_codes,
    subset_rows,
)
from sciinterp.harvest import harvest_to_store
from sciinterp.store import open_store
from sciinterp.testing import FakeAdapter


class Codes(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor


class StandInSAE:
    """Same interface as ``sciinterp.sae.SparseAutoencoder`` for encoding: TopK of ReLU(x W)."""

    def __init__(self, d_in: int, d_sae: int = 12, k: int = 3, seed: int = 0, fail_after: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d_in, d_sae, generator=g)
        self.d_sae, self.k, self.calls, self.fail_after = d_sae, k, 0, fail_after

    def encode(self, x: torch.Tensor) -> Codes:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        z = torch.relu(x @ self.W)
        v, i = z.topk(self.k, dim=1)
        return Codes(v, torch.where(v > 0, i, -1))

    def dense(self, x: np.ndarray) -> np.ndarray:
        return torch.relu(torch.from_numpy(x) @ self.W).numpy()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "store.zarr"
    harvest_to_store(FakeAdapter(), [5, 7, 3, 9, 4, 6], ["hidden"], path, chunk_rows=8)
    return path


def test_encode_store_matches_direct_encoding(store, tmp_path):
    sae = StandInSAE(16)
    out = encode_store(store, sae, "hidden", tmp_path / "f.zarr", batch_size=10, progress=False)
    feats = open_features(out)
    x = open_store(store)["hidden"].values
    ref = sae.encode(torch.from_numpy(x))
    assert feats.sizes == {"token": 34, "k": 3}
    np.testing.assert_allclose(feats["values"].values, ref.values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(feats["indices"].values, ref.indices.numpy())
    assert feats["values"].dtype == np.float32 and feats["indices"].dtype == np.int32
    np.testing.assert_array_equal(feats["seq"].values, open_store(store)["seq"].values)
    assert set(feats.coords) >= {"seq", "position"}
    assert feats.attrs["d_sae"] == 12 and feats.attrs["hook"] == "hidden" and feats.attrs["complete"]


def test_encode_store_resumes_after_a_crash(store, tmp_path):
    path = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_store(store, StandInSAE(16, fail_after=2), "hidden", path, batch_size=10, progress=False)
    partial = open_features(path)
    assert partial.sizes["token"] == 20 and not partial.attrs["complete"]
    sae = StandInSAE(16)
    encode_store(store, sae, "hidden", path, batch_size=10, progress=False)
    assert sae.calls == 2  # rows 20..34 only
    full = encode_store(store, StandInSAE(16), "hidden", tmp_path / "ref.zarr", batch_size=10, progress=False)
    xr.testing.assert_identical(open_features(path).drop_attrs(), open_features(full).drop_attrs())


def test_encode_store_refuses_a_different_sae_and_bad_hook(store, tmp_path):
    path = encode_store(store, StandInSAE(16), "hidden", tmp_path / "f.zarr", batch_size=10, progress=False)
    with pytest.raises(ValueError, match="d_sae=12.*this run has 20"):
        encode_store(store, StandInSAE(16, d_sae=20), "hidden", path, progress=False)
    with pytest.raises(KeyError, match="hook 'nope' is not in the activation store"):
        encode_store(store, StandInSAE(16), "nope", tmp_path / "g.zarr", progress=False)
    with pytest.raises(TypeError, match="needs .encode"):
        encode_store(store, object(), "hidden", tmp_path / "h.zarr", progress=False)
    dense_only = SimpleNamespace(d_in=16, d_sae=12, encode_dense=lambda x: x)  # enough for splice, not here
    with pytest.raises(TypeError, match=r"SimpleNamespace is not an SAE for a feature store: it needs .encode\(x\)"):
        encode_store(store, dense_only, "hidden", tmp_path / "h.zarr", progress=False)
    no_width = StandInSAE(16)
    del no_width.d_sae
    with pytest.raises(TypeError, match="StandInSAE has no dictionary size: an SAE needs .d_sae or .cfg.d_sae"):
        encode_store(store, no_width, "hidden", tmp_path / "h.zarr", progress=False)
    no_width.cfg = SimpleNamespace(d_sae=12)  # SAELens keeps the width on .cfg
    assert open_features(encode_store(store, no_width, "hidden", tmp_path / "c.zarr", progress=False)).attrs["d_sae"] == 12
    with pytest.raises(FileNotFoundError, match="not a sciinterp feature store"):
        open_features(tmp_path)


def _dense(feats: xr.Dataset) -> np.ndarray:
    d = np.zeros((feats.sizes["token"], feats.attrs["d_sae"]))
    v, i = feats["values"].values, feats["indices"].values
    r, j = np.nonzero(i >= 0)
    d[r, i[r, j]] = v[r, j]
    return d


def test_feature_summary_matches_dense_computation(store, tmp_path):
    feats = open_features(encode_store(store, StandInSAE(16, d_sae=12, k=4), "hidden", tmp_path / "f.zarr",
                                       batch_size=10, progress=False))  # fmt: skip
    dense = _dense(feats)
    s = feature_summary(feats, top_n=5, feature_block=5)  # several feature blocks
    act = dense > 0
    np.testing.assert_allclose(s["frequency"], act.mean(0))
    np.testing.assert_allclose(s["mean"], dense.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["max"], dense.max(0), rtol=1e-6)
    f = int(np.argmax(act.sum(0)))
    np.testing.assert_allclose(s["mean_active"][f], dense[act[:, f], f].mean(), rtol=1e-6)
    order = np.argsort(-dense[:, f])[:5]
    np.testing.assert_allclose(s["top_value"][f], dense[order, f], rtol=1e-6)
    np.testing.assert_array_equal(s["seq"][f], feats["seq"].values[order])
    np.testing.assert_array_equal(s["position"][f], feats["position"].values[order])
    vals = np.sort(dense[act[:, f], f])
    assert float(s["quantile_value"].sel(feature=f, quantile=0.5)) == pytest.approx(vals[int(0.5 * (vals.size - 1))])
    assert s["top_value"].dims == ("feature", "rank") and s.sizes["rank"] == 5


def test_summary_pads_rare_features():
    feats = make_features([[1.0, 0.0], [2.0, 0.5]], [[0, -1], [0, 2]], d_sae=4, coords={"protein": ["a", "b"]})
    s = feature_summary(feats, top_n=3)
    np.testing.assert_array_equal(s["top_token"][0], [1, 0, -1])
    np.testing.assert_array_equal(s["protein"][0], ["b", "a", ""])
    assert s["n_active"].values.tolist() == [2, 0, 1, 0]
    assert np.isnan(s["mean_active"][1]) and s["frequency"][2] == 0.5


def test_sorted_codes_sorts_by_feature_then_value_and_subsets_rows():
    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(50, 5, replace=False) for _ in range(40)]).astype(np.int32)
    vals = rng.exponential(1.0, (40, 5)).astype(np.float32)
    feats = make_features(vals, idx, d_sae=50)
    sc = sorted_codes(feats, f0=10, f1=30)
    dense = _dense(feats)[:, 10:30]
    for j in range(20):
        seg = slice(sc.indptr[j], sc.indptr[j + 1])
        np.testing.assert_allclose(sc.values[seg], np.sort(dense[dense[:, j] > 0, j]), rtol=1e-6)
        np.testing.assert_allclose(dense[sc.rows[seg], j], sc.values[seg], rtol=1e-6)
    keep = np.arange(40) % 3 == 0
    sub = subset_rows(sc, keep)
    np.testing.assert_array_equal(np.diff(sub.indptr), (dense[keep] > 0).sum(0))
    again = entries_to_codes(sc.rows, np.repeat(np.arange(20), np.diff(sc.indptr)), sc.values, 20, 40)
    np.testing.assert_array_equal(again.indptr, sc.indptr)


def test_encode_store_with_a_real_relu_sae_of_varying_width(store, tmp_path):
    from sciinterp.sae import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(architecture="relu", d_sae=24, normalize="none"), 16,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    feats = open_features(encode_store(store, sae, "hidden", tmp_path / "f.zarr", batch_size=7, progress=False))
    x = torch.from_numpy(open_store(store)["hidden"].values)
    with torch.no_grad():
        dense = sae.encode_dense(x).numpy()
    assert feats.sizes["k"] == int((dense > 0).sum(1).max())  # widened to the largest active count
    np.testing.assert_allclose(_dense(feats), dense, rtol=1e-5, atol=1e-6)
    assert feats.attrs["d_sae"] == 24
