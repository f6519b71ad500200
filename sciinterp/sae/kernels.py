"""Sparse kernels of the TopK fast path: encoder top-k with a sparse backward, gather-sum decoder.

Both are ``torch.autograd.Function``s whose backward touches only the selected
``(B, k)`` latents: no dense ``(B, d_sae)`` gradient is ever formed.

* :func:`topk_encode` computes ``pre = (x - b_dec) @ W_enc + b_enc`` (the one dense
  matmul, done in row chunks), keeps the ``k`` largest per row (ReLU'd) and, when given
  the ids of dead latents, the ``k_aux`` largest among those (for the AuxK loss).
  Backward: ``dW_enc`` only for touched columns via a latent-sorted ``embedding_bag``
  over the input rows; ``db_enc`` by ``index_add``; ``db_dec = -W_enc @ db_enc``.
* :func:`sparse_decode` is ``x_hat[b] = sum_s values[b, s] * W_dec[indices[b, s]] + b_dec``
  via ``F.embedding_bag(per_sample_weights=...)``; backward gathers the same rows.

The environment variable ``SCIINTERP_NO_FAST_KERNELS=1`` switches the model to the
dense reference path (``dense_topk_reference``), e.g. to rule the kernels out when
debugging.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["EncodeOut", "fast_kernels_enabled", "sparse_decode", "topk_encode", "latent_sums"]

_CHUNK_ROWS = int(os.environ.get("SCIINTERP_CHUNK_ROWS", "1024"))


def fast_kernels_enabled() -> bool:
    """False when ``SCIINTERP_NO_FAST_KERNELS=1``."""
    return os.environ.get("SCIINTERP_NO_FAST_KERNELS", "0") not in ("1", "true", "yes")


class EncodeOut(NamedTuple):
    """Output of :func:`topk_encode`."""

    values: torch.Tensor
    """(B, k) float: ReLU'd top-k pre-activations (descending when ``sorted``)."""
    indices: torch.Tensor
    """(B, k) int64: their latent ids."""
    aux_values: torch.Tensor | None
    """(B, k_aux) float: ReLU'd top pre-activations among dead latents, or None."""
    aux_indices: torch.Tensor | None
    """(B, k_aux) int64: their latent ids, or None."""


def latent_sums(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_latents: int) -> torch.Tensor:
    """``out[j] = sum_{(b, s): indices[b, s] = j} weights[b, s] * rows[b]`` without dense (B, n) work.

    Parameters
    ----------
    indices, weights
        (B, k) latent ids (int64) and weights.
    rows
        (B, d) the row vectors.
    n_latents
        Number of latents (rows of the output).

    Returns
    -------
    torch.Tensor
        (n_latents, d), computed as a latent-sorted ``embedding_bag`` over ``rows``.
    """
    k = indices.shape[1]
    flat = indices.reshape(-1)
    order = torch.argsort(flat.to(torch.int32), stable=True)  # int32 sorts several times faster
    counts = torch.bincount(flat, minlength=n_latents)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(
        torch.div(order, k, rounding_mode="floor"), rows, offsets,
        mode="sum", per_sample_weights=weights.reshape(-1)[order].to(rows.dtype),
    )


