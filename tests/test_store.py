import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from sciinterp.adapter import TokenBatch
from sciinterp.harvest import harvest_to_store
from sciinterp.store import (
    COORD_CHUNK_FACTOR,
    FORMAT_VERSION,
    StoreError,
    StoreWriter,
    auto_chunk_rows,
    open_store,
    part_path,
    read_commit,
    stored_items,
)
from sciinterp.store_chunks import ChunkedArray
from sciinterp.testing import FakeAdapter


def _batch(rows, d=3, start=0, item="a", **coords):
    x = torch.arange(start * d, (start + rows) * d, dtype=torch.float32).reshape(rows, d)
    coords = coords or {"i": np.arange(start, start + rows)}
    return TokenBatch({"h": x}, coords, [item])


def test_roundtrip_and_resume(tmp_path):
    a = FakeAdapter()
    lengths = [10, 20, 30, 5, 7]
    path = tmp_path / "s.zarr"
    with StoreWriter(path, chunk_rows=16, attrs=a.provenance()) as w:
        for b in a.harvest(lengths, ["hidden", "out"]):
            w.append(b)
            break  # stop after the first batch: an interrupted harvest
    w = StoreWriter(path, chunk_rows=16, attrs=a.provenance())
    assert w.done_items == {"seq0", "seq1", "seq2", "seq3"}
    for b in a.harvest(lengths, ["hidden", "out"], skip=w.done_items):
        w.append(b)
    w.close()
    ds = open_store(path)
    assert ds.sizes["token"] == sum(lengths)
    ref = torch.cat([b.acts["hidden"] for b in a.harvest(lengths, ["hidden"])]).numpy()
    np.testing.assert_array_equal(ds.hidden.values, ref)
    assert list(ds.position.values[:3]) == [1, 2, 3]
    assert stored_items(path) == [f"seq{i}" for i in range(5)]
    assert ds.attrs["complete"] is True


def test_coords_are_xarray_coords_and_provenance_is_recorded(tmp_path):
    a = FakeAdapter()
    path = harvest_to_store(
        a, [4, 6], ["hidden", "out"], tmp_path / "s.zarr", chunk_rows=4, progress=False,
        attrs={"config": {"harvest": {"chunk_rows": 4}}},
    )  # fmt: skip
    ds = open_store(path)
    assert isinstance(ds.hidden.data, __import__("dask.array").array.Array)  # lazy
    assert set(ds.coords) == {"seq", "position"} and set(ds.data_vars) == {"hidden", "out"}
    assert ds.hidden.dims == ("token", "d_hidden") and ds.seq.dims == ("token",)
    assert list(ds.seq.values.astype(str)) == ["seq0"] * 4 + ["seq1"] * 6
    assert ds.position.dtype == np.int64
    at = ds.attrs
    assert at["adapter"] == "fake" and at["hooks"] == ["hidden", "out"]
    assert at["model_id"] == "fake-mlp-seed0" and at["model_checksum"] == "seed0"
    assert at["dtype"] == "float32" and at["data_source"] == "[4, 6]" and len(at["data_hash"]) == 16
    assert at["sciinterp_version"] == __import__("sciinterp").__version__
    assert at["config"] == {"harvest": {"chunk_rows": 4}}
    assert at["format_version"] == FORMAT_VERSION and "sciinterp_commit" not in at


