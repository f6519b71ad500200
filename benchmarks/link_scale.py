"""Scale benchmark of feature linking: 10,240 features x 50 concepts x 1M tokens (k = 32).

Prepares synthetic planted data once (a feature store in zarr + labels in netCDF under ``--dir``),
then links it in a fresh process so the peak RSS printed is the linker's own::

    nice -n 10 .venv/bin/python benchmarks/link_scale.py --dir /tmp/link_scale [--tokens 1000000]

Prints wall time, CPU time (user + sys of the process: the machine may be shared), peak RSS and whether the planted links were recovered (q < 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def prepare(d: Path, n_tokens: int, d_sae: int, k: int, n_concepts: int, n_continuous: int) -> None:
    import xarray as xr
    import zarr

    from sciinterp.analysis.synthetic import planted_links
    from sciinterp.features import FEATURES_COMMIT

    item_len = 250
    data = planted_links(
        n_items=n_tokens // item_len, item_len=item_len, d_sae=d_sae, k=k - 8 - min(n_continuous, 2), n_concepts=n_concepts,
        n_planted=8, n_continuous=n_continuous, n_planted_continuous=min(n_continuous, 2), prevalence=0.1, seed=0,
    )  # fmt: skip
    feats = data.features
    g = zarr.open_group(d / "features.zarr", mode="w", zarr_format=3)
    n = feats.sizes["token"]
    chunk = 65536
    for name in ("values", "indices"):
        arr = feats[name].values
        a = g.create_array(name, shape=arr.shape, chunks=(chunk, arr.shape[1]), dtype=arr.dtype,
                           dimension_names=["token", "k"])
        a[:] = arr
    for c in feats.coords:
        arr = feats[c].values
        a = g.create_array(c, shape=arr.shape, chunks=(chunk,), dtype=str if arr.dtype.kind == "U" else arr.dtype,
                           dimension_names=["token"])
        a[:] = arr
    g.attrs.update({"d_sae": d_sae, "k": feats.sizes["k"], "hook": "synthetic", "sae_dir": "",
                    FEATURES_COMMIT: {"format_version": 1, "n_rows": n, "complete": True}})
    data.labels.to_netcdf(d / "labels.nc")
    (d / "truth.json").write_text(json.dumps(data.truth))


def measure(d: Path, n_perm: int) -> None:
    import numpy as np
    import xarray as xr

    from sciinterp.analysis import link_features
    from sciinterp.features import open_features

    feats = open_features(d / "features.zarr")
    labels = xr.load_dataset(d / "labels.nc")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    lt = link_features(feats, labels, n_perm=n_perm, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    truth = json.loads((d / "truth.json").read_text())
    q = [float(lt.qvalue.sel(feature=f, variable=v)) for f, v in truth]
    sig = lt.qvalue.values < 0.05
    print(json.dumps({
        "tokens": feats.sizes["token"], "k": feats.sizes["k"], "d_sae": int(feats.attrs["d_sae"]),
        "variables": labels.sizes and len(labels.data_vars), "n_perm": n_perm, "seconds": round(dt, 1), "cpu_seconds": round(cpu, 1), "load_avg_1min": os.getloadavg()[0],
        "peak_rss_mb": round(peak), "rss_before_link_mb": round(rss0),
        "planted_recovered": sum(x < 0.05 for x in q), "planted": len(q), "n_significant": int(sig.sum()),
    }))  # fmt: skip
    del np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/sciinterp_link_scale"))
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--d-sae", type=int, default=10_240)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--concepts", type=int, default=50)
    ap.add_argument("--continuous", type=int, default=0, help="continuous variables (2 of them planted)")
    ap.add_argument("--n-perm", type=int, default=100)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.dir, args.n_perm)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    tag = args.dir / "prepared.json"
    want = {"tokens": args.tokens, "d_sae": args.d_sae, "k": args.k, "concepts": args.concepts,
            "continuous": args.continuous}
    if not tag.exists() or json.loads(tag.read_text()) != want:
        t0 = time.perf_counter()
        prepare(args.dir, args.tokens, args.d_sae, args.k, args.concepts, args.continuous)
        tag.write_text(json.dumps(want))
        print(f"prepared synthetic data in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cmd = [sys.executable, __file__, "--measure", "--dir", str(args.dir), "--n-perm", str(args.n_perm)]
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
