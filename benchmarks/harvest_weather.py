"""Overhead of harvesting SFNO activations into a store over the bare autoregressive forecast.

    nice -n 10 python benchmarks/harvest_weather.py [--checkpoint demo] [--hook block3] [--repeats 3]
    python benchmarks/harvest_weather.py --embed-dim 256 --num-layers 8    # FourCastNet-v2-like width

Both sides run the same rollouts (every initial time, ``--n-steps`` leads, ``--batch-size``
initial times per forward) on the same shallow-water data; the harvest side also records the
hook, builds token coordinates and writes a zarr store via ``harvest_to_store``; a third side runs
the adapter's ``harvest`` alone (hooks and coordinates, nothing stored), which splits the overhead
into the adapter's share and the store's.  The three sides run interleaved, ``--repeats`` times;
reported are the median over repeats of each run's ratio to the bare forward of the same repeat
(paired, so background load that drifts between repeats cancels) and the ratio of the best runs,
in wall-clock time and in process CPU time (all threads; background load on a shared machine
distorts it much less).  The target is at most 10 % overhead.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sciinterp.harvest import harvest_to_store
from sciinterp_adapters.weather.sfno import SFNOAdapter
from sciinterp_adapters.weather.shallow_water import generate_shallow_water


def bare_forward(adapter: SFNOAdapter, ds) -> tuple[float, float]:
    """(wall, CPU) seconds for the rollouts alone (no hooks, no store)."""
    x0 = adapter._tensor(adapter.prepare(ds))
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for start in range(0, x0.shape[0], adapter.batch_size):
            x = x0[start : start + adapter.batch_size]
            for _ in range(adapter.n_steps):
                x = adapter.step(x)
    return time.perf_counter() - t, time.process_time() - c


def adapter_only(adapter: SFNOAdapter, ds, hook: str) -> tuple[float, float]:
    """(wall, CPU) seconds for the adapter's ``harvest`` alone (batches built, then dropped)."""
    t, c = time.perf_counter(), time.process_time()
    for _ in adapter.harvest(ds, [hook]):
        pass
    return time.perf_counter() - t, time.process_time() - c


def harvest(adapter: SFNOAdapter, ds, hook: str, dtype: str, chunk_rows: int, compression: str) -> tuple[float, float]:
    """(wall, CPU) seconds for ``harvest_to_store`` into a fresh temporary store."""
    tmp = Path(tempfile.mkdtemp(prefix="sciinterp-bench-"))
    try:
        t, c = time.perf_counter(), time.process_time()
        harvest_to_store(adapter, ds, [hook], tmp / "acts.zarr", dtype=dtype, chunk_rows=chunk_rows, progress=False,
                         **({"compression": compression} if compression else {}))
        return time.perf_counter() - t, time.process_time() - c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _random_checkpoint(base: str, embed_dim: int, num_layers: int | None) -> Path:
    """A random SFNO with the base checkpoint's grid and variables but another width/depth."""
    from sciinterp_adapters.weather.sfno import build_sfno, load_sfno, save_sfno

    _, meta = load_sfno(base)
    meta.model = {**meta.model, "embed_dim": embed_dim, **({"num_layers": num_layers} if num_layers else {})}
    meta.model_id = f"sfno-random-embed{embed_dim}"
    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="sciinterp-sfno-")) / "random"
    return save_sfno(path, build_sfno(meta.model), meta)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--hook", default="block3")
    ap.add_argument("--n-steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-trajectories", type=int, default=2)
    ap.add_argument("--n-times", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--chunk-rows", type=int, default=None, help="default: the store's (chunks of ~8 MiB)")
    ap.add_argument("--compression", default=None, help="store codec (lz4, zstd, none); default: the store's")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--embed-dim", type=int, default=None,
                    help="benchmark a randomly initialised SFNO of this width (the demo's layout otherwise), "
                         "e.g. 256 as in FourCastNet-v2, instead of the tiny demo (embed 32)")
    ap.add_argument("--num-layers", type=int, default=None, help="with --embed-dim: number of SFNO blocks")
    ap.add_argument("--prefetch", type=int, default=0, help="SFNOAdapter(prefetch=...): rollouts computed ahead in a thread")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint
    if args.embed_dim:
        checkpoint = _random_checkpoint(args.checkpoint, args.embed_dim, args.num_layers)
        if args.hook not in SFNOAdapter(checkpoint).hook_names():
            args.hook = SFNOAdapter(checkpoint).hook_names()[-2]
    adapter = SFNOAdapter(checkpoint, n_steps=args.n_steps, batch_size=args.batch_size, prefetch=args.prefetch)
    ds = generate_shallow_water(nlat=adapter.grid[0], nlon=adapter.grid[1], n_trajectories=args.n_trajectories,
                                n_times=args.n_times, seed=1, progress=False)
    bare_forward(adapter, ds)  # warm-up (SHT plans, allocator)
    # interleave the two sides so background load hits both alike
    bare, adap, harv = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_forward(adapter, ds))
        adap.append(adapter_only(adapter, ds, args.hook))
        harv.append(harvest(adapter, ds, args.hook, args.dtype, args.chunk_rows, args.compression))
    n_tokens = ds.sizes["time"] * args.n_steps * adapter.grid[0] * adapter.grid[1]
    res = {"tokens": n_tokens}
    lines = []
    for k, name in ((0, "wall"), (1, "cpu")):
        b, a, h = (min(x[k] for x in side) for side in (bare, adap, harv))
        ma, mh = (statistics.median(s[k] / r[k] - 1.0 for s, r in zip(side, bare)) for side in (adap, harv))
        res |= {f"bare_{name}_s": b, f"adapter_{name}_s": a, f"harvest_{name}_s": h, f"overhead_{name}": mh,
                f"overhead_adapter_{name}": ma, f"overhead_best_{name}": h / b - 1.0}  # fmt: skip
        lines.append(f"  {name:4s} bare forward {b:.3f} s, adapter alone {a:.3f} s (median {100 * ma:+.1f} %), "
                     f"harvest_to_store {h:.3f} s: overhead median {100 * mh:+.1f} % (best runs {100 * (h / b - 1):+.1f} %)")
    print(
        f"SFNO {adapter.meta.model_id} hook={args.hook} {ds.sizes['time']} initial times x {args.n_steps} leads "
        f"({n_tokens} tokens, dtype {args.dtype}, chunk_rows {args.chunk_rows or 'auto'}, compression {args.compression or 'default'}, "
        f"prefetch {args.prefetch}, {args.threads} thread(s), {args.repeats} repeats; times are the best runs):\n"
        + "\n".join(lines) + "\n  target: overhead <= +10 %"
    )
    return res


if __name__ == "__main__":
    main()
