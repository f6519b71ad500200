"""Runner: dictionary_learning (``dictionary-learning``) TopK SAE, trained by its ``trainSAE`` loop.

``trainSAE(data, [TopKTrainer config], steps, device="cpu")`` with ``AutoEncoderTopK``:
Adam at its auto lr ``2e-4 / sqrt(dict_size / 2**14)``, AuxK 1/32, geometric-median
``b_dec`` init, grad clip 1, unit-norm decoder.  Its default warm-up (1000 steps) and
threshold start (step 1000) exceed a 2M-row run (488 steps) and ``get_lr_schedule``
rejects warm-up >= steps, so both are capped at a tenth / half of the run.
Evaluation uses ``AutoEncoderTopK.encode``/``decode`` (TopK, not the inference threshold).
"""

from __future__ import annotations

import importlib.metadata as md

import torch

import common


def main() -> None:
    spec = common.parse_spec()
    common.setup_threads(spec.threads)
    peak = common.sgemm_peak_gflops(spec.threads)
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    from dictionary_learning.training import trainSAE

    d_in = common.open_rows(f"{spec.data_dir}/train.npy").shape[1]
    steps = spec.rows // spec.batch
    trainer_cfg = {
        "trainer": TopKTrainer,
        "dict_class": AutoEncoderTopK,
        "steps": steps,
        "activation_dim": d_in,
        "dict_size": spec.d_sae,
        "k": spec.k,
        "layer": 0,
        "lm_name": "planted",
        "warmup_steps": min(1000, steps // 10),
        "threshold_start_step": min(1000, steps // 2),
        "seed": spec.seed,
        "device": "cpu",
    }
    if spec.lr:
        trainer_cfg["lr"] = spec.lr
    clock = common.Clock(spec.warmup_batches)
    captured = {}
    orig_init = TopKTrainer.__init__

    def keep(self, *a, **kw):  # keep a handle on the trainer trainSAE builds
        orig_init(self, *a, **kw)
        captured["trainer"] = self

    TopKTrainer.__init__ = keep
    trainSAE(common.batches(spec, clock), [trainer_cfg], steps, device="cpu")
    ae = captured["trainer"].ae

    def encode_decode(x: torch.Tensor):
        z = ae.encode(x)
        return ae.decode(z), z

    metrics = common.evaluate(spec, encode_decode, ae.decoder.weight.detach().T.numpy())
    common.finish(spec, "dictionary_learning", md.version("dictionary-learning"), clock, metrics, peak,
                  lr=captured["trainer"].lr, warmup_steps=trainer_cfg["warmup_steps"])


if __name__ == "__main__":
    main()
