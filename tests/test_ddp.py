"""DDP: two gloo processes on CPU give the single-process result on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sciinterp.sae import SAEConfig, SparseAutoencoder, TrainerConfig, train
from sciinterp.synthetic import planted_superposition

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from sciinterp.sae import SAEConfig, TrainerConfig, train
    x = np.load(sys.argv[1])
    cfgs = [SAEConfig("topk", d_sae=64, k=4, lr=3e-3, dead_tokens=300), SAEConfig("batchtopk", d_sae=48, k=3, lr=3e-3)]
    train(x, cfgs, TrainerConfig(batch_size=128, max_rows=1280, progress=False, device="cpu"), sys.argv[2])
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    x = planted_superposition(1_280, d_in=16, n_features=64, mean_active=3, seed=2).x
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "x.npy"), str(tmp_path / "ddp")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    torch.set_num_threads(1)
    cfgs = [SAEConfig("topk", d_sae=64, k=4, lr=3e-3, dead_tokens=300), SAEConfig("batchtopk", d_sae=48, k=3, lr=3e-3)]
    single = train(x, cfgs, TrainerConfig(batch_size=128, max_rows=1280, progress=False, device="cpu"), tmp_path / "one")
    for p in single:
        a, b = SparseAutoencoder.load(p), SparseAutoencoder.load(tmp_path / "ddp" / p.name)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=2e-5)
        if a.threshold is not None:
            torch.testing.assert_close(b.threshold, a.threshold, rtol=1e-4, atol=1e-6)