def test_float_and_string_coords_roundtrip(tmp_path):
    n = 5
    coords = {"time": np.array(["2020-01-01T00"] * n), "lead": np.full(n, 6), "lat": np.linspace(-90, 90, n)}
    with StoreWriter(tmp_path / "w.zarr", chunk_rows=3) as w:
        w.append(TokenBatch({"h": torch.ones(n, 2)}, coords, ["t0"]))
    ds = open_store(tmp_path / "w.zarr")
    np.testing.assert_array_equal(ds.lat.values, np.linspace(-90, 90, n))
    assert ds.lat.dtype == np.float64 and ds.lead.dtype == np.int64
    assert str(ds.time.values[0]) == "2020-01-01T00"


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_dtypes_roundtrip(tmp_path, dtype, tol):
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    with StoreWriter(tmp_path / "s.zarr", dtype=dtype, chunk_rows=16) as w:
        w.append(TokenBatch({"h": x}, {"i": np.arange(50)}, ["a"]))
    on_disk = zarr.open_group(tmp_path / "s.zarr", mode="r")["h"].dtype
    assert on_disk == {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    got = open_store(tmp_path / "s.zarr").h.values.astype(np.float32)
    np.testing.assert_allclose(got, x.numpy(), rtol=tol, atol=tol)
    if dtype == "bfloat16":  # exactly torch's own bf16 rounding, and bf16 tensors are stored bit for bit
        np.testing.assert_array_equal(got, x.to(torch.bfloat16).float().numpy())
        with StoreWriter(tmp_path / "t.zarr", dtype=dtype) as w:
            w.append(TokenBatch({"h": x.to(torch.bfloat16)}, {"i": np.arange(50)}, ["a"]))
        np.testing.assert_array_equal(open_store(tmp_path / "t.zarr").h.values, got)


def test_bf16_rounding_matches_torch_on_edge_values():
    from sciinterp.store_format import _bf16_bits

    edge = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan,
                     1e-40, -1e-45, 65504.0, 2.0**-126], dtype=np.float32)  # fmt: skip
    x = np.concatenate([edge, np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 1e3])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.uint16).numpy()
    got = _bf16_bits(x)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.isnan((got[np.isnan(x)].astype(np.uint32) << 16).view(np.float32)).all()


def test_flush_size_defaults_to_whole_chunks_up_to_64mib(tmp_path):
    w = StoreWriter(tmp_path / "a.zarr", chunk_rows=8)
    w.append(_batch(3, d=4))
    assert w.flush_rows == 32  # 4 chunks: tiny rows
    w = StoreWriter(tmp_path / "b.zarr", chunk_rows=8192)
    w.append(TokenBatch({"h": torch.zeros(2, 1280)}, {"i": np.arange(2)}, ["a"]))
    assert w.flush_rows == 8192  # one 40 MiB chunk
    w = StoreWriter(tmp_path / "c.zarr", chunk_rows=8, flush_rows=8)
    for i in range(3):
        w.append(_batch(3, start=3 * i, item=f"x{i}"))
    # flushed at >= 8 rows: chunk 0 (rows 0-7) written, the 2 batches inside it committed
    assert read_commit(tmp_path / "c.zarr")["n_rows"] == 6 and w.n_rows == 9
    assert zarr.open_group(tmp_path / "c.zarr")["h"].shape == (8, 3)
    w.close()
    assert read_commit(tmp_path / "c.zarr")["n_rows"] == 9 and stored_items(tmp_path / "c.zarr") == ["x0", "x1", "x2"]


def test_flushes_never_rewrite_a_chunk(tmp_path, monkeypatch):
    writes: list[tuple[str, int, int]] = []
    real = ChunkedArray._write_chunk
    monkeypatch.setattr(ChunkedArray, "_write_chunk", lambda self, index, buf, filled: (
        writes.append((self.path.name, index, filled)), real(self, index, buf, filled)))  # fmt: skip
    with StoreWriter(tmp_path / "s.zarr", chunk_rows=4, flush_rows=4) as w:
        for i in range(5):
            w.append(_batch(3, start=3 * i, item=f"x{i}"))
    assert [(i, k) for name, i, k in writes if name == "h"] == [(0, 4), (1, 4), (2, 4), (3, 3)]  # (chunk, rows)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").i.values, np.arange(15))


def test_uncompressed_store_reads_the_same(tmp_path):
    x = torch.randn(40, 8)
    for comp in ("lz4", "zstd", "none"):
        with StoreWriter(tmp_path / f"{comp}.zarr", chunk_rows=16, compression=comp) as w:
            w.append(TokenBatch({"h": x}, {"i": np.arange(40)}, ["a"]))
        np.testing.assert_array_equal(open_store(tmp_path / f"{comp}.zarr").h.values, x.numpy())
    assert not zarr.open_group(tmp_path / "none.zarr")["h"].compressors
    with pytest.raises(ValueError, match=r"compression must be one of \['lz4', 'zstd', 'none'\], got 'gzip'"):
        StoreWriter(tmp_path / "x.zarr", compression="gzip")


