import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sciinterp.adapter import TokenBatch
from sciinterp.sources import ArraySource, RowSource, StoreSource, as_source
from sciinterp.store import StoreError, StoreWriter, open_store, part_path


def _write(path, x, chunk_rows, dtype="float32", hooks=("h",), item_rows=37):
    with StoreWriter(path, chunk_rows=chunk_rows, dtype=dtype) as w:
        for i in range(0, len(x), item_rows):
            rows = torch.from_numpy(x[i : i + item_rows])
            w.append(TokenBatch({h: rows for h in hooks}, {"row": np.arange(i, i + len(rows))}, [f"i{i}"]))
    return path


@pytest.fixture
def rows():
    return np.random.default_rng(0).standard_normal((1000, 6)).astype(np.float32)


def _cat(batches):
    return torch.cat(list(batches)).numpy()


def test_store_source_fits_protocol_and_streams_every_row_once(tmp_path, rows):
    src = as_source(_write(tmp_path / "s.zarr", rows, chunk_rows=64), buffer_rows=200)
    assert isinstance(src, StoreSource) and isinstance(src, RowSource)
    assert (src.n_rows, src.d_in, src.hook, src.chunk_rows) == (1000, 6, "h", 64)
    batches = list(src.batches(30, seed=3))
    assert [len(b) for b in batches] == [30] * 33 + [10] and batches[0].dtype == torch.float32
    out = torch.cat(batches).numpy()
    # a permutation of the stored rows: every row exactly once
    order = np.lexsort(out.T[::-1])
    np.testing.assert_array_equal(out[order], rows[np.lexsort(rows.T[::-1])])
    assert not np.array_equal(out, rows)  # shuffled ...
    np.testing.assert_array_equal(out, _cat(src.batches(30, seed=3)))  # ... deterministically
    assert not np.array_equal(out, _cat(src.batches(30, seed=4)))
    np.testing.assert_array_equal(_cat(src.batches(64, shuffle=False)), rows)


