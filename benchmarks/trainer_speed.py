"""Rows/s of the sciinterp SAE trainer against a same-run sgemm peak (no peers; see trainer_peers.py).

Usage::

    python benchmarks/trainer_speed.py [--d-in 320] [--d-sae 5120] [--k 32] [--batch 4096]
                                       [--steps 20] [--threads 2] [--arch topk] [--profile]

Times full optimisation steps (forward, sparse backward, Adam, decoder renorm) on random
rows after warm-up, and the encoder-shaped matmul ``(batch, d_in) @ (d_in, d_sae)`` alone;
prints rows/s and the share of step time the unavoidable matmul takes.  The machine is
shared, so compare the two figures of one run rather than absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sciinterp.sae import SAEConfig, SparseAutoencoder, TrainerConfig
from sciinterp.sae.trainer import _make_optimizer


def _median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=320)
    ap.add_argument("--d-sae", type=int, default=5120)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 steps")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = SAEConfig(a.arch, d_sae=a.d_sae, k=a.k)
    sae = SparseAutoencoder(cfg, a.d_in, generator=torch.Generator().manual_seed(0))
    opt = _make_optimizer(sae, cfg.learning_rate)
    tc = TrainerConfig()
    x = torch.randn(a.batch, a.d_in)
    W = torch.randn(a.d_in, a.d_sae)

    def step() -> None:
        out = sae.loss_terms(x, var=float(a.d_in))
        out.loss.backward()
        sae.remove_parallel_grads_()
        torch.nn.utils.clip_grad_norm_(list(sae.parameters()), tc.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()

    for _ in range(3):
        step()
    gemm = []
    steps = []
    for _ in range(a.steps):  # interleave so both see the same machine load
        gemm.append(_median_time(lambda: torch.mm(x, W), 1))
        steps.append(_median_time(step, 1))
    g, s = statistics.median(gemm), statistics.median(steps)
    flops = 2 * a.batch * a.d_in * a.d_sae
    print(f"{a.arch} d_in={a.d_in} d_sae={a.d_sae} k={a.k} batch={a.batch} threads={a.threads}")
    print(f"sgemm   {g * 1e3:8.1f} ms  {flops / g / 1e9:6.1f} GFLOP/s  ({a.batch / g:,.0f} rows/s if the matmul were all)")
    print(f"step    {s * 1e3:8.1f} ms  {a.batch / s:,.0f} rows/s  matmul share {g / s:.2f}  "
          f"(step = {s / g:.2f} x sgemm)")
    if a.profile:
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
