"""Shared harness for the trainer benchmark runners (one runner per system).

Every runner runs in its own fresh process, reads the same cached planted data in
the same order, trains one TopK SAE on the same row budget and reports the same
metrics through :func:`finish`.  Nothing here depends on a peer library, so each
runner imports only its own system.

Data layout (written by ``benchmarks/trainer_peers.py``), under ``data_dir``:

* ``train.npy``     (N, d_in) float32 training rows
* ``heldout.npy``   (M, d_in) float32 held-out rows (never trained on)
* ``directions.npy`` (n_features, d_in) float32 unit ground-truth directions
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Spec:
    """What every runner trains: the same shape, sparsity, batch and row budget."""

    data_dir: str
    """Folder holding ``train.npy``, ``heldout.npy``, ``directions.npy``."""
    rows: int
    """Training row budget (rows seen by the optimiser, one pass, no repeats)."""
    out: str
    """Where the runner writes its JSON result."""
    d_sae: int = 5120
    """Number of latents."""
    k: int = 32
    """Active latents per row (TopK)."""
    batch: int = 4096
    """Rows per optimiser step."""
    lr: float = 0.0
    """Learning rate; 0 means the system's own default / recommended value."""
    threads: int = 2
    """torch intra-op threads."""
    warmup_batches: int = 5
    """Batches excluded from the steady-state rows/s."""
    seed: int = 0
    """Seed for each system's parameter initialisation."""
    extra: dict = field(default_factory=dict)
    """Free-form system options (recorded in the result)."""


def parse_spec(argv: list[str] | None = None) -> Spec:
    """Command line of every runner: ``--data-dir --rows --out [--d-sae --k --batch --lr --threads]``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--d-sae", type=int, default=5120)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="system options (a runner reads those it knows; values parsed as JSON when possible)")
    a = p.parse_args(argv)
    extra = {}
    for kv in a.set:
        key, _, val = kv.partition("=")
        try:
            extra[key] = json.loads(val)
        except json.JSONDecodeError:
            extra[key] = val
    return Spec(a.data_dir, a.rows, a.out, a.d_sae, a.k, a.batch, a.lr, a.threads, a.warmup_batches, a.seed, extra)


def setup_threads(n: int) -> None:
    """Pin torch (and the BLAS under it) to ``n`` threads before any work."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def open_rows(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only."""
    return np.load(path, mmap_mode="r")


