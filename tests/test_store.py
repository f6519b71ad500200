import numpy as np
import pytest
import torch

from sciinterp.adapter import TokenBatch
from sciinterp.store import StoreError, StoreWriter, open_store
from sciinterp.testing import FakeAdapter


def test_roundtrip_and_resume(tmp_path):
    a = FakeAdapter()
    lengths = [10, 20, 30, 5, 7]
    path = tmp_path / "s.zarr"
    with StoreWriter(path, chunk_rows=16, attrs=a.provenance()) as w:
        for i, b in enumerate(a.harvest(lengths, ["hidden", "out"])):
            w.append(b)
            break  # stop after the first batch: an interrupted harvest
    w = StoreWriter(path, chunk_rows=16, attrs=a.provenance())
    for b in a.harvest(lengths, ["hidden", "out"], skip=w.done_items):
        w.append(b)
    w.close()
    ds = open_store(path)
    assert ds.sizes["token"] == sum(lengths)
    ref = torch.cat([b.acts["hidden"] for b in a.harvest(lengths, ["hidden"])]).numpy()
    np.testing.assert_allclose(ds.hidden.values, ref, rtol=1e-6)
    assert list(ds.position.values[:3]) == [1, 2, 3]


def test_width_mismatch_is_named(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", chunk_rows=4)
    w.append(TokenBatch({"h": torch.zeros(4, 3)}, {"i": np.arange(4)}, ["a"]))
    with pytest.raises(StoreError, match="width 3, cannot append width 5"):
        w.append(TokenBatch({"h": torch.zeros(4, 5)}, {"i": np.arange(4)}, ["b"]))