def test_shuffle_mixes_chunks_within_a_batch(tmp_path, rows):
    src = StoreSource(_write(tmp_path / "s.zarr", rows, chunk_rows=50), buffer_rows=400)
    first = next(iter(src.batches(100, seed=0))).numpy()
    src_rows = [int(np.flatnonzero((rows == r).all(1))[0]) for r in first]
    assert len({r // 50 for r in src_rows}) >= 5  # rows of one batch come from many chunks
    assert min(src_rows) != max(src_rows) - 99  # and are not a contiguous run


@pytest.mark.parametrize("shuffle", [True, False])
def test_start_row_resumes_the_same_pass(tmp_path, rows, shuffle):
    src = StoreSource(_write(tmp_path / "s.zarr", rows, chunk_rows=64), buffer_rows=150, prefetch=True)
    full = list(src.batches(40, seed=1, shuffle=shuffle))
    for k in (0, 3, 7, 24):
        tail = list(src.batches(40, seed=1, shuffle=shuffle, start_row=40 * k))
        assert len(tail) == len(full) - k
        assert all(torch.equal(a, b) for a, b in zip(tail, full[k:]))
    np.testing.assert_array_equal(_cat(src.batches(40, seed=1, shuffle=shuffle, start_row=13)), torch.cat(full)[13:])
    assert list(src.batches(40, start_row=5000)) == []


def test_prefetch_thread_gives_identical_batches_and_stops_early(tmp_path, rows):
    path = _write(tmp_path / "s.zarr", rows, chunk_rows=32)
    a = _cat(StoreSource(path, buffer_rows=100, prefetch=False).batches(50, seed=2))
    b = _cat(StoreSource(path, buffer_rows=100, prefetch=True).batches(50, seed=2))
    np.testing.assert_array_equal(a, b)
    it = StoreSource(path, prefetch=True).batches(10)
    next(it)
    it.close()  # abandoning a pass stops the reader thread
    import threading

    assert not [t for t in threading.enumerate() if t.name == "StoreSource-prefetch"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stores_decode_to_float32(tmp_path, rows, dtype):
    src = StoreSource(_write(tmp_path / "s.zarr", rows, chunk_rows=64, dtype=dtype))
    got = _cat(src.batches(100, shuffle=False))
    assert got.dtype == np.float32
    want = torch.from_numpy(rows).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").h.values.astype(np.float32), want)


def test_store_source_reads_parts_as_one(tmp_path, rows):
    for rank in range(3):
        _write(part_path(tmp_path / "p", rank, 3), rows[rank * 300 : (rank + 1) * 300 + (100 if rank == 2 else 0)], 64)
    src = as_source(tmp_path / "p")
    assert src.n_rows == 1000
    np.testing.assert_array_equal(_cat(src.batches(77, shuffle=False)), rows)
    out = _cat(src.batches(77, seed=0))
    np.testing.assert_array_equal(np.sort(out, axis=0), np.sort(rows, axis=0))


def test_as_source_dispatch_and_errors(tmp_path, rows):
    np.save(tmp_path / "x.npy", rows)
    assert isinstance(as_source(tmp_path / "x.npy"), ArraySource)
    assert isinstance(as_source(str(tmp_path / "x.npy"), hook="ignored"), ArraySource)
    assert as_source(rows).n_rows == 1000 and as_source(torch.from_numpy(rows)).d_in == 6
    src = ArraySource(rows)
    assert as_source(src) is src
    path = _write(tmp_path / "two.zarr", rows, 64, hooks=("layer1", "layer2"))
    with pytest.raises(StoreError, match=r"holds 2 hooks \['layer1', 'layer2'\]; choose one with hook=\.\.\."):
        as_source(path)
    with pytest.raises(StoreError, match=r"has no hook 'layer9'; it holds \['layer1', 'layer2'\]"):
        as_source(path, hook="layer9")
    assert as_source(path, hook="layer2").hook == "layer2"
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        as_source(tmp_path / "missing.npy")
    StoreWriter(tmp_path / "nothing.zarr").close()
    with pytest.raises(StoreError, match="nothing.zarr holds no activations yet"):
        as_source(tmp_path / "nothing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="empty is not a sciinterp activation store"):
        as_source(tmp_path / "empty")
    with pytest.raises(TypeError, match="cannot read activation rows from dict"):
        as_source({"a": 1})
    with pytest.raises(ValueError, match="need batch_size >= 1"):
        next(as_source(path, hook="layer1").batches(0))


MEMORY_CHILD = r"""
import json, sys, tracemalloc
import psutil
from sciinterp.sources import StoreSource
src = StoreSource(sys.argv[1], buffer_rows=int(sys.argv[2]), prefetch=True)
proc = psutil.Process()
before = peak = proc.memory_info().rss
tracemalloc.start()
n = 0
for b in src.batches(1024, seed=0):
    n += len(b)
    peak = max(peak, proc.memory_info().rss)
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"n": n, "rss_growth": peak - before, "traced_peak": traced}))
"""


def test_streaming_memory_stays_bounded_by_the_buffer(tmp_path):
    """Stream a store 20x the shuffle buffer in a fresh process; peak memory follows the buffer."""
    d, chunk, buffer_rows, n_chunks = 64, 4096, 16384, 80
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "big.zarr", chunk_rows=chunk) as w:
        for i in range(n_chunks):
            x = torch.from_numpy(rng.standard_normal((chunk, d), dtype=np.float32))
            w.append(TokenBatch({"h": x}, {"row": np.arange(i * chunk, (i + 1) * chunk)}, [f"b{i}"]))
    store_bytes, buffer_bytes = n_chunks * chunk * d * 4, buffer_rows * d * 4  # 84 MB vs 4 MB
    script = tmp_path / "child.py"
    script.write_text(MEMORY_CHILD)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "big.zarr"), str(buffer_rows)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["n"] == n_chunks * chunk
    # numpy/Python allocations: two windows (current + prefetched), zarr's decoding buffers, a batch
    chunk_bytes = chunk * d * 4
    assert m["traced_peak"] < 2 * buffer_bytes + 6 * chunk_bytes + (1 << 20) < store_bytes / 5, m
    # resident memory of the whole process (zarr, codecs, allocator slack) while streaming
    assert m["rss_growth"] < 2 * buffer_bytes + 6 * chunk_bytes + (8 << 20) < store_bytes / 3, m


def test_array_source_accepts_bf16_tensors_and_resumes(rows):
    x = torch.from_numpy(rows).to(torch.bfloat16)
    src = as_source(x)
    got = _cat(src.batches(100, shuffle=False))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.float().numpy())
    full = list(src.batches(64, seed=5))
    assert all(torch.equal(a, b) for a, b in zip(src.batches(64, seed=5, start_row=64 * 4), full[4:]))


def test_read_ahead_keeps_order_raises_and_stops_early():
    import threading
    import time

    from sciinterp.sources import read_ahead

    assert list(read_ahead(range(100), depth=3)) == list(range(100))
    assert list(read_ahead(range(5), depth=0)) == list(range(5))

    def broken():
        yield 1
        raise OSError("disk gone at row 4096")

    with pytest.raises(OSError, match="row 4096"):
        list(read_ahead(broken()))
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = read_ahead(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 3 + 2 + 1  # stopped, at most depth (+1 in hand) ahead
    assert not any(t.name == "sciinterp-read-ahead" for t in threading.enumerate())
