"""The sparse autoencoder: one module, four architectures that differ in activation and loss.

Weights follow SAELens names and shapes: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (subtracted from the input before encoding),
plus ``threshold [d_sae]`` for ``jumprelu`` (learned) and ``batchtopk`` (inference).

=============  ==========================================  ===================================
architecture   activation                                  loss = FVU + ...
=============  ==========================================  ===================================
topk           k largest of relu(pre) per row              AuxK on dead latents
batchtopk      B*k largest over the batch (train);         AuxK on dead latents
               pre > threshold (inference)
relu           relu(pre)                                   l1 * sum_j z_j ||W_dec[j]||
jumprelu       pre * H(pre - threshold), STE on threshold  l0 * sum_j H(pre_j - threshold_j)
=============  ==========================================  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sciinterp.sae.config import SAEConfig
from sciinterp.sae.kernels import fast_kernels_enabled, sparse_decode, topk_encode

__all__ = ["ForwardOutput", "SparseAutoencoder", "SparseCodes"]

UNIT_NORM_DECODER = ("topk", "batchtopk", "jumprelu")


class SparseCodes(NamedTuple):
    """Sparse latent codes of a batch of rows."""

    values: torch.Tensor
    """(B, k) float: activations, 0 where padded."""
    indices: torch.Tensor
    """(B, k) int64: latent ids, -1 where padded."""


class ForwardOutput(NamedTuple):
    """What ``sae(x)`` returns (losses are scalars on the input's scale-free FVU footing)."""

    x_hat: torch.Tensor
    """(B, d_in) reconstruction."""
    codes: SparseCodes | None
    """Sparse codes of the batch (None in the trainer's dense paths)."""
    fvu: torch.Tensor
    """Fraction of variance unexplained (reconstruction loss)."""
    aux_loss: torch.Tensor
    """AuxK dead-latent loss (0 when none are dead or not topk/batchtopk)."""
    sparsity_loss: torch.Tensor
    """L1 (relu) or L0 (jumprelu) penalty, already weighted; 0 otherwise."""
    loss: torch.Tensor
    """fvu (Matryoshka: mean FVU over the nested prefixes) + auxk_alpha * aux_loss + sparsity_loss."""
    l0: torch.Tensor
    """Mean active latents per row."""
    fired: torch.Tensor
    """(d_sae,) bool: latents that fired on this batch."""


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - theta)``; d/dtheta by a rectangle-kernel straight-through estimator."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(g.dtype)
        return g * (pre > theta), (-(theta / eps) * near * g).sum(0), None