def test_no_zarr_warning_on_write_and_open(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        harvest_to_store(FakeAdapter(), [3, 4], ["hidden"], tmp_path / "s.zarr", chunk_rows=2, progress=False)
        open_store(tmp_path / "s.zarr").hidden.values
        xr.open_zarr(tmp_path / "s.zarr", consolidated=False)  # even plain xarray sees only arrays


def test_width_mismatch_is_named(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", chunk_rows=4)
    w.append(_batch(4, d=3))
    with pytest.raises(StoreError, match="hook 'h' is stored with width 3, cannot append width 5"):
        w.append(_batch(4, d=5, item="b"))
    w.close()
    w = StoreWriter(tmp_path / "s.zarr", chunk_rows=4)  # also after reopening
    with pytest.raises(StoreError, match="width 3, cannot append width 5"):
        w.append(_batch(4, d=5, item="b"))


def test_mismatched_hooks_and_coords_are_named(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", chunk_rows=100)
    w.append(_batch(4))
    bad = TokenBatch({"h": torch.zeros(2, 3), "g": torch.zeros(2, 3)}, {"i": np.arange(2)}, ["b"])
    with pytest.raises(StoreError, match=r"batch has hooks \['g', 'h'\] and coords \['i'\], store has hooks \['h'\]"):
        w.append(bad)
    with pytest.raises(StoreError, match=r"coords \['j'\], store has hooks \['h'\] and coords \['i'\]"):
        w.append(_batch(2, item="c", j=np.arange(2)))
    with pytest.raises(StoreError, match="coordinate 'i' is stored as int, this batch has str"):
        w.append(_batch(2, item="d", i=np.array(["x", "y"])))
    with pytest.raises(StoreError, match=r"items already stored: \['a'\]"):
        w.append(_batch(2, item="a"))
    w.close()
    assert open_store(tmp_path / "s.zarr").sizes["token"] == 4  # rejected batches left no trace


def test_resume_refuses_other_model_or_dtype(tmp_path):
    StoreWriter(tmp_path / "s.zarr", attrs={"model_checksum": "abc"}).close()
    with pytest.raises(StoreError, match="stored model_checksum='abc' but this harvest has 'xyz'"):
        StoreWriter(tmp_path / "s.zarr", attrs={"model_checksum": "xyz"})
    with pytest.raises(StoreError, match="holds float32 activations, asked to append bfloat16"):
        StoreWriter(tmp_path / "s.zarr", dtype="bfloat16")


def test_nonfinite_error_names_token_and_drop_counts(tmp_path):
    x = torch.ones(6, 2)
    x[3, 1] = float("nan")
    x[5, 0] = float("inf")
    b = TokenBatch({"h": x}, {"pos": np.arange(1, 7)}, ["p1"])
    w = StoreWriter(tmp_path / "e.zarr")
    with pytest.raises(StoreError, match=r"non-finite activation at hook 'h' \(stored as float32\), token \{'pos': 4\} "
                       r"\(items \['p1'\]\); set nonfinite='drop'"):  # fmt: skip
        w.append(b)
    big = TokenBatch({"h": torch.tensor([[1.0, 7e4]])}, {"pos": np.array([9])}, ["p2"])  # beyond float16's range
    with pytest.raises(StoreError, match=r"at hook 'h' \(stored as float16\), token \{'pos': 9\}"):
        StoreWriter(tmp_path / "f16.zarr", dtype="float16").append(big)
    with StoreWriter(tmp_path / "bf.zarr", dtype="bfloat16", nonfinite="drop") as w:
        w.append(b)
        w.append(big)  # fine in bfloat16
    assert open_store(tmp_path / "bf.zarr").attrs["n_dropped_nonfinite"] == 2
    with StoreWriter(tmp_path / "d.zarr", nonfinite="drop", chunk_rows=2) as w:
        w.append(b)
    ds = open_store(tmp_path / "d.zarr")
    assert list(ds.pos.values) == [1, 2, 3, 5] and ds.attrs["n_dropped_nonfinite"] == 2
    assert stored_items(tmp_path / "d.zarr") == ["p1"]


def test_not_a_store_and_old_format_errors(tmp_path):
    with pytest.raises(StoreError, match="nope.zarr does not exist"):
        open_store(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(StoreError, match="plain is not a sciinterp activation store nor a directory of store parts"):
        open_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="plain exists and is not a sciinterp activation store"):
        StoreWriter(tmp_path / "plain")
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="is a zarr group but not a sciinterp activation store"):
        open_store(tmp_path / "other.zarr")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    with pytest.raises(StoreError, match=r"no zarr.json \(it looks like zarr v2\)"):
        open_store(tmp_path / "v2.zarr")
    StoreWriter(tmp_path / "s.zarr").close()
    meta = tmp_path / "s.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["sciinterp_commit"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="written with store format 99, this sciinterp reads formats 2 to 3"):
        open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="format 99"):
        StoreWriter(tmp_path / "s.zarr")
    (tmp_path / "old.zarr").mkdir()
    (tmp_path / "old.zarr" / "sciinterp_commit.json").write_text("{}")
    with pytest.raises(StoreError, match="written with store format 1"):
        read_commit(tmp_path / "old.zarr")


def test_uncommitted_rows_are_invisible_and_cut_on_resume(tmp_path):
    path = tmp_path / "s.zarr"
    w = StoreWriter(path, chunk_rows=4, flush_rows=4)
    w.append(_batch(5, item="a"))  # chunk 0 written, nothing committed yet (item a spills into chunk 1)
    assert read_commit(path)["n_rows"] == 0 and (path / "h" / "c.0.0").is_file()
    assert zarr.open_group(path)["h"].shape == (0, 3)  # the shape grows with the commit
    w.flush()  # everything written and committed
    w.append(_batch(2, start=5, item="b"))  # buffered only
    # simulate a crash after the arrays grew but before the commit
    g = zarr.open_group(path, mode="r+")
    g["h"].resize((9, 3))
    g["h"][5:9] = np.full((4, 3), 7.0)
    (path / "h" / "junk.partial").write_text("x")
    assert open_store(path).sizes["token"] == 5 and read_commit(path)["n_rows"] == 5
    w2 = StoreWriter(path, chunk_rows=4)
    assert w2.done_items == {"a"} and zarr.open_group(path)["h"].shape == (5, 3)
    assert not list(path.rglob("*.partial"))
    w2.append(_batch(2, start=5, item="b"))
    w2.close()
    np.testing.assert_array_equal(open_store(path).h.values, np.arange(21, dtype=np.float32).reshape(7, 3))


def test_parts_open_as_one_and_mismatches_are_named(tmp_path):
    for rank in range(2):
        with StoreWriter(part_path(tmp_path / "p", rank, 2), chunk_rows=3) as w:
            w.append(_batch(4, start=4 * rank, item=f"x{rank}"))
    ds = open_store(tmp_path / "p")
    assert list(ds.i.values) == list(range(8)) and ds.attrs["complete"]
    assert ds.attrs["parts"] == ["part-00000-of-00002.zarr", "part-00001-of-00002.zarr"]
    with StoreWriter(part_path(tmp_path / "p", 0, 3)) as w:
        w.append(_batch(1))
    with pytest.raises(StoreError, match=r"mixes parts of different world sizes \[2, 3\]"):
        open_store(tmp_path / "p")
    for rank in range(2):
        with StoreWriter(part_path(tmp_path / "q", rank, 2)) as w:
            w.append(_batch(2, d=3 + rank))
    with pytest.raises(StoreError, match="parts part-00000-of-00002.zarr and part-00001-of-00002.zarr of .* differ"):
        open_store(tmp_path / "q")


def test_harvest_refuses_mixing_parts_and_single_store(tmp_path):
    a = FakeAdapter()
    harvest_to_store(a, [3], ["hidden"], tmp_path / "s.zarr", progress=False)
    with pytest.raises(StoreError, match="is a single store; cannot add part 0 of 2"):
        harvest_to_store(a, [3], ["hidden"], tmp_path / "s.zarr", part=(0, 2), progress=False)
    harvest_to_store(a, [3], ["hidden"], tmp_path / "p", part=(0, 2), progress=False)
    with pytest.raises(StoreError, match=r"holds store parts; pass part=\(rank, world\)"):
        harvest_to_store(a, [3], ["hidden"], tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match=r"unknown hooks \['nope'\] for adapter 'fake'"):
        harvest_to_store(a, [3], ["nope"], tmp_path / "x", progress=False)


def test_string_coords_are_dictionary_encoded_and_resume_adds_categories(tmp_path):
    path = tmp_path / "s.zarr"
    times = np.array(["2020-01-01T00"] * 3 + ["2020-01-01T06"] * 2)
    with StoreWriter(path, chunk_rows=4) as w:
        w.append(TokenBatch({"h": torch.zeros(5, 2)}, {"time": times, "lead": np.arange(5)}, ["t0"]))
    g = zarr.open_group(path)
    assert g["time"].dtype == np.int32 and list(g["time"][:]) == [0, 0, 0, 1, 1]
    assert list(g["sciinterp_categories_time"][:]) == ["2020-01-01T00", "2020-01-01T06"]
    assert read_commit(path)["categories"] == {"time": 2} and read_commit(path)["format_version"] == 3
    with StoreWriter(path, chunk_rows=4) as w:  # resume: known values keep their codes, new ones are added
        more = np.array(["2020-01-01T06", "2020-01-02T00", "2020-01-01T00"])
        w.append(TokenBatch({"h": torch.zeros(3, 2)}, {"time": more, "lead": np.arange(3)}, ["t1"]))
    assert list(zarr.open_group(path)["time"][:]) == [0, 0, 0, 1, 1, 1, 2, 0]
    ds = open_store(path)
    assert list(ds.time.values) == [*times, *more] and ds.time.dtype == object and "sciinterp_categories" not in ds.time.attrs
    assert set(ds.coords) == {"time", "lead"} and set(ds.data_vars) == {"h"}


def test_format_2_stores_with_plain_string_coords_still_read_and_resume(tmp_path):
    path = tmp_path / "v2.zarr"
    commit = {"format_version": 2, "n_rows": 2, "n_items": 1, "complete": True, "n_dropped_nonfinite": 0,
              "arrays": ["h", "seq", "sciinterp_items"]}  # fmt: skip
    g = zarr.open_group(path, mode="w", zarr_format=3,
                        attributes={"sciinterp_dtype": "float32", "sciinterp_commit": commit})  # fmt: skip
    g.create_array("h", data=np.ones((2, 3), np.float32), chunks=(4, 3), dimension_names=["token", "d_h"],
                   attributes={"coordinates": "seq", "sciinterp_dtype": "float32"})  # fmt: skip
    g.create_array("seq", shape=(2,), dtype=str, chunks=(4,), dimension_names=["token"])[:] = np.array(["p0", "p0"])
    g.create_array("sciinterp_items", shape=(1,), dtype=str, chunks=(4,), dimension_names=["sciinterp_item"])[:] = ["p0"]
    assert list(open_store(path).seq.values) == ["p0", "p0"]
    with StoreWriter(path, chunk_rows=4) as w:
        w.append(TokenBatch({"h": torch.zeros(1, 3)}, {"seq": np.array(["p1"])}, ["p1"]))
    assert list(open_store(path).seq.values) == ["p0", "p0", "p1"] and read_commit(path)["format_version"] == 2


def test_column_major_activations_stay_column_major_and_read_back_exactly(tmp_path):
    """A channels-first model hands (token, d) views of (d, token) blocks: stored via zarr's transpose codec."""
    from sciinterp.sources import StoreSource

    x = torch.randn(5, 50)  # (d, token)
    path = tmp_path / "f.zarr"
    with StoreWriter(path, chunk_rows=16, flush_rows=16) as w:
        w.append(TokenBatch({"h": x[:, :30].contiguous().T}, {"i": np.arange(30)}, ["a"]))  # chunk 0 written whole, 1 partly
    with StoreWriter(path, chunk_rows=16) as w:  # resume: the partly filled chunk is completed, column-major
        w.append(TokenBatch({"h": x[:, 30:].contiguous().T}, {"i": np.arange(30, 50)}, ["b"]))
        w.append(TokenBatch({"h": torch.zeros(0, 5)}, {"i": np.arange(0)}, ["empty"]))
    arr = zarr.open_array(path / "h", mode="r")
    assert [type(c).__name__ for c in arr.metadata.codecs][:2] == ["TransposeCodec", "BytesCodec"]
    assert (path / "h" / "c.3.0").is_file() and not (path / "h" / "c").exists()  # "." chunk keys: no directories
    np.testing.assert_array_equal(arr[:], x.T.numpy())
    np.testing.assert_array_equal(open_store(path).h.values, x.T.numpy())
    rows = np.concatenate([b.numpy() for b in StoreSource(path, hook="h").batches(7, shuffle=False)])
    np.testing.assert_array_equal(rows, x.T.numpy())
    assert zarr.open_array(path / "i", mode="r").chunks == (16 * COORD_CHUNK_FACTOR,)
    assert stored_items(path) == ["a", "b", "empty"]
    with StoreWriter(tmp_path / "c.zarr", chunk_rows=16) as w:  # row-major input stays row-major
        w.append(TokenBatch({"h": x.T.contiguous()}, {"i": np.arange(50)}, ["a"]))
    assert "TransposeCodec" not in [type(c).__name__ for c in zarr.open_array(tmp_path / "c.zarr" / "h").metadata.codecs]


def test_categories_are_stored_once_when_a_flush_commits_no_item(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, chunk_rows=4, flush_rows=4) as w:
        w.append(_batch(5, item="a", s=np.array(["x"] * 5)))  # a chunk written, item a not yet committable
        w.append(_batch(2, start=5, item="b", s=np.array(["y"] * 2)))
    ds = open_store(path)
    assert ds.s.values.tolist() == ["x"] * 5 + ["y"] * 2
    assert zarr.open_group(path)["sciinterp_categories_s"][:].tolist() == ["x", "y"]


def test_writer_continues_arrays_that_zarr_wrote(tmp_path):
    """Stores written before the writer wrote its own files ("/" chunk keys, row-major) are continued."""
    g = zarr.open_group(tmp_path / "old.zarr", mode="w", zarr_format=3)
    a = g.create_array("h", shape=(5, 3), chunks=(4, 3), dtype=np.float32)
    a[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    s = g.create_array("s", shape=(3,), chunks=(2,), dtype=str)
    s[:] = np.array(["p", "q", "r"])
    h, strings = ChunkedArray.open(tmp_path / "old.zarr" / "h"), ChunkedArray.open(tmp_path / "old.zarr" / "s")
    h.push(np.arange(15, 33, dtype=np.float32).reshape(6, 3))
    strings.push(np.array(["t", "u"], dtype=object))
    for arr in (h, strings):
        arr.sync()
        arr.write_meta()
    assert (tmp_path / "old.zarr" / "h" / "c" / "2" / "0").is_file()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "old.zarr" / "h")[:], np.arange(33).reshape(11, 3))
    assert zarr.open_array(tmp_path / "old.zarr" / "s")[:].tolist() == ["p", "q", "r", "t", "u"]
    with pytest.raises(ValueError, match="cannot store dtype complex64"):
        ChunkedArray.create(tmp_path / "x", width=(), chunk_rows=4, dtype=np.complex64, dimension_names=["token"])


