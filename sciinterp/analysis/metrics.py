"""Vectorised feature-by-variable statistics on sparse codes (:class:`~sciinterp.features.SortedCodes`).

Concepts go through *binned contingency tables*: each feature's active values are cut at ``Q``
quantile edges (chosen on the selection split), giving a binary sparse matrix ``M`` of shape
``(feature * Q, token)``; one sparse product ``M @ Y`` with the label matrix ``Y (token, concept)``
counts, for every feature, bin and concept, the tokens carrying the concept.  Reverse cumulative
sums over bins give true positives at every threshold at once; the same table gives AUROC
(exact for the inactive tie, ties within a bin counted as ties) and mutual information.
Cost: one pass over the active entries per label column.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sciinterp.features import SortedCodes, column_of

__all__ = [
    "ConceptTable",
    "auroc_from_table",
    "bin_entries",
    "bin_matrix",
    "concept_table",
    "correlation",
    "log_odds",
    "mi_concept",
    "mi_continuous",
    "quantile_edges",
    "rank_codes",
    "region_recall",
    "tp_at",
    "value_matrix",
]


def quantile_edges(sc: SortedCodes, n_levels: int) -> np.ndarray:
    """Edges ``(n_features, n_levels - 1)``: the ``j / n_levels`` quantiles of each feature's active values.

    A feature with no active entry gets ``inf`` edges (only the "active at all" level is usable).
    """
    cnt = np.diff(sc.indptr)
    j = np.arange(1, n_levels)
    pos = sc.indptr[:-1, None] + np.floor(j[None, :] * cnt[:, None] / n_levels).astype(np.int64)
    if sc.values.size == 0:
        return np.full((sc.n_features, n_levels - 1), np.inf, np.float32)
    return np.where(cnt[:, None] > 0, sc.values[np.minimum(pos, sc.values.size - 1)], np.inf).astype(np.float32)


def bin_entries(sc: SortedCodes, edges: np.ndarray) -> np.ndarray:
    """Level of every entry: ``1 + #{edges <= value}`` in ``1 .. Q`` (int16)."""
    col = column_of(sc)
    bins = np.ones(sc.values.size, np.int16)
    for j in range(edges.shape[1]):
        bins += sc.values >= edges[col, j]
    return bins


def bin_matrix(sc: SortedCodes, bins: np.ndarray, n_levels: int) -> sp.csr_matrix:
    """Binary CSR ``(n_features * Q, n_tokens)``: row ``f * Q + b - 1`` marks tokens of feature f in bin b."""
    rowid = column_of(sc) * n_levels + bins.astype(np.int64) - 1  # non-decreasing: values sorted per feature
    indptr = np.zeros(sc.n_features * n_levels + 1, np.int64)
    np.cumsum(np.bincount(rowid, minlength=sc.n_features * n_levels), out=indptr[1:])
    data = np.ones(sc.values.size, np.float32)
    return sp.csr_matrix((data, sc.rows, indptr), shape=(sc.n_features * n_levels, sc.n_tokens))


def value_matrix(sc: SortedCodes, data: np.ndarray | None = None) -> sp.csr_matrix:
    """CSR ``(n_features, n_tokens)`` of activation values (or of ``data`` given per entry)."""
    data = sc.values if data is None else data
    return sp.csr_matrix((data, sc.rows, sc.indptr), shape=(sc.n_features, sc.n_tokens))


