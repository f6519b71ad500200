"""Trainer benchmark: sciinterp's SAE trainer against sparsify, SAELens and dictionary_learning.

All systems train a TopK SAE (d_in=320, d_sae=5120, k=32, batch 4096, fp32, 2 threads)
on the same planted-superposition rows in the same order, each in its own fresh
process, one after the other.  Per system it prints steady-state rows/s, peak RSS,
held-out FVE, L0, dead latents, ground-truth directions recovered (cosine > 0.9)
and the share of the machine's measured fp32 GEMM peak.

Setup once (peers live in their own venv, never in the project's)::

    bash benchmarks/setup_peers.sh

Run::

    python benchmarks/trainer_peers.py                     # 2M rows, all systems
    python benchmarks/trainer_peers.py --quick             # 200k rows
    python benchmarks/trainer_peers.py --systems ours sparsify --rows 500000

Data (2M + 65,536 held-out rows, ~2.7 GB) is generated once and cached under
``benchmarks/results/data/``; results go to ``benchmarks/results/<tag>/<system>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_PY = HERE / ".peers-venv" / "bin" / "python"
OURS_PY = REPO / ".venv" / "bin" / "python"
SYSTEMS = ("ours", "sparsify", "sae_lens", "dictionary_learning")
PEERS = SYSTEMS[1:]
N_TRAIN = 2_000_000
N_HELDOUT = 65_536
CHUNK = 1 << 17
SEED = 0

log = logging.getLogger("trainer_peers")


def make_data(data_dir: Path, n_train: int = N_TRAIN, n_heldout: int = N_HELDOUT, seed: int = SEED) -> Path:
    """Generate (once) and cache the planted rows as ``.npy`` files under ``data_dir``.

    Rows come in chunks of ``CHUNK`` from :func:`sciinterp.synthetic.planted_superposition`
    (8,192 unit directions in R^320, ~20 active per row, power-law frequencies,
    exponential magnitudes, mean offset, noise 0.01).  Chunk 0 is the library's output
    for ``seed``; later chunks draw their codes with seeds ``seed + i`` and are built on
    chunk 0's directions and offset, so all rows share one ground truth while memory
    stays at one chunk.  The held-out rows use seed ``seed + 10_000``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    done = data_dir / "done.json"
    meta = {"n_train": n_train, "n_heldout": n_heldout, "seed": seed, "chunk": CHUNK}
    if done.is_file() and json.loads(done.read_text()) == meta:
        return data_dir
    sys.path.insert(0, str(REPO))
    from sciinterp.synthetic import planted_superposition

    base = planted_superposition(CHUNK, seed=seed)
    directions, offset = base.directions, base.offset.astype(np.float64)
    np.save(data_dir / "directions.npy", directions)
    d_in = directions.shape[1]

    def rows(n: int, s: int) -> np.ndarray:
        if s == seed and n == CHUNK:
            return base.x
        p = planted_superposition(n, seed=s)
        noise = np.random.default_rng(s + 1_000_000).standard_normal((n, d_in)) * 0.01
        return (np.asarray(p.codes @ directions.astype(np.float64)) + offset + noise).astype(np.float32)

    for name, n, s0 in [("train", n_train, seed), ("heldout", n_heldout, seed + 10_000)]:
        tmp = data_dir / f"{name}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d_in))
        for i, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            out[start : start + m] = rows(CHUNK, s0 + i)[:m]
            log.info("data %s: %d/%d rows", name, start + m, n)
        out.flush()
        del out
        os.replace(tmp, data_dir / f"{name}.npy")
    done.write_text(json.dumps(meta))
    return data_dir