def test_default_chunks_are_about_8_mib_and_resume_keeps_the_stores(tmp_path):
    assert [auto_chunk_rows(b) for b in (4 * 32, 2 * 32, 4 * 256, 4 * 1280)] == [65536, 65536, 8192, 8192]
    path = tmp_path / "s.zarr"
    with StoreWriter(path) as w:
        w.append(TokenBatch({"h": torch.ones(10, 256)}, {"i": np.arange(10)}, ["a"]))
    assert zarr.open_array(path / "h").chunks == (8192, 256)
    with StoreWriter(path) as w:
        assert w.chunk_rows == 8192
        w.append(TokenBatch({"h": torch.ones(5, 256)}, {"i": np.arange(5)}, ["b"]))
    assert open_store(path).sizes["token"] == 15


def test_bfloat16_of_column_major_rows_stays_column_major():
    from sciinterp.store_format import _bf16_bits

    x = np.random.default_rng(0).standard_normal((4, 9)).astype(np.float32)
    x[1, 2] = np.nan
    bits = _bf16_bits(x.T)
    assert bits.shape == (9, 4) and bits.T.flags.c_contiguous
    np.testing.assert_array_equal(bits, _bf16_bits(np.ascontiguousarray(x.T)))
    ref = torch.from_numpy(x.T.copy()).to(torch.bfloat16).view(torch.uint16).numpy()
    finite = np.isfinite(x.T)
    np.testing.assert_array_equal(bits[finite], ref[finite])