def _drop_pages(arr: np.ndarray) -> None:
    """Release the memory map's resident pages so file cache does not count as RSS."""
    mm = getattr(arr, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


class Clock:
    """Timestamps batch hand-outs: the time between two pulls is one training step.

    Works for any training loop that pulls batches from an iterator (the peer's own
    loop included).  Steady state excludes the first ``warmup`` batches.
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.sizes: list[int] = []
        self.t_end: float | None = None
        self.cpu_end: float | None = None

    def tick(self, n: int) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.sizes.append(n)

    def stop(self) -> None:
        self.t_end = time.perf_counter()
        self.cpu_end = time.process_time()

    def rows_per_cpu_s(self) -> float:
        """Steady-state rows per CPU-second of this process (all threads).

        Less sensitive than wall time to other processes sharing the cores (time spent
        waiting for a core is not counted); threads spinning at barriers still count.
        """
        c, sizes = list(self.cpu), list(self.sizes)
        if self.cpu_end is not None:
            c.append(self.cpu_end)
        else:
            sizes = sizes[:-1]
        n = len(sizes)
        w = min(self.warmup, max(n - 2, 0))
        return sum(sizes[w:]) / max(c[n] - c[w], 1e-9)

    def rows_per_s(self) -> tuple[float, float]:
        """(steady-state rows/s, whole-run rows/s incl. warm-up).

        Batch ``i`` is trained between its hand-out and the next one; without a final
        ``stop()`` (a loop that ends on a step count) the last batch is left out.
        """
        t, sizes = list(self.times), list(self.sizes)
        if self.t_end is not None:
            t.append(self.t_end)
        else:
            sizes = sizes[:-1]
        n = len(sizes)
        w = min(self.warmup, max(n - 2, 0))
        steady = sum(sizes[w:]) / max(t[n] - t[w], 1e-9)
        total = sum(sizes) / max(t[n] - t[0], 1e-9)
        return steady, total


def batches(spec: Spec, clock: Clock, *, torch_tensors: bool = True) -> Iterator:
    """Yield the training batches ``(batch, d_in)`` float32 in file order, ``spec.rows`` rows in all.

    Every system sees exactly the same rows in the same order (the file is already
    i.i.d.).  Each yield is timestamped on ``clock``.
    """
    import torch

    x = open_rows(Path(spec.data_dir) / "train.npy")
    if spec.rows > x.shape[0]:
        raise ValueError(f"--rows {spec.rows} exceeds the {x.shape[0]} rows cached in {spec.data_dir}")
    n_full = spec.rows // spec.batch  # whole batches only: every step has the same size
    for i in range(n_full):
        b = np.array(x[i * spec.batch : (i + 1) * spec.batch], dtype=np.float32)
        if i % 16 == 15:
            _drop_pages(x)
        clock.tick(b.shape[0])
        yield torch.from_numpy(b) if torch_tensors else b
    clock.stop()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sgemm_peak_gflops(threads: int, repeats: int = 5) -> float:
    """Best measured fp32 GEMM throughput (GFLOP/s) on ``threads`` threads.

    Takes the best of a square 2048³ GEMM and the SAE's own encoder shape
    (4096×320 @ 320×5120), ``repeats`` times each.
    """
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (4096, 320, 5120)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def flops_per_row(d_in: int, d_sae: int, k: int) -> float:
    """Useful training FLOPs per row of a TopK SAE.

    The dense encoder forward (``2 d_in d_sae``) plus the sparse parts: decoder
    forward, decoder weight gradient, the gradient into the k active latents and
    the encoder weight gradient restricted to them (``4 × 2 k d_in``).  A system
    that runs the backward densely does more work than this; it is not credited.
    """
    return 2.0 * d_in * d_sae + 8.0 * k * d_in


@dataclass
class Weights:
    """A trained SAE in one common form, for evaluation (numpy float32)."""

    W_enc: np.ndarray
    """(d_in, d_sae)"""
    b_enc: np.ndarray
    """(d_sae,)"""
    W_dec: np.ndarray
    """(d_sae, d_in)"""
    b_dec: np.ndarray
    """(d_in,)"""
    subtract_b_dec: bool = True
    """Whether the encoder sees ``x - b_dec`` (SAELens, sparsify) or ``x`` (bias folded)."""


def evaluate(spec: Spec, encode_decode, decoder_rows: np.ndarray, chunk: int = 8192) -> dict:
    """Held-out metrics with the system's own encode/decode.

    Parameters
    ----------
    encode_decode
        callable ``x (n, d_in) torch.float32 -> (x_hat (n, d_in), z (n, d_sae) dense)``.
    decoder_rows
        ``(d_sae, d_in)`` decoder directions (any norm), for ground-truth recovery.

    Returns FVE (1 - SSE / total sum of squares about the held-out mean), mean L0,
    dead latents (never non-zero on the held-out rows), ground-truth directions whose
    best decoder cosine exceeds 0.9 (count and fraction) and the mean best cosine.
    """
    import torch

    xh = open_rows(Path(spec.data_dir) / "heldout.npy")
    mean = np.asarray(xh, dtype=np.float64).mean(0)
    sse = sst = l0 = 0.0
    fired = None
    with torch.no_grad():
        for i in range(0, xh.shape[0], chunk):
            x = torch.from_numpy(np.array(xh[i : i + chunk], dtype=np.float32))
            x_hat, z = encode_decode(x)
            sse += float(((x_hat.double() - x.double()) ** 2).sum())
            sst += float(((x.double() - torch.from_numpy(mean)) ** 2).sum())
            active = z != 0
            l0 += float(active.sum())
            f = active.any(0)
            fired = f if fired is None else fired | f
    d = np.asarray(decoder_rows, dtype=np.float32)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    truth = np.load(Path(spec.data_dir) / "directions.npy")
    best = np.full(truth.shape[0], -1.0, dtype=np.float32)
    for i in range(0, truth.shape[0], 2048):
        best[i : i + 2048] = (truth[i : i + 2048] @ d.T).max(1)
    return {
        "fve": 1.0 - sse / sst,
        "l0": l0 / xh.shape[0],
        "dead": int((~fired).sum()),
        "gt_recovered": int((best > 0.9).sum()),
        "gt_fraction": float((best > 0.9).mean()),
        "gt_mean_best_cos": float(best.mean()),
    }


def finish(spec: Spec, system: str, version: str, clock: Clock, metrics: dict, peak_gflops: float, **info) -> dict:
    """Assemble, write (atomically) and print the runner's JSON result."""
    import torch

    steady, total = clock.rows_per_s()
    # the cores are shared: take the better of the GEMM peaks measured before and after training
    peak_gflops = max(peak_gflops, sgemm_peak_gflops(spec.threads))
    d_in = int(np.load(Path(spec.data_dir) / "directions.npy", mmap_mode="r").shape[1])
    fpr = flops_per_row(d_in, spec.d_sae, spec.k)
    res = {
        "system": system,
        "version": version,
        "torch": torch.__version__,
        "rows": int(sum(clock.sizes)),
        "steps": len(clock.sizes),
        "rows_per_s": steady,
        "rows_per_s_incl_warmup": total,
        "rows_per_cpu_s": clock.rows_per_cpu_s(),
        "train_seconds": (clock.t_end or clock.times[-1]) - clock.times[0],
        "peak_rss_mb": peak_rss_mb(),
        "sgemm_peak_gflops": peak_gflops,
        "flops_per_row": fpr,
        "pct_peak": 100.0 * steady * fpr / (peak_gflops * 1e9),
        **metrics,
        "spec": asdict(spec),
        **info,
    }
    tmp = Path(spec.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, spec.out)
    json.dump({k: v for k, v in res.items() if k != "spec"}, sys.stdout, indent=1)
    print()
    return res
