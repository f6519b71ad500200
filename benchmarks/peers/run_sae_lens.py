"""Runner: SAELens (``sae-lens``) TopK SAE, trained by SAELens' own ``SAETrainer.fit``.

``TopKTrainingSAE(TopKTrainingSAEConfig(d_in, d_sae, k))`` with its defaults (AuxK
coefficient 1, ``rescale_acts_by_decoder_norm``, dense activations, no input
normalisation) and ``SAETrainerConfig`` defaults (Adam lr 3e-4, constant schedule,
grad-norm clip 1, no autocast); the trainer pulls batches from our iterator.
Evaluation uses the inference SAE it would save (``SAE.load_from_disk`` of
``save_model``), so what is measured is what a SAELens user would load.
"""

from __future__ import annotations

import importlib.metadata as md
import tempfile

import torch

import common


def main() -> None:
    spec = common.parse_spec()
    common.setup_threads(spec.threads)
    peak = common.sgemm_peak_gflops(spec.threads)
    from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(spec.seed)
    d_in = common.open_rows(f"{spec.data_dir}/train.npy").shape[1]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=spec.d_sae, k=spec.k, dtype="float32", device="cpu"))
    n_steps = spec.rows // spec.batch
    lr = spec.lr or 3e-4
    cfg = SAETrainerConfig(
        total_training_samples=n_steps * spec.batch,
        train_batch_size_samples=spec.batch,
        lr=lr,
        lr_end=lr,
        device="cpu",
        autocast=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    clock = common.Clock(spec.warmup_batches)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=common.batches(spec, clock))
    trainer.fit()

    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp) if hasattr(sae, "save_inference_model") else sae.save_model(tmp)
        inf = SAE.load_from_disk(tmp, device="cpu")

    def encode_decode(x: torch.Tensor):
        z = inf.encode(x)
        return inf.decode(z), z

    W_dec = inf.W_dec.detach().numpy()
    metrics = common.evaluate(spec, encode_decode, W_dec)
    common.finish(spec, "sae_lens", md.version("sae-lens"), clock, metrics, peak, lr=lr,
                  inference_class=type(inf).__name__, optimizer="Adam(0.9, 0.999), clip 1.0")


if __name__ == "__main__":
    main()
