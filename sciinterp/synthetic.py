"""Synthetic activations with known ground truth, for tests and benchmarks.

``planted_superposition`` builds rows that are sparse non-negative combinations of
many random unit directions ("true features") in a space of lower dimension,
as in toy models of superposition.  An SAE that works recovers the directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedData", "planted_superposition"]


@dataclass
class PlantedData:
    """Rows ``x`` (N, d_in) float32 with their ground truth.

    ``directions`` (n_features, d_in) unit vectors; ``codes`` is a scipy CSR
    matrix (N, n_features) of the magnitudes each row holds; ``offset`` (d_in,).
    """

    x: np.ndarray
    directions: np.ndarray
    codes: object
    offset: np.ndarray


def planted_superposition(
    n_rows: int,
    d_in: int = 320,
    n_features: int = 8192,
    mean_active: float = 20.0,
    power: float = 1.0,
    offset_scale: float = 1.0,
    noise: float = 0.01,
    seed: int = 0,
    dtype: type = np.float32,
) -> PlantedData:
    """Rows made of ~``mean_active`` planted features each.

    Feature ``i`` fires with probability proportional to ``(i + 1) ** -power``
    (scaled so a row holds ``mean_active`` on average), with exponential(1)
    magnitudes; rows get a shared mean ``offset`` and Gaussian ``noise`` (std per
    coordinate).  Deterministic for ``seed``.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d_in))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    p = (np.arange(1, n_features + 1, dtype=np.float64)) ** -power
    p = np.minimum(p * mean_active / p.sum(), 1.0)
    n_active = rng.poisson(mean_active, n_rows)
    # sample feature ids per row from the frequency law; duplicates inside a row merge
    cum = np.cumsum(p / p.sum())
    rows_a = np.repeat(np.arange(n_rows, dtype=np.int64), n_active)
    cols_a = np.minimum(np.searchsorted(cum, rng.random(rows_a.size)), n_features - 1)
    flat = np.sort(rows_a * n_features + cols_a)  # sorted by row, then feature
    flat = flat[np.r_[True, flat[1:] != flat[:-1]]]
    rows_a, cols_a = flat // n_features, flat % n_features
    mags = rng.exponential(1.0, rows_a.size)
    codes = sp.csr_matrix((mags, (rows_a, cols_a)), shape=(n_rows, n_features))
    offset = rng.standard_normal(d_in) * offset_scale / np.sqrt(d_in) * 4
    x = np.asarray(codes @ directions) + offset + noise * rng.standard_normal((n_rows, d_in))
    return PlantedData(x=x.astype(dtype), directions=directions.astype(dtype), codes=codes, offset=offset.astype(dtype))
