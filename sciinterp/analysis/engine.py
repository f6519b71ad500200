"""The linking engine: all feature x variable statistics from sparse codes, block by block.

Pass 1 (every feature block): selection-split thresholds, held-out metrics, the exact null mean
of each concept's true-positive count, and the permutation null of continuous variables.
A concept pair's p-value with the Poisson variance floor is a lower bound of its final p-value,
which bounds how many pairs Benjamini-Hochberg can ever reject (see :func:`_candidates`).
Pass 2 re-reads only the feature blocks holding pairs that could still be rejected and estimates
their null variance from ``n_perm`` structured permutations (one sparse product each).
The discoveries equal those of estimating the variance for every pair.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from sciinterp.analysis import metrics as M
from sciinterp.analysis.stats import (
    Blocks,
    blocks_of,
    count_pvalue,
    normal_pvalue,
    null_mean_labels,
    permutation_index,
)
from sciinterp.features import SortedCodes, column_of, subset_rows

__all__ = ["LINK_VARIABLES", "link_codes", "select_columns"]

log = logging.getLogger(__name__)

LINK_VARIABLES = (
    "score", "auroc", "threshold", "precision", "recall", "region_recall", "pearson", "spearman", "mi",
    "pvalue", "qvalue", "effect", "null_mean", "null_sd",
)  # fmt: skip


def select_columns(sc: SortedCodes, cols: np.ndarray) -> SortedCodes:
    """The features ``cols`` (relative indices, ascending) of ``sc`` as a smaller :class:`SortedCodes`."""
    cnt = np.diff(sc.indptr)[cols]
    take = np.repeat(sc.indptr[cols] - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(cnt.sum())
    indptr = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    return SortedCodes(indptr, sc.rows[take], sc.values[take], sc.f0, cols.size, sc.n_tokens)


def _candidates(p_lower: np.ndarray, alpha: float) -> float:
    """Largest p-value Benjamini-Hochberg at ``alpha`` could reject, given lower bounds of all p-values.

    With ``R`` pairs whose lower bound is <= ``alpha * R / m``, BH rejects at most ``R`` pairs, each
    with p <= ``alpha * R / m``; iterating from ``R = #(p_lower <= alpha)`` shrinks the bound.
    """
    m = p_lower.size
    r = int((p_lower <= alpha).sum())
    while True:
        r_new = int((p_lower <= alpha * r / m).sum())
        if r_new >= r:
            return alpha * r / m
        r = r_new


class _Labels:
    """Label matrices of one linking run, split into selection / held-out and concept / continuous."""

    def __init__(self, y: np.ndarray, kinds: np.ndarray, groups: np.ndarray, sel: np.ndarray, w: np.ndarray, null):
        self.ic, self.iv = np.flatnonzero(kinds == "concept"), np.flatnonzero(kinds == "continuous")
        held = ~sel
        yc_s, yc_h = y[sel][:, self.ic], y[held][:, self.ic]
        self.known_s = None if np.isfinite(yc_s).all() else np.isfinite(yc_s).astype(np.float32)
        self.known_h = None if np.isfinite(yc_h).all() else np.isfinite(yc_h).astype(np.float32)
        self.yc_s, self.yc_h = np.nan_to_num(yc_s), np.nan_to_num(yc_h)
        self.v_h = y[held][:, self.iv].astype(np.float64)
        self.vknown = None if np.isfinite(self.v_h).all() else np.isfinite(self.v_h).astype(np.float64)
        self.v0 = np.nan_to_num(self.v_h)
        self.w_h = w[held]
        self.blocks: Blocks = blocks_of(groups[held])
        self.null = null
        self.ybar = null_mean_labels(self.yc_h, self.blocks, null).astype(np.float32) if self.ic.size else None
        if self.iv.size:
            from scipy.stats import rankdata

            self.vrank = np.nan_to_num(rankdata(self.v_h, axis=0, nan_policy="omit"))

    def perm(self, seed: int, p: int) -> np.ndarray:
        return permutation_index(self.blocks, self.null, np.random.default_rng([seed, 1, p]))


def link_codes(
    codes: Callable[[int, int], SortedCodes],
    d_sae: int,
    y: np.ndarray,
    kinds: list[str],
    groups: np.ndarray,
    sel: np.ndarray,
    w: np.ndarray,
    cfg: Any,
    null: str,
) -> dict[str, np.ndarray]:
    """All statistics as arrays ``(d_sae, V)`` keyed by :data:`LINK_VARIABLES` (``qvalue`` left NaN).

    ``codes(f0, f1)`` returns the :class:`SortedCodes` of features ``[f0, f1)`` over all units;
    ``y`` (unit, V) labels; ``groups`` (unit,) block of each unit; ``sel`` (unit,) selection mask;
    ``w`` (unit,) weights for continuous statistics; ``cfg`` a :class:`~sciinterp.analysis.LinkConfig`.
    """
    lab = _Labels(y, np.asarray(kinds), groups, sel, w, null)
    out = {k: np.full((d_sae, y.shape[1]), np.nan) for k in LINK_VARIABLES}
    Q = cfg.n_thresholds
    edges = np.zeros((d_sae, Q - 1), np.float32)
    level = np.zeros((d_sae, lab.ic.size), np.int64)
    tp = np.zeros((d_sae, lab.ic.size))
    bar = tqdm(total=d_sae, desc="link", unit="feat", disable=not cfg.progress)
    for f0 in range(0, d_sae, cfg.feature_block):
        f1 = min(f0 + cfg.feature_block, d_sae)
        sc = codes(f0, f1)
        sc_s, sc_h = subset_rows(sc, sel), subset_rows(sc, ~sel)
        del sc
        edges[f0:f1] = M.quantile_edges(sc_s, Q)
        bins_h = M.bin_entries(sc_h, edges[f0:f1])
        n_act = np.diff(sc_h.indptr)[:, None]
        if lab.ic.size:
            t_s = M.concept_table(M.bin_matrix(sc_s, M.bin_entries(sc_s, edges[f0:f1]), Q), lab.yc_s, lab.known_s, Q)
            level[f0:f1] = np.argmax(t_s.f1(), axis=1)
            _concepts_pass1(out, f0, f1, sc_h, bins_h, edges[f0:f1], level[f0:f1], tp, n_act, lab, cfg)
        if lab.iv.size:
            _continuous(out, f0, f1, sc_h, bins_h, n_act, lab, cfg)
        bar.update(f1 - f0)
    bar.close()
    if lab.ic.size:
        _concepts_pass2(out, codes, d_sae, sel, edges, level, tp, lab, cfg)
    return out


def _concepts_pass1(out, f0, f1, sc_h, bins_h, edges, level, tp_all, n_act, lab, cfg) -> None:
    Q, ic, rows = cfg.n_thresholds, lab.ic, slice(f0, f1)
    mb = M.bin_matrix(sc_h, bins_h, Q)
    t_h = M.concept_table(mb, lab.yc_h, lab.known_h, Q)
    tp, pred = t_h.at(level)
    tp_all[rows] = tp
    thr = np.where(level == 0, 0.0, np.take_along_axis(np.c_[np.zeros(f1 - f0), edges], level, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        prec, rec = tp / pred, tp / t_h.pos[None, :]
        f1s = 2 * tp / (pred + t_h.pos[None, :])
    mu = M.tp_at(mb, lab.ybar, level, Q)
    p_floor = np.where(n_act >= cfg.min_active, count_pvalue(tp, mu, mu), 1.0)  # Poisson variance floor
    for name, val in [("score", f1s), ("precision", prec), ("recall", rec), ("threshold", thr),
                      ("auroc", M.auroc_from_table(t_h)), ("mi", M.mi_concept(t_h)),
                      ("effect", M.log_odds(tp, pred, t_h.pos[None, :], t_h.known[None, :])),
                      ("pvalue", p_floor), ("null_mean", mu), ("null_sd", np.sqrt(mu))]:  # fmt: skip
        out[name][rows, ic] = val
    if cfg.region_recall:
        out["region_recall"][rows, ic] = M.region_recall(sc_h, bins_h, level, lab.yc_h, lab.blocks.order, lab.blocks.starts)


def _concepts_pass2(out, codes, d_sae, sel, edges, level, tp, lab, cfg) -> None:
    """Permutation variance for the concept pairs of every feature that holds a possible discovery."""
    Q, ic = cfg.n_thresholds, lab.ic
    bound = _candidates(np.nan_to_num(out["pvalue"], nan=1.0), cfg.alpha)
    p_c = out["pvalue"][:, ic]
    feats = np.flatnonzero((p_c <= bound).any(axis=1))
    log.info("null variance for %d of %d features (p-value bound %.3g)", feats.size, d_sae, bound)
    bar = tqdm(total=feats.size, desc="null", unit="feat", disable=not cfg.progress)
    for f0 in range(0, d_sae, cfg.feature_block):
        f1 = min(f0 + cfg.feature_block, d_sae)
        cols = feats[(feats >= f0) & (feats < f1)]
        if cols.size == 0:
            continue
        sc_h = subset_rows(select_columns(codes(f0, f1), cols - f0), ~sel)
        mb = M.bin_matrix(sc_h, M.bin_entries(sc_h, edges[cols]), Q)
        lv = level[cols]
        mu = M.tp_at(mb, lab.ybar, lv, Q)
        ss = np.zeros_like(mu)
        for p in range(cfg.n_perm):
            ss += (M.tp_at(mb, lab.yc_h[lab.perm(cfg.seed, p)], lv, Q) - mu) ** 2
        var = np.maximum(ss / cfg.n_perm, mu)
        n_act = np.diff(sc_h.indptr)[:, None]
        p = np.where(n_act >= cfg.min_active, count_pvalue(tp[cols], mu, var), 1.0)
        out["pvalue"][np.ix_(cols, ic)] = p
        out["null_sd"][np.ix_(cols, ic)] = np.sqrt(var)
        bar.update(cols.size)
    bar.close()


def _continuous(out, f0, f1, sc_h, bins_h, n_act, lab, cfg) -> None:
    iv, rows = lab.iv, slice(f0, f1)
    a = sc_h.values.astype(np.float64)  # float64 data: scipy would upcast a float32 matrix on every product
    mt, mt2 = M.value_matrix(sc_h, a), M.value_matrix(sc_h, a**2)
    cache: dict = {}
    r = M.correlation(mt, mt2, lab.v0, lab.vknown, lab.w_h, cache)
    s1, s2 = np.zeros_like(r), np.zeros_like(r)
    for p in range(cfg.n_perm):
        src = lab.perm(cfg.seed, p)
        kp = None if lab.vknown is None else lab.vknown[src]
        rp = np.nan_to_num(M.correlation(mt, mt2, lab.v0[src], kp, lab.w_h, cache))
        s1, s2 = s1 + rp, s2 + rp**2
    mean = s1 / cfg.n_perm
    sd = np.sqrt(np.maximum(s2 / cfg.n_perm - mean**2, 0) * cfg.n_perm / (cfg.n_perm - 1))
    rk = M.rank_codes(sc_h).astype(np.float64)
    rs = M.correlation(M.value_matrix(sc_h, rk), M.value_matrix(sc_h, rk**2), lab.vrank, lab.vknown, lab.w_h)
    pval = np.where((n_act >= cfg.min_active) & np.isfinite(r), normal_pvalue(r, mean, sd, cfg.n_perm), 1.0)
    for name, val in [("score", r), ("pearson", r), ("effect", r), ("spearman", rs), ("pvalue", pval),
                      ("null_mean", mean), ("null_sd", sd),
                      ("mi", M.mi_continuous(sc_h, bins_h, cfg.n_thresholds, lab.v_h, lab.w_h, cfg.mi_bins))]:  # fmt: skip
        out[name][rows, iv] = val
