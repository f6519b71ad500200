"""Harvest overhead of the ESM-2 adapter: bare model forward vs. harvesting into a store.

Runs the same proteins, in the same length-sorted token-budget batches, three ways:

* ``forward``  — tokenise each batch and call the fair-esm model (inference mode), nothing kept;
* ``adapter``  — ``ESM2Adapter.harvest``: forward with hooks, BOS/EOS/padding dropped, coords built;
* ``store``    — ``harvest_to_store``: the above written to a zarr store (float32).

Each is repeated (interleaved) and the median wall time and process CPU time are
reported with the overhead ``(t_mode / t_forward - 1)``; on a shared machine the CPU time is the
steadier figure (with one thread it is the work done, not the waiting).  Example::

    nice -n 10 .venv/bin/python benchmarks/harvest_protein.py --n-proteins 200 --hooks layer4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sciinterp.harvest import harvest_to_store
from sciinterp_adapters.protein.esm2 import ESM2Adapter
from sciinterp_adapters.protein.esm2_load import package_path
from sciinterp_adapters.protein.fasta import read_fasta


def bare_forward(adapter: ESM2Adapter, records) -> None:
    with torch.inference_mode(), adapter._autocast():
        for batch in adapter._plan(records):
            adapter.model(adapter._tensorise(batch).tokens.to(adapter.options.device))


def adapter_only(adapter: ESM2Adapter, records, hooks) -> None:
    for _ in adapter.harvest(records, hooks):
        pass


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="sciinterp_adapters.protein:data/esm2_demo.pt")
    ap.add_argument("--fasta", type=Path, default=package_path("sciinterp_adapters.protein:data/proteome.fasta.gz"))
    ap.add_argument("--n-proteins", type=int, default=200)
    ap.add_argument("--hooks", nargs="+", default=["layer4"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--token-budget", type=int, default=16384)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    records = read_fasta(args.fasta, strip_stop=True)[: args.n_proteins]
    n_res = sum(len(r) for r in records)
    adapter = ESM2Adapter(checkpoint=args.checkpoint, device=args.device, token_budget=args.token_budget)
    hooks = adapter.hook_names() if args.hooks == ["all"] else args.hooks
    tmp = Path(tempfile.mkdtemp(prefix="harvest_protein_"))
    times: dict[str, list[float]] = {"forward": [], "adapter": [], "store": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    try:
        bare_forward(adapter, records[:10])  # warm-up
        for rep in range(args.repeats):
            for mode in times:
                t0, c0 = time.perf_counter(), time.process_time()
                if mode == "forward":
                    bare_forward(adapter, records)
                elif mode == "adapter":
                    adapter_only(adapter, records, hooks)
                else:
                    harvest_to_store(adapter, records, hooks, tmp / f"s{rep}.zarr", progress=False)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "model": adapter.model_id, "n_proteins": len(records), "n_residues": n_res, "hooks": hooks,
        "threads": args.threads, "device": args.device, "repeats": args.repeats,
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "residues_per_s": {k: round(n_res / v) for k, v in med.items()},
        "overhead_adapter": round(med["adapter"] / med["forward"] - 1, 4),
        "overhead_store": round(med["store"] / med["forward"] - 1, 4),
        "cpu_seconds": {k: round(v, 3) for k, v in med_cpu.items()},
        "overhead_adapter_cpu": round(med_cpu["adapter"] / med_cpu["forward"] - 1, 4),
        "overhead_store_cpu": round(med_cpu["store"] / med_cpu["forward"] - 1, 4),
        "all_times": times,
        "all_cpu_times": cpu,
    }
    print(f"{adapter.model_id}: {len(records)} proteins, {n_res} residues, hooks {hooks}, {args.threads} thread(s)")
    for k, v in med.items():
        print(f"  {k:8s} wall {v:8.3f} s ({n_res / v:7.0f} residues/s)  cpu {med_cpu[k]:8.3f} s")
    print(f"  overhead (wall): adapter {100 * result['overhead_adapter']:+.1f}%, store {100 * result['overhead_store']:+.1f}%")
    print(f"  overhead (cpu):  adapter {100 * result['overhead_adapter_cpu']:+.1f}%, "
          f"store {100 * result['overhead_store_cpu']:+.1f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