def run_system(system: str, data_dir: Path, out_dir: Path, rows: int, threads: int, extra: list[str]) -> dict | None:
    """Run one system's runner in a fresh subprocess; return its JSON result or None."""
    py = OURS_PY if system == "ours" and OURS_PY.exists() else PEERS_PY
    if not py.exists():
        log.error("%s: interpreter %s missing (run benchmarks/setup_peers.sh)", system, py)
        return None
    out = out_dir / f"{system}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=f"{REPO}{os.pathsep}{HERE / 'peers'}", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    cmd = [str(py), str(HERE / "peers" / f"run_{system}.py"), "--data-dir", str(data_dir),
           "--rows", str(rows), "--out", str(out), "--threads", str(threads), *extra]
    log.info("running %s", " ".join(cmd))
    t0 = time.time()
    with open(out_dir / f"{system}.log", "w") as logf:
        rc = subprocess.call(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0 or not out.is_file():
        log.error("%s failed (exit %d) after %.0f s: see %s", system, rc, time.time() - t0, out_dir / f"{system}.log")
        return None
    return json.loads(out.read_text())


def table(results: dict[str, dict]) -> str:
    """Markdown table of the results, plus ratios against the fastest peer."""
    cols = ["system", "version", "rows/s", "rows/CPU-s", "peak RSS MiB", "held-out FVE", "L0", "dead",
            "GT recovered (cos>0.9)", "% GEMM peak", "GEMM peak GFLOP/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['version']} | {r['rows_per_s']:,.0f} | {r.get('rows_per_cpu_s', float('nan')):,.0f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['fve']:.4f} | "
            f"{r['l0']:.1f} | {r['dead']} | {r['gt_recovered']} / 8192 ({100 * r['gt_fraction']:.1f}%) | "
            f"{r['pct_peak']:.1f} | {r['sgemm_peak_gflops']:.0f} |"
        )
    peers = {k: v for k, v in results.items() if k != "ours"}
    if "ours" in results and peers:
        ours = results["ours"]
        fastest = max(peers, key=lambda k: peers[k]["rows_per_s"])
        best_fve = max(peers, key=lambda k: peers[k]["fve"])
        best_gt = max(peers, key=lambda k: peers[k]["gt_recovered"])
        lines += [
            "",
            f"ours / fastest peer ({fastest}) rows/s: {ours['rows_per_s'] / peers[fastest]['rows_per_s']:.2f}x (target >= 2x)",
            f"ours / best peer rows per CPU-s: "
            f"{ours.get('rows_per_cpu_s', float('nan')) / max(p.get('rows_per_cpu_s', float('nan')) for p in peers.values()):.2f}x",
            f"ours - best peer ({best_fve}) held-out FVE: {ours['fve'] - peers[best_fve]['fve']:+.4f} (target >= 0)",
            f"ours - best peer ({best_gt}) GT recovered: {ours['gt_recovered'] - peers[best_gt]['gt_recovered']:+d} (target > 0)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=N_TRAIN, help="training rows per system (default 2M)")
    p.add_argument("--quick", action="store_true", help="200k rows (a correctness check, not a benchmark)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=None, help="results sub-folder (default rows-<N>)")
    p.add_argument("--data-dir", type=Path, default=HERE / "results" / "data")
    p.add_argument("--runner-args", default="", help="extra arguments passed to every runner")
    p.add_argument("--reuse", action="store_true", help="reuse a system's existing result JSON instead of rerunning it")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = 200_000 if a.quick else a.rows
    make_data(a.data_dir, n_train=max(N_TRAIN, rows))
    out_dir = HERE / "results" / (a.tag or f"rows-{rows}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for system in a.systems:
        if a.reuse and (out_dir / f"{system}.json").is_file():
            results[system] = json.loads((out_dir / f"{system}.json").read_text())
            continue
        r = run_system(system, a.data_dir, out_dir, rows, a.threads, a.runner_args.split())
        if r is not None:
            results[system] = r
    text = table(results)
    (out_dir / "table.md").write_text(text + "\n")
    print(text)
    return 0 if len(results) == len(a.systems) else 1


if __name__ == "__main__":
    sys.exit(main())
