"""Statistics shared by the linkers: data splits, structured permutations, tail probabilities, FDR.

Structured nulls
----------------
Tokens belong to *blocks* (the values of the labels' ``group`` coordinate: a protein, a valid
time).  A permutation moves labels, never features, and keeps each block's labels together:

* ``shift``   -- circularly shift the labels inside every block by an independent uniform offset
  (a protein's secondary-structure string is rotated along the chain; a time step's field is
  rotated along its flattened grid).  Keeps each block's composition and autocorrelation.
* ``shuffle`` -- give every block the labels of another block of the same length (time steps of
  one grid swap fields).  Keeps whole fields intact.
* ``permute`` -- a free permutation of all units (for per-item variables, one unit per item).

Every method has a closed-form expected label matrix (:func:`null_mean_labels`), so the null
mean of any count that is linear in the labels is exact; permutations estimate its variance.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "Blocks",
    "NullMethod",
    "benjamini_hochberg",
    "blocks_of",
    "count_pvalue",
    "normal_pvalue",
    "null_mean_labels",
    "permutation_index",
    "split_groups",
]

NullMethod = Literal["shift", "shuffle", "permute"]


class Blocks(NamedTuple):
    """Tokens grouped into blocks.

    ``order`` (n,) lists token indices block by block (token order inside a block);
    ``starts``/``lengths`` (n_blocks,) locate each block in ``order``.
    """

    order: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray


def blocks_of(groups: np.ndarray) -> Blocks:
    """Blocks from a per-token group label (equal labels form one block, in token order)."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    lengths = np.bincount(codes)
    lengths = lengths[lengths > 0]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Blocks(order.astype(np.int64), starts, lengths.astype(np.int64))


def split_groups(
    groups: np.ndarray, fraction: float, *, method: Literal["random", "contiguous"] = "random", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct group values into (selection, held-out) arrays of group values.

    ``random`` draws ``fraction`` of the groups at random; ``contiguous`` takes the first
    ``fraction`` of the sorted groups (time blocks: no neighbouring time steps across the split).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"selection fraction must be in (0, 1), got {fraction}")
    uniq = np.unique(np.asarray(groups))
    if uniq.size < 2:
        raise ValueError(f"cannot split {uniq.size} group(s) into selection and held-out; need at least 2")
    n_sel = min(max(int(round(fraction * uniq.size)), 1), uniq.size - 1)
    if method == "contiguous":
        return uniq[:n_sel], uniq[n_sel:]
    if method != "random":
        raise ValueError(f"split method must be 'random' or 'contiguous', got {method!r}")
    pick = np.zeros(uniq.size, bool)
    pick[np.random.default_rng(seed).choice(uniq.size, n_sel, replace=False)] = True
    return uniq[pick], uniq[~pick]


def permutation_index(blocks: Blocks, method: NullMethod, rng: np.random.Generator) -> np.ndarray:
    """Indices ``src`` (n,) such that ``labels[src]`` is one structured permutation of ``labels``."""
    n = blocks.order.size
    src = np.empty(n, np.int64)
    if method == "permute":
        return rng.permutation(n)
    block_id = np.repeat(np.arange(blocks.lengths.size), blocks.lengths)
    pos = np.arange(n) - blocks.starts[block_id]
    if method == "shift":
        shift = (rng.random(blocks.lengths.size) * blocks.lengths).astype(np.int64)
        src_pos = (pos + shift[block_id]) % blocks.lengths[block_id]
        src[blocks.order] = blocks.order[blocks.starts[block_id] + src_pos]
        return src
    if method == "shuffle":
        new_block = np.arange(blocks.lengths.size)
        for length in np.unique(blocks.lengths):
            same = np.flatnonzero(blocks.lengths == length)
            new_block[same] = rng.permutation(same)
        src[blocks.order] = blocks.order[blocks.starts[new_block[block_id]] + pos]
        return src
    raise ValueError(f"null method must be 'shift', 'shuffle' or 'permute', got {method!r}")


