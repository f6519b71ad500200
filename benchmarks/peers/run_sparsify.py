"""Runner: EleutherAI sparsify (``eai-sparsify``) TopK SAE.

sparsify's ``Trainer`` only trains on a Hugging Face model's hooked activations, so
this runner performs the per-batch step of ``Trainer.fit`` (loss_fn="fvu", its
defaults) on our rows, with sparsify's own pieces:

* ``SparseCoder(d_in, SaeConfig(num_latents=5120, k=32))`` — fused TopK encoder with
  the sparse backward, embedding-bag decoder (Triton off: CPU);
* ``b_dec`` set to the first batch's mean; decoder rows renormalised before every
  forward; ``remove_gradient_parallel_to_decoder_directions`` before each step;
* optimiser "signum" (its default): ``ScheduleFreeWrapper(SignSGD, momentum=0.95)``
  with lr ``5e-3 / sqrt(num_latents / 2**14)``; auxk_alpha 0 (its default);
* evaluation with the schedule-free averaged weights (``optimizer.eval()``, as its
  checkpointing does).
"""

from __future__ import annotations

import os

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import importlib.metadata as md  # noqa: E402

import torch  # noqa: E402

import common  # noqa: E402


def main() -> None:
    spec = common.parse_spec()
    common.setup_threads(spec.threads)
    peak = common.sgemm_peak_gflops(spec.threads)
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SaeConfig, SparseCoder
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(spec.seed)
    x0 = common.open_rows(f"{spec.data_dir}/train.npy")
    d_in = x0.shape[1]
    sae = SparseCoder(d_in, SaeConfig(num_latents=spec.d_sae, k=spec.k), device="cpu", dtype=torch.float32)
    lr = spec.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()

    clock = common.Clock(spec.warmup_batches)
    for step, x in enumerate(common.batches(spec, clock)):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    opt.eval()  # schedule-free: evaluate the averaged iterate, as sparsify's checkpoints do
    sae.set_decoder_norm_to_unit_norm()

    def encode_decode(x: torch.Tensor):
        acts, idx, _ = sae.encode(x)
        z = torch.zeros(x.shape[0], sae.num_latents).scatter_(1, idx, acts)
        return sae.decode(acts, idx), z

    metrics = common.evaluate(spec, encode_decode, sae.W_dec.detach().numpy())
    common.finish(spec, "sparsify", md.version("eai-sparsify"), clock, metrics, peak, lr=lr,
                  optimizer="ScheduleFree(SignSGD, momentum=0.95)")


if __name__ == "__main__":
    main()
