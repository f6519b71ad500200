"""Runner: sciinterp's own trainer (``sciinterp.sae.train``), TopK SAE with its defaults.

``train(source, [SAEConfig(architecture="topk", d_sae=5120, k=32)],
TrainerConfig(batch_size=4096, max_rows=rows, device="cpu", threads=2), out_dir)``, then
the saved directory is loaded back with ``SparseAutoencoder.load`` and evaluated, so the
numbers describe what a user gets on disk.  The source hands out the benchmark's rows
in file order (the same order every peer sees), ignoring the trainer's shuffle.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import tempfile
from collections.abc import Iterator

import torch

import common


class BenchSource:
    """A RowSource over the cached rows; each ``batches()`` call restarts the clock.

    The trainer peeks at one batch for its input statistics before training; only the
    last pass (the training one) is left on the clock.
    """

    def __init__(self, spec: common.Spec, clock: common.Clock):
        self.spec, self.clock = spec, clock
        self.d_in = int(common.open_rows(f"{spec.data_dir}/train.npy").shape[1])
        self.n_rows = (spec.rows // spec.batch) * spec.batch

    def batches(self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0) -> Iterator[torch.Tensor]:
        if batch_size != self.spec.batch or start_row:
            raise ValueError(f"BenchSource serves batches of {self.spec.batch} from row 0, got {batch_size}, {start_row}")
        self.clock.times.clear(), self.clock.sizes.clear(), self.clock.cpu.clear()
        self.clock.t_end = self.clock.cpu_end = None
        yield from common.batches(self.spec, self.clock)


def main() -> None:
    spec = common.parse_spec()
    common.setup_threads(spec.threads)
    peak = common.sgemm_peak_gflops(spec.threads)
    from sciinterp.sae import SAEConfig, SparseAutoencoder, TrainerConfig, train

    clock = common.Clock(spec.warmup_batches)
    src = BenchSource(spec, clock)
    sae_keys = {f.name for f in dataclasses.fields(SAEConfig)}
    opts = dict(spec.extra)  # --set KEY=VALUE: SAEConfig or TrainerConfig fields
    cfg = SAEConfig(architecture="topk", d_sae=spec.d_sae, k=spec.k, lr=spec.lr or None, seed=spec.seed,
                    **{k: v for k, v in opts.items() if k in sae_keys})
    tc = TrainerConfig(**{"progress": False, "log_every": 50, "checkpoint_every": 0, "resume": False,
                          **{k: v for k, v in opts.items() if k not in sae_keys},
                          "batch_size": spec.batch, "max_rows": src.n_rows, "device": "cpu", "threads": spec.threads})
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = train(src, [cfg], tc, tmp)
        sae = SparseAutoencoder.load(path)
    sae.eval()

    def encode_decode(x: torch.Tensor):
        z = sae.encode_dense(x)
        return sae.decode(sae.encode(x)), z

    metrics = common.evaluate(spec, encode_decode, sae.W_dec.detach().numpy())
    common.finish(spec, "ours", md.version("sciinterp"), clock, metrics, peak, lr=cfg.learning_rate,
                  sae_config=repr(cfg), trainer_config=repr(tc))


if __name__ == "__main__":
    main()