def null_mean_labels(y: np.ndarray, blocks: Blocks, method: NullMethod) -> np.ndarray:
    """``E[y[src]]`` over the permutations of ``method``: (n, C) from labels ``y`` (n, C), NaN-free.

    ``shift``: each token gets its block's mean; ``shuffle``: the mean over same-length blocks at
    the same position; ``permute``: the global mean.
    """
    y = np.asarray(y, np.float64)
    if method == "permute":
        return np.broadcast_to(y.mean(axis=0), y.shape).copy()
    block_id = np.repeat(np.arange(blocks.lengths.size), blocks.lengths)
    yo = y[blocks.order]
    out = np.empty_like(y)
    if method == "shift":
        sums = np.add.reduceat(yo, blocks.starts, axis=0) if yo.size else yo
        out[blocks.order] = (sums / blocks.lengths[:, None])[block_id]
        return out
    if method == "shuffle":
        for length in np.unique(blocks.lengths):
            same = np.flatnonzero(blocks.lengths == length)
            rows = (blocks.starts[same][:, None] + np.arange(length)).ravel()
            mean = yo[rows].reshape(same.size, length, -1).mean(axis=0)
            out[blocks.order[rows]] = np.tile(mean, (same.size, 1))
        return out
    raise ValueError(f"null method must be 'shift', 'shuffle' or 'permute', got {method!r}")


def count_pvalue(obs: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """One-sided ``P(X >= obs)`` for a null count with the given mean and variance.

    Moment-matched negative binomial when over-dispersed (``var > mean``), Poisson otherwise
    (conservative for the under-dispersed, hypergeometric-like case); never below the Poisson tail,
    so the Poisson p-value is a lower bound of the result for any variance.  ``mean <= 0`` and
    ``obs <= mean`` give p = 1 when ``obs`` is 0.
    """
    from scipy import stats

    obs = np.asarray(obs, float)
    mean = np.maximum(np.asarray(mean, float), 1e-12)
    var = np.asarray(var, float)
    k = np.ceil(obs - 1e-9) - 1  # sf(k) = P(X > k) = P(X >= obs) for integer counts
    p = stats.poisson.sf(k, mean)
    over = var > mean * (1 + 1e-9)
    if over.any():
        r = mean[over] ** 2 / (var[over] - mean[over])
        p_nb = stats.nbinom.sf(k[over], r, r / (r + mean[over]))
        p[over] = np.maximum(p_nb, p[over])  # never below the Poisson tail: a lower bound the screen relies on
    return np.where(obs <= 0, 1.0, np.clip(p, 0.0, 1.0))


def normal_pvalue(obs: np.ndarray, mean: np.ndarray, sd: np.ndarray, n_perm: int | None = None) -> np.ndarray:
    """Two-sided p-value of ``obs`` against a null with the given mean and sd (NaN -> 1).

    With ``n_perm`` (the permutations that estimated ``mean`` and ``sd``) the reference is Student's t
    with ``n_perm - 1`` degrees of freedom and the z-score is scaled by ``sqrt(n_perm / (n_perm + 1))``
    (a prediction interval for one more draw), which accounts for the estimation error of
    ``sd``; without it, the standard normal.
    """
    from scipy import stats

    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.asarray(obs, float) - mean) / sd
    if n_perm is None:
        p = 2 * stats.norm.sf(np.abs(z))
    else:
        p = 2 * stats.t.sf(np.abs(z) * np.sqrt(n_perm / (n_perm + 1)), df=n_perm - 1)
    return np.where(np.isfinite(p), p, 1.0)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of p-values of any shape (NaN stays NaN, not counted)."""
    p = np.asarray(p, float)
    q = np.full(p.shape, np.nan)
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(flat[ok], kind="stable")]
    ranked = flat[order] * m / np.arange(1, m + 1)
    qs = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    qf = q.ravel()
    qf[order] = qs
    return qf.reshape(p.shape)