def _gather_dot(indices: torch.Tensor, table: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``out[b, s] = <table[indices[b, s]], vec[b]>`` (B, k), without materialising the gathered rows."""
    B, k = indices.shape
    flat = indices.reshape(-1)
    dev = indices.device
    offsets = torch.arange(0, B * k, k, device=dev)
    bag = torch.arange(B, device=dev).repeat_interleave(k)
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        vec.to(table.dtype).contiguous(), table, flat, offsets, bag, 0, -1)
    return out.view(B, k).to(vec.dtype)


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, dead, k_aux, bf16):  # noqa: D102
        xc = x - b_dec
        B = x.shape[0]
        vals = torch.empty(B, k, dtype=x.dtype, device=x.device)
        idx = torch.empty(B, k, dtype=torch.long, device=x.device)
        n_aux = 0 if dead is None else min(k_aux, int(dead.numel()))
        aux_v = torch.empty(B, n_aux, dtype=x.dtype, device=x.device)
        aux_i = torch.empty(B, n_aux, dtype=torch.long, device=x.device)
        dtype = torch.bfloat16 if bf16 else x.dtype
        # bias folded into the matmul as an extra input column of ones (no (B, d_sae) bias pass)
        Wa = torch.cat([W_enc.t(), b_enc.unsqueeze(1)], 1).to(dtype)  # (d_sae, d_in + 1)
        xa = torch.cat([xc, xc.new_ones(B, 1)], 1).to(dtype)
        for i in range(0, B, _CHUNK_ROWS):
            sl = slice(i, i + _CHUNK_ROWS)
            pre = torch.mm(xa[sl], Wa.t())
            v, j = pre.topk(k, dim=1, sorted=False)
            vals[sl], idx[sl] = v, j
            if n_aux:
                v, j = pre.index_select(1, dead).topk(n_aux, dim=1, sorted=False)
                aux_v[sl], aux_i[sl] = v, dead[j]
        vals.relu_()
        aux_v.relu_()
        ctx.save_for_backward(xc, W_enc, torch.cat([idx, aux_i], 1), torch.cat([vals, aux_v], 1) > 0)
        ctx.mark_non_differentiable(idx, aux_i)
        return vals, idx, aux_v, aux_i

    @staticmethod
    def backward(ctx, g_vals, _gi, g_aux, _gai):  # noqa: D102
        xc, W_enc, idx, alive = ctx.saved_tensors
        if g_vals is None:
            g_vals = torch.zeros(idx.shape[0], idx.shape[1] - g_aux.shape[1], device=idx.device)
        if g_aux is None:
            g_aux = torch.zeros(idx.shape[0], idx.shape[1] - g_vals.shape[1], device=idx.device)
        g = torch.cat([g_vals, g_aux], 1).to(xc.dtype) * alive
        d_sae = W_enc.shape[1]
        need_x, need_w, need_be, need_bd = ctx.needs_input_grad[:4]
        dW = db_enc = db_dec = dx = None
        if need_be or need_bd:
            db_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        if need_w:
            dW = latent_sums(idx, g, xc, d_sae).t()
        if need_bd:
            db_dec = -(W_enc @ db_enc)
        if need_x:
            dx = F.embedding_bag(idx, W_enc.t(), mode="sum", per_sample_weights=g)
        return dx, dW, db_enc if need_be else None, db_dec, None, None, None, None


def topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, k: int,
    dead: torch.Tensor | None = None, k_aux: int = 0, bf16: bool = False,
) -> EncodeOut:
    """Top-``k`` latents of ``relu((x - b_dec) @ W_enc + b_enc)`` with a sparse backward.

    Parameters
    ----------
    x
        (B, d_in) inputs.
    W_enc, b_enc, b_dec
        (d_in, d_sae), (d_sae,), (d_in,) weights.
    k
        Latents kept per row.
    dead
        (n_dead,) int64 ids of dead latents for the AuxK selection, or None.
    k_aux
        Latents kept per row among ``dead``.
    bf16
        Do the encoder matmul in bfloat16 (GPU); selection and gradients stay in ``x.dtype``.
    """
    v, i, av, ai = _TopKEncode.apply(x, W_enc, b_enc, b_dec, k, dead, k_aux, bf16)
    if dead is None or av.shape[1] == 0:
        return EncodeOut(v, i, None, None)
    return EncodeOut(v, i, av, ai)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W_dec):  # noqa: D102
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=values.to(W_dec.dtype))

    @staticmethod
    def backward(ctx, g_out):  # noqa: D102
        values, indices, W_dec = ctx.saved_tensors
        g_vals = dW = None
        if ctx.needs_input_grad[0]:
            g_vals = _gather_dot(indices, W_dec, g_out)
        if ctx.needs_input_grad[2]:
            dW = latent_sums(indices, values, g_out, W_dec.shape[0])
        return g_vals, None, dW


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``out[b] = sum_s values[b, s] * W_dec[indices[b, s]]``: (B, k), (B, k), (d_sae, d_in) -> (B, d_in).

    Indices must be valid (``>= 0``); pad with index 0 and value 0.
    """
    return _SparseDecode.apply(values, indices, W_dec)