class ConceptTable:
    """Counts per feature, active bin and concept; thresholds are the levels ``j = 0 .. Q-1``.

    Level ``j`` means "feature value in bin ``>= j + 1``" (``j = 0``: active at all).
    ``tp[f, j, c]`` tokens at/above level j carrying concept c; ``pred[f, j, c]`` known tokens at/above
    level j; ``pos[c]``/``known[c]`` concept totals.
    """

    def __init__(self, pos_bins: np.ndarray, known_bins: np.ndarray, pos: np.ndarray, known: np.ndarray):
        self.pos_bins = pos_bins.astype(np.float64)
        self.known_bins = np.broadcast_to(known_bins, pos_bins.shape).astype(np.float64)
        self.pos = pos.astype(np.float64)
        self.known = known.astype(np.float64)
        self.tp = np.flip(np.cumsum(np.flip(self.pos_bins, 1), 1), 1)
        self.pred = np.flip(np.cumsum(np.flip(self.known_bins, 1), 1), 1)

    def f1(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(2 * self.tp / (self.pred + self.pos), nan=0.0)

    def at(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(true positives, predicted positives) ``(n_features, C)`` at per-pair levels ``(n_features, C)``."""
        lv = level[:, None, :]
        return np.take_along_axis(self.tp, lv, 1)[:, 0], np.take_along_axis(self.pred, lv, 1)[:, 0]


def concept_table(m: sp.csr_matrix, y0: np.ndarray, known: np.ndarray | None, n_levels: int) -> ConceptTable:
    """:class:`ConceptTable` from the bin matrix ``m`` and labels ``y0 (token, C)`` (NaN already 0).

    ``known`` (token, C) masks unknown labels; ``None`` means every label is known.
    """
    nf = m.shape[0] // n_levels
    c = y0.shape[1]
    pos_bins = np.asarray(m @ y0).reshape(nf, n_levels, c)
    if known is None:
        known_bins = np.asarray(m.sum(axis=1)).reshape(nf, n_levels, 1)
        known_tot = np.full(c, float(y0.shape[0]))
    else:
        known_bins = np.asarray(m @ known).reshape(nf, n_levels, c)
        known_tot = known.sum(axis=0, dtype=np.float64)
    return ConceptTable(pos_bins, known_bins, y0.sum(axis=0, dtype=np.float64), known_tot)


def tp_at(m: sp.csr_matrix, y0: np.ndarray, level: np.ndarray, n_levels: int) -> np.ndarray:
    """True positives ``(F, C)`` at per-pair levels: the one count a permutation needs."""
    nf = m.shape[0] // n_levels
    cnt = np.asarray(m @ y0).reshape(nf, n_levels, y0.shape[1])
    tp = np.flip(np.cumsum(np.flip(cnt, 1), 1, dtype=np.float64), 1)
    return np.take_along_axis(tp, level[:, None, :], 1)[:, 0]


def _full_bins(t: ConceptTable) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per bin ``0 .. Q`` (bin 0 = inactive): arrays ``(F, Q + 1, C)``."""
    neg_b = t.known_bins - t.pos_bins
    pos0 = t.pos[None, :] - t.pos_bins.sum(1)
    neg0 = (t.known - t.pos)[None, :] - neg_b.sum(1)
    return np.concatenate([pos0[:, None], t.pos_bins], 1), np.concatenate([neg0[:, None], neg_b], 1)


def auroc_from_table(t: ConceptTable) -> np.ndarray:
    """AUROC ``(F, C)`` of the activation as a score for the concept (ties within a bin count 1/2)."""
    pos, neg = _full_bins(t)
    below = np.cumsum(neg, 1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (t.pos * (t.known - t.pos))[None, :]


def _xlogx(x: np.ndarray) -> np.ndarray:
    from scipy.special import xlogy

    return xlogy(x, x)


def _mi(joint: np.ndarray) -> np.ndarray:
    """Plug-in mutual information (nats) of joint counts ``(..., A, B)``:
    ``(sum n log n - sum_a n_a log n_a - sum_b n_b log n_b + N log N) / N``."""
    joint = joint.astype(np.float64)
    n = joint.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mi = (_xlogx(joint).sum((-2, -1)) - _xlogx(joint.sum(-1)).sum(-1) - _xlogx(joint.sum(-2)).sum(-1)
              + _xlogx(n)) / n  # fmt: skip
    return np.maximum(mi, 0.0)


def mi_concept(t: ConceptTable) -> np.ndarray:
    """Mutual information (nats) ``(F, C)`` between the binned activation and the concept."""
    pos, neg = _full_bins(t)  # (F, Q+1, C)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    n = n_pos + n_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        mi = (_xlogx(pos).sum(1) + _xlogx(neg).sum(1) - _xlogx(pos + neg).sum(1) - _xlogx(n_pos) - _xlogx(n_neg)
              + _xlogx(n)) / n  # fmt: skip
    return np.maximum(mi, 0.0)


def log_odds(tp: np.ndarray, pred: np.ndarray, pos: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Log odds ratio (Haldane-corrected) of concept given "feature above threshold"."""
    a, b = tp, pred - tp
    c, d = pos - tp, known - pos - b
    return np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))


def correlation(
    mt: sp.csr_matrix, mt2: sp.csr_matrix, v0: np.ndarray, known: np.ndarray | None, w: np.ndarray,
    cache: dict | None = None,
) -> np.ndarray:
    """Weighted Pearson correlation ``(F, V)`` of sparse activations with variables.

    ``mt``/``mt2``: CSR ``(F, token)`` of activations and their squares; ``v0`` (token, V) variables with
    NaN set to 0; ``known`` (token, V) 0/1 or ``None``; ``w`` (token,) weights.  Zero-variance -> NaN.
    ``cache`` (a dict) keeps the feature moments between calls when ``known`` is None (permutations
    move only the variables, so the features' weighted mean and variance stay the same).
    """
    om = w[:, None] if known is None else known * w[:, None]  # (token, 1 or V)
    wt = om.sum(0)
    wv = om * v0
    mv = wv.sum(0) / wt
    vv = np.einsum("ij,ij->j", wv, v0) / wt - mv**2
    if cache is not None and known is None and "ma" in cache:
        ma, va = cache["ma"], cache["va"]
    else:
        ma = np.asarray(mt @ om) / wt
        va = np.asarray(mt2 @ om) / wt - ma**2
        if cache is not None and known is None:
            cache.update(ma=ma, va=va)
    cov = np.asarray(mt @ wv) / wt - ma * mv
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(np.maximum(va, 0) * np.maximum(vv, 0))
    return np.where(np.isfinite(r), np.clip(r, -1, 1), np.nan)


def rank_codes(sc: SortedCodes) -> np.ndarray:
    """Per entry, its average rank among all tokens minus the inactive tokens' mid-rank.

    Inactive tokens tie at rank ``(n0 + 1) / 2``; subtracting it keeps the rank matrix sparse, and
    Pearson correlation of these values equals Spearman correlation of the activations.
    """
    col = column_of(sc)
    v = sc.values
    n = v.size
    if n == 0:
        return np.zeros(0)
    change = np.r_[True, (col[1:] != col[:-1]) | (v[1:] != v[:-1])]
    gid = np.cumsum(change) - 1
    gstart = np.flatnonzero(change)
    gend = np.r_[gstart[1:], n] - 1
    within = (gstart[gid] + gend[gid]) / 2 - sc.indptr[col] + 1
    n0 = sc.n_tokens - np.diff(sc.indptr)[col]
    return n0 + within - (n0 + 1) / 2


def mi_continuous(
    sc: SortedCodes, bins: np.ndarray, n_levels: int, v: np.ndarray, w: np.ndarray, n_vbins: int
) -> np.ndarray:
    """Mutual information (nats) ``(F, V)`` of binned activation and quantile-binned variables (weighted)."""
    col = column_of(sc)
    cell = (col * n_levels + bins.astype(np.int64) - 1) * n_vbins
    out = np.full((sc.n_features, v.shape[1]), np.nan)
    for j in range(v.shape[1]):
        x = v[:, j]
        ok = np.isfinite(x)
        if ok.sum() < 2:
            continue
        edges = np.quantile(x[ok], np.linspace(0, 1, n_vbins + 1)[1:-1])
        vb = np.where(ok, np.searchsorted(edges, np.where(ok, x, 0), side="right"), -1)
        eb = vb[sc.rows]
        e_ok = eb >= 0
        act = np.bincount(cell[e_ok] + eb[e_ok], weights=w[sc.rows][e_ok], minlength=sc.n_features * n_levels * n_vbins)
        act = act.reshape(sc.n_features, n_levels, n_vbins)
        marg = np.bincount(vb[ok], weights=w[ok], minlength=n_vbins)
        inactive = np.maximum(marg[None, :] - act.sum(1), 0)
        out[:, j] = _mi(np.concatenate([inactive[:, None], act], 1))
    return out


def region_recall(
    sc: SortedCodes, bins: np.ndarray, level: np.ndarray, y: np.ndarray, block_order: np.ndarray, block_starts: np.ndarray
) -> np.ndarray:
    """Share of concept regions recalled ``(F, C)``: a region (a run of the concept inside one block)
    counts as recalled when the feature is at/above its level on any of the region's tokens.

    ``level`` (F, C) threshold levels; ``y`` (token, C) labels 0/1 (NaN -> 0); blocks as in
    :class:`~sciinterp.analysis.stats.Blocks` (tokens of a block in order).  Cost per concept is
    proportional to the active entries on the concept's tokens (entries are visited row by row).
    """
    col = column_of(sc)
    n_tok = y.shape[0]
    by_row = np.argsort(sc.rows, kind="stable")
    row_ptr = np.zeros(n_tok + 1, np.int64)
    np.cumsum(np.bincount(sc.rows, minlength=n_tok), out=row_ptr[1:])
    first = np.zeros(n_tok, bool)
    first[block_starts] = True
    out = np.full((sc.n_features, y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        yo = y[block_order, j] > 0
        start = yo & (first | ~np.r_[False, yo[:-1]])
        n_reg = int(start.sum())
        if n_reg == 0:
            continue
        toks = block_order[yo]  # tokens inside regions, and their region ids
        reg = (np.cumsum(start) - 1)[yo]
        cnt = row_ptr[toks + 1] - row_ptr[toks]
        ent = by_row[np.repeat(row_ptr[toks] - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(cnt.sum())]
        ec = col[ent]
        hit = bins[ent] > level[ec, j]
        keys = np.sort(ec[hit] * n_reg + np.repeat(reg, cnt)[hit])  # np.sort + diff: much faster than np.unique
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
        out[:, j] = np.bincount(keys // n_reg, minlength=sc.n_features) / n_reg
    return out