class _Step(torch.autograd.Function):
    """``H(pre - theta)``; d/dtheta by the same straight-through estimator."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(g.dtype)
        return None, (-(1.0 / eps) * near * g).sum(0), None


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder over ``d_in``-dimensional rows.

    Parameters
    ----------
    cfg
        Architecture and width.
    d_in
        Input width.
    device, dtype
        Where the weights live.
    generator
        Initialisation RNG (decoder rows: random unit vectors; ``W_enc = W_dec.T``).
    """

    def __init__(self, cfg: SAEConfig, d_in: int, *, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg, self.d_in, self.d_sae = cfg, int(d_in), cfg.d_sae
        w = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=dtype)
        w /= w.norm(dim=1, keepdim=True)
        w = w.to(device)
        self.W_dec = nn.Parameter(w.clone())
        # stored as a transposed view of a (d_sae, d_in) tensor: the sparse backward writes rows
        self.W_enc = nn.Parameter(w.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, dtype=dtype, device=device))
        if cfg.architecture == "jumprelu":
            init = torch.full((self.d_sae,), float(cfg.jumprelu_init_threshold), dtype=dtype, device=device)
            self.log_threshold = nn.Parameter(init.log())
        elif cfg.architecture == "batchtopk":
            self.register_buffer("batch_threshold", torch.zeros((), dtype=dtype, device=device))
        self.provenance: dict = {}
        self.normalization: dict = {"kind": "none"}
        self.bf16 = False

    # -- weights -----------------------------------------------------------------------
    @property
    def threshold(self) -> torch.Tensor | None:
        """(d_sae,) inference threshold (jumprelu, batchtopk), else None."""
        if self.cfg.architecture == "jumprelu":
            return self.log_threshold.exp()
        if self.cfg.architecture == "batchtopk":
            return self.batch_threshold.expand(self.d_sae)
        return None

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale decoder rows to unit norm (architectures that want it)."""
        if self.cfg.architecture in UNIT_NORM_DECODER:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Project out the part of each decoder row's gradient along the row (unit-norm constraint)."""
        g = self.W_dec.grad
        if g is not None and self.cfg.architecture in UNIT_NORM_DECODER:
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    # -- inference API ---------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_in) -> (B, d_sae) pre-activations ``(x - b_dec) @ W_enc + b_enc``."""
        return torch.addmm(self.b_enc, (x - self.b_dec).to(self.W_enc.dtype), self.W_enc)

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_in) -> (B, d_sae) latent activations (inference rule of the architecture)."""
        pre = self.pre_acts(x)
        arch = self.cfg.architecture
        if arch == "topk":
            v, i = pre.topk(self.cfg.k, dim=1)
            return torch.zeros_like(pre).scatter_(1, i, v.relu())
        if arch == "relu":
            return pre.relu()
        thr = self.threshold
        return pre * (pre > thr) * (pre > 0)

    def encode(self, x: torch.Tensor, max_active: int | None = None) -> SparseCodes:
        """(B, d_in) -> :class:`SparseCodes` ``(B, k)``, sorted by value, descending.

        ``topk`` gives ``k`` slots per row.  Other architectures pad every row to the
        largest active count in the batch (or ``max_active``, keeping the largest).  Slots
        without an active latent hold index -1 and value 0.
        """
        if self.cfg.architecture == "topk":
            v, i = self.pre_acts(x).topk(self.cfg.k, dim=1)
            v = v.relu()
            return SparseCodes(v, torch.where(v > 0, i, torch.full_like(i, -1)))
        z = self.encode_dense(x)
        width = int((z > 0).sum(1).max()) if z.shape[0] else 0
        if max_active is not None:
            width = min(width, int(max_active))
        v, i = z.topk(max(width, 0), dim=1)
        return SparseCodes(v, torch.where(v > 0, i, torch.full_like(i, -1)))

    def decode(self, codes: SparseCodes | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """:class:`SparseCodes` ``(B, k)`` (index -1 = padding) -> (B, d_in) reconstruction."""
        values, indices = codes
        pad = indices < 0
        if pad.any():
            values, indices = values.masked_fill(pad, 0), indices.masked_fill(pad, 0)
        return sparse_decode(values.to(self.W_dec.dtype), indices.long(), self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """Reconstruction, codes and losses of a batch (FVU against the batch's own variance)."""
        out = self.loss_terms(x)
        if out.codes is None:
            codes = self.encode(x)
        else:
            v, i = out.codes
            codes = SparseCodes(v, torch.where(v > 0, i, torch.full_like(i, -1)))
        return out._replace(codes=codes)

    # -- training ------------------------------------------------------------------------------
    def loss_terms(
        self, x: torch.Tensor, *, dead: torch.Tensor | None = None, var: float | None = None,
        n_rows: int | None = None, all_sum: Callable[[torch.Tensor], torch.Tensor] = _identity,
        all_gather: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> ForwardOutput:
        """Losses of one (local) batch ``x`` (B, d_in).

        Parameters
        ----------
        dead
            (n_dead,) int64 ids of dead latents (AuxK targets), or None.
        var
            Variance per row that normalises the squared error (FVU); default: this batch's.
        n_rows
            Rows in the global batch (losses are sums over local rows / ``n_rows``, so summing
            gradients over DDP ranks gives the global-batch gradient).  Default ``B``.
        all_sum
            Sums a tensor over DDP ranks (identity in one process).
        all_gather
            Concatenates a 1-D tensor over DDP ranks (``batchtopk``'s global-batch threshold).
        """
        cfg, B = self.cfg, x.shape[0]
        n = float(n_rows or B)
        if var is None:
            var = float((x - x.mean(0)).pow(2).sum(1).mean())
        zero = x.new_zeros(())
        aux = sparsity = zero
        codes = None
        arch = cfg.architecture
        batch_rule = arch == "batchtopk" and self.training  # eval: the saved threshold (a JumpReLU)
        if (arch == "topk" or batch_rule) and fast_kernels_enabled():
            k_aux = cfg.auxk_k or self.d_in // 2
            k = cfg.k if arch == "topk" else min(self.d_sae, 4 * cfg.k)
            enc = topk_encode(x, self.W_enc, self.b_enc, self.b_dec, k,
                              dead if cfg.auxk_alpha > 0 else None, k_aux, self.bf16)
            vals, idx = enc.values, enc.indices
            if arch == "batchtopk":
                vals, idx = self._batch_select(vals, idx, n, all_gather)
            plan = enc.plan if arch == "topk" else None
            if cfg.matryoshka_widths:
                parts = [sparse_decode(vals * ((idx >= lo) & (idx < hi)), idx, self.W_dec, plan)
                         for lo, hi in self._matryoshka_groups()]
                x_hat, nested = self._nested(x, parts, n, var)
            else:
                x_hat = sparse_decode(vals, idx, self.W_dec, plan) + self.b_dec
            err = x - x_hat
            if enc.aux_values is not None:
                e = err.detach()
                e_scale = all_sum(e.pow(2).sum()) / n
                e_hat = sparse_decode(enc.aux_values, enc.aux_indices, self.W_dec)
                aux = (e_hat - e).pow(2).sum() / (n * e_scale.clamp_min(1e-12))
            active = vals > 0
            fired = torch.zeros(self.d_sae, dtype=torch.int32, device=x.device)
            fired = fired.index_add_(0, idx.reshape(-1), active.reshape(-1).to(torch.int32)) > 0
            l0 = active.sum() / max(B, 1)
            codes = SparseCodes(vals, idx)
        else:
            pre = self.pre_acts(x)
            if arch == "relu":
                z = pre.relu()
                sparsity = cfg.l1_coeff * (z @ self.W_dec.norm(dim=1)).sum() / (n * var**0.5)
            elif arch == "jumprelu":
                theta = self.log_threshold.exp()
                z = _JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth)
                sparsity = cfg.l0_coeff * _Step.apply(pre, theta, cfg.jumprelu_bandwidth).sum() / n
            elif arch == "batchtopk" and not self.training:
                z = pre * (pre > self.threshold) * (pre > 0)
            else:  # dense reference of topk / batchtopk (SCIINTERP_NO_FAST_KERNELS=1)
                z = self._dense_topk(pre, n, all_gather)
            if cfg.matryoshka_widths:
                parts = [z[:, lo:hi] @ self.W_dec[lo:hi] for lo, hi in self._matryoshka_groups()]
                x_hat, nested = self._nested(x, parts, n, var)
            else:
                x_hat = z @ self.W_dec + self.b_dec
            err = x - x_hat
            active = z > 0
            fired = active.any(0)
            l0 = active.sum() / max(B, 1)
        fvu = err.pow(2).sum() / (n * var)
        loss = (nested if cfg.matryoshka_widths else fvu) + cfg.auxk_alpha * aux + sparsity
        return ForwardOutput(x_hat, codes, fvu, aux, sparsity, loss, l0.detach(), fired)

    def _matryoshka_groups(self) -> list[tuple[int, int]]:
        """Latent ranges ``[lo, hi)`` between consecutive Matryoshka widths."""
        widths = self.cfg.matryoshka_widths
        return list(zip([0, *widths[:-1]], widths))

    def _nested(self, x, parts, n, var):
        """Full reconstruction and the mean FVU of the prefix reconstructions ``b_dec + sum(parts[:i])``."""
        acc, total = self.b_dec, x.new_zeros(())
        for part in parts:
            acc = acc + part
            total = total + (x - acc).pow(2).sum() / (n * var)
        return acc, total / len(parts)

    def _batch_select(self, vals, idx, n, all_gather):
        """Keep the ``n * k`` largest of the per-row candidates over the (global) batch of ``n`` rows."""
        cand = all_gather(vals.detach().reshape(-1))
        k_total = min(int(round(n * self.cfg.k)), cand.numel())
        t = cand.topk(k_total, sorted=False).values.min()
        if self.training:
            with torch.no_grad():  # running inference threshold
                self.batch_threshold.mul_(0.99).add_(0.01 * t)
        keep = vals >= t
        width = max(int(keep.sum(1).max()), 1)
        vals = vals * keep
        top = vals.detach().topk(width, dim=1, sorted=False).indices
        return vals.gather(1, top), idx.gather(1, top)

    def _dense_topk(self, pre, n, all_gather):
        z = pre.relu()
        if self.cfg.architecture == "topk":
            v, i = z.topk(self.cfg.k, dim=1)
            return torch.zeros_like(z).scatter(1, i, v)
        cand = z.topk(min(self.d_sae, 4 * self.cfg.k), dim=1)
        v, i = self._batch_select(cand.values, cand.indices, n, all_gather)
        return torch.zeros_like(z).scatter(1, i, v)

    # -- normalisation folding -------------------------------------------------------------------
    @torch.no_grad()
    def folded(self, mean: torch.Tensor, scale: torch.Tensor) -> SparseAutoencoder:
        """A copy that takes raw inputs ``x`` when this one was trained on ``(x - mean) / scale``.

        ``mean`` and ``scale`` are scalars or (d_in,) tensors; latents are unchanged:
        ``W_enc' = W_enc / scale[:, None]``, ``W_dec' = W_dec * scale``, ``b_dec' = mean + scale * b_dec``.
        """
        out = SparseAutoencoder(self.cfg, self.d_in, device=self.W_dec.device, dtype=self.W_dec.dtype)
        out.load_state_dict(self.state_dict())
        mean = torch.as_tensor(mean, dtype=self.W_dec.dtype, device=self.W_dec.device)
        scale = torch.as_tensor(scale, dtype=self.W_dec.dtype, device=self.W_dec.device)
        out.W_enc.copy_(self.W_enc / scale.reshape(-1, 1))
        out.W_dec.copy_(self.W_dec * scale.reshape(1, -1))
        out.b_dec.copy_(mean + scale * self.b_dec)
        out.provenance = dict(self.provenance)
        return out

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path) -> "Path":  # noqa: F821
        """Write this SAE as an SAELens-layout directory (see :mod:`sciinterp.sae.io`)."""
        from sciinterp.sae.io import save_sae

        return save_sae(self, path)

    @staticmethod
    def load(path, d_in: int | None = None, hook: str | None = None, model_checksum: str | None = None,
             device: str | torch.device = "cpu") -> SparseAutoencoder:
        """Read an SAE directory, checking width, hook and model checksum when given."""
        from sciinterp.sae.io import load_sae

        return load_sae(path, d_in=d_in, hook=hook, model_checksum=model_checksum, device=device)
