"""Reconstruction and sparsity metrics, and the slot for downstream evaluations.

All functions take tensors (or arrays) and return plain floats or arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from sciinterp.sae.model import SparseAutoencoder

__all__ = [
    "DownstreamEval", "EvalResult", "dead_fraction", "dense_fraction", "evaluate", "frequency_histogram",
    "fve", "l0", "mse",
]


@runtime_checkable
class DownstreamEval(Protocol):
    """A downstream evaluation the trainer calls with the current SAE (raw-activation space).

    Adapters fill this slot, e.g. splice the SAE into the model at its hook and return
    ``{"loss_recovered": (L_zero - L_sae) / (L_zero - L_clean)}``.  Pass instances as
    ``train(..., evaluators={"name": fn})``; results go to ``<out>/logs/<sae>.eval.jsonl``
    and the SAE directory's ``eval.json``.
    """

    def __call__(self, sae: SparseAutoencoder) -> Mapping[str, float]: ...


def fve(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance explained, ``1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2``."""
    den = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - x_hat).pow(2).sum() / den.clamp_min(1e-30))


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error per coordinate."""
    return float((x - x_hat).pow(2).mean())


def l0(values: torch.Tensor) -> float:
    """Mean number of non-zero latents per row of ``values`` ((B, k) sparse or (B, d_sae) dense)."""
    return float((values != 0).sum(1).float().mean())


def dead_fraction(rows_since_fired: torch.Tensor, dead_rows: int) -> float:
    """Fraction of latents that have not fired for ``dead_rows`` rows."""
    return float((rows_since_fired >= dead_rows).float().mean())


def dense_fraction(frequency: torch.Tensor | np.ndarray, above: float = 0.1) -> float:
    """Fraction of latents firing on more than ``above`` of rows."""
    return float((torch.as_tensor(frequency) > above).float().mean())


def frequency_histogram(frequency: torch.Tensor | np.ndarray, bins: int = 20, floor: float = 1e-7
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of log10 firing frequencies: ``(counts (bins,), edges (bins + 1,))``.

    Latents that never fired are counted in the first bin (at ``log10(floor)``).
    """
    f = np.log10(np.maximum(np.asarray(torch.as_tensor(frequency).cpu(), dtype=np.float64), floor))
    return np.histogram(f, bins=bins, range=(np.log10(floor), 0.0))


class EvalResult(NamedTuple):
    """Metrics of an SAE over a set of rows."""

    fve: float
    """Fraction of variance explained."""
    mse: float
    """Mean squared error per coordinate (raw units squared)."""
    l0: float
    """Mean active latents per row."""
    dead_fraction: float
    """Latents that never fired on these rows."""
    dense_fraction: float
    """Latents firing on more than 10% of rows."""
    frequency: np.ndarray
    """(d_sae,) firing frequency of each latent."""


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> EvalResult:
    """FVE, MSE, L0, dead and dense fractions of ``sae`` over rows ``x`` (N, d_in)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    dev = sae.W_dec.device
    mean = x.double().mean(0)
    sq_err = sq_tot = 0.0
    active = 0
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(dev, torch.float32)
        codes = sae.encode(xb)
        xh = sae.decode(codes)
        sq_err += float((xb - xh).double().pow(2).sum())
        sq_tot += float((xb.double().cpu() - mean).pow(2).sum())
        on = codes.values > 0
        active += int(on.sum())
        counts += torch.bincount(codes.indices[on].cpu(), minlength=sae.d_sae).double()
    n = max(x.shape[0], 1)
    freq = (counts / n).numpy()
    return EvalResult(1 - sq_err / max(sq_tot, 1e-30), sq_err / (n * x.shape[1]), active / n,
                      float((freq == 0).mean()), float((freq > 0.1).mean()), freq)
