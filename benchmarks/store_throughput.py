"""Activation-store throughput: write and read rows/s, MB/s, and streaming memory.

For each width ``d`` (default 320 and 1280) this writes a store of random float32
rows through :class:`sciinterp.store.StoreWriter` (items of 300 tokens, like proteins),
then streams it with :class:`sciinterp.sources.StoreSource` (shuffled and in order,
with and without the prefetch thread).  Finally a fresh process streams a store ten
times larger than its shuffle buffer and reports the growth of its resident memory.

Usage::

    nice -n 10 .venv/bin/python benchmarks/store_throughput.py [--mb 256] [--dims 320 1280]

MB are of float32 rows (``rows * d * 4``), whatever the on-disk dtype.  Wall-clock
figures depend on what else runs on the machine; CPU figures (``time.process_time``,
all threads of the process) are steadier.  Results are printed and written as JSON
to ``benchmarks/results/store_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sciinterp.adapter import TokenBatch
from sciinterp.sources import StoreSource
from sciinterp.store import StoreWriter

ITEM_ROWS = 300

RSS_CHILD = r"""
import json, sys
import psutil
from sciinterp.sources import StoreSource
src = StoreSource(sys.argv[1], buffer_rows=int(sys.argv[2]), prefetch=True)
proc = psutil.Process()
base = peak = proc.memory_info().rss
n = 0
for b in src.batches(4096, seed=0):
    n += len(b)
    peak = max(peak, proc.memory_info().rss)
print(json.dumps({"rows": n, "base_rss": base, "peak_rss": peak}))
"""


def write_store(
    path: Path, n_rows: int, d: int, dtype: str, chunk_rows: int, compression: str = "zstd"
) -> tuple[float, float]:
    """Write ``n_rows`` random rows; return (wall, CPU) seconds spent in the writer."""
    rng = np.random.default_rng(0)
    pool = torch.from_numpy(rng.standard_normal((8 * ITEM_ROWS, d), dtype=np.float32))
    t = c = 0.0
    with StoreWriter(path, dtype=dtype, chunk_rows=chunk_rows, compression=compression) as w:
        for i, start in enumerate(range(0, n_rows, ITEM_ROWS)):
            m = min(ITEM_ROWS, n_rows - start)
            off = (i * 131) % (len(pool) - ITEM_ROWS)
            batch = TokenBatch(
                {"h": pool[off : off + m] + i},
                {"item": np.full(m, f"p{i}"), "position": np.arange(1, m + 1)},
                [f"p{i}"],
            )
            t0, c0 = time.perf_counter(), time.process_time()
            w.append(batch)
            t, c = t + time.perf_counter() - t0, c + time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
    return t + time.perf_counter() - t0, c + time.process_time() - c0


def read_pass(src: StoreSource, shuffle: bool, batch_size: int = 4096) -> tuple[float, float]:
    """One pass; return (wall, CPU) seconds (CPU of all threads: the prefetch thread, zarr's)."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(b) for b in src.batches(batch_size, seed=0, shuffle=shuffle))
    assert n == src.n_rows
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=256, help="float32 size of each store, MB")
    ap.add_argument("--dims", type=int, nargs="+", default=[320, 1280])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--chunk-rows", type=int, default=8192)
    ap.add_argument("--compression", default="zstd", choices=["zstd", "none"])
    ap.add_argument("--buffer-mb", type=float, default=16, help="shuffle buffer for the memory check, MB")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", default="benchmarks/results/store_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="store-bench-"))
    results: dict = {"args": vars(args), "dims": {}}
    try:
        for d in args.dims:
            n = int(args.mb * 2**20 / (4 * d))
            mb = n * d * 4 / 2**20
            path = scratch / f"d{d}.zarr"
            tw, cw = write_store(path, n, d, args.dtype, args.chunk_rows, args.compression)
            disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
            row = {"rows": n, "mb": mb, "disk_mb": disk, "write_s": tw, "write_cpu_s": cw}
            for label, shuffle, prefetch in [("read_shuffled", True, True), ("read_shuffled_noprefetch", True, False),
                                             ("read_sequential", False, True)]:  # fmt: skip
                src = StoreSource(path, prefetch=prefetch)
                row[label + "_s"], row[label + "_cpu_s"] = read_pass(src, shuffle)
            results["dims"][d] = row
            print(f"d={d}: {n} rows, {mb:.0f} MB float32 ({disk:.0f} MB on disk, {args.dtype}, {args.compression})")
            print(f"  {'':<26} {'wall rows/s':>12} {'wall MB/s':>10} {'CPU rows/s':>12} {'CPU MB/s':>10}")
            for key in ("write", "read_shuffled", "read_shuffled_noprefetch", "read_sequential"):
                s, c = row[f"{key}_s"], row[f"{key}_cpu_s"]
                print(f"  {key:<26} {n / s:>12,.0f} {mb / s:>10.1f} {n / c:>12,.0f} {mb / c:>10.1f}")
            shutil.rmtree(path)
        # memory: a store 10x the shuffle buffer, streamed by a fresh process
        d = args.dims[0]
        buffer_rows = max(int(args.buffer_mb * 2**20 / (4 * d)), args.chunk_rows)  # a window holds whole chunks
        n = 10 * buffer_rows
        path = scratch / "mem.zarr"
        write_store(path, n, d, args.dtype, args.chunk_rows)
        res = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), str(buffer_rows)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        m = json.loads(res.stdout)
        growth = (m["peak_rss"] - m["base_rss"]) / 2**20
        store_mb, buf_mb = n * d * 4 / 2**20, buffer_rows * d * 4 / 2**20
        results["memory"] = {"d": d, "store_mb": store_mb, "buffer_mb": buf_mb, "rss_growth_mb": growth, **m}
        print(f"streaming a {store_mb:.0f} MB store with a {buf_mb:.0f} MB shuffle buffer (d={d}, prefetch on, "
              f"chunks of {args.chunk_rows} rows): peak RSS grew {growth:.0f} MB (base {m['base_rss'] / 2**20:.0f} MB)")
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
