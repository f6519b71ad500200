"""Link SAE features to labelled variables: the link table.

``link_features(features, labels)`` splits the groups (proteins, time steps) into a *selection*
and a *held-out* part.  On the selection part each (feature, concept) pair gets its activation
threshold (the level of the best F1); everything reported -- F1, precision, recall, region
recall, AUROC, correlations, mutual information, p-values -- is computed on the held-out part
only, at those thresholds.

p-values come from structured permutations of the held-out labels (:mod:`.stats`): for concepts
the one-sided tail of the true-positive count at the chosen threshold, whose null mean is exact
and whose variance the permutations estimate (negative-binomial / Poisson tail); for continuous
variables the two-sided normal tail of the weighted Pearson correlation with permutation mean and
sd.  Every permutation is one sparse product per feature block, so all pairs are tested.
Benjamini-Hochberg runs over all feature x variable pairs together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from sciinterp.analysis import metrics as M
from sciinterp.analysis.stats import (
    benjamini_hochberg,
    blocks_of,
    count_pvalue,
    normal_pvalue,
    null_mean_labels,
    permutation_index,
    split_groups,
)
from sciinterp.features import SortedCodes, entries_to_codes, sorted_codes, subset_rows

__all__ = ["LINK_VARIABLES", "LinkConfig", "link_features", "split_masks"]

log = logging.getLogger(__name__)

LINK_VARIABLES = (
    "score", "auroc", "threshold", "precision", "recall", "region_recall", "pearson", "spearman", "mi",
    "pvalue", "qvalue", "effect",
)  # fmt: skip


@dataclass
class LinkConfig:
    """How features are linked to variables (see ``docs/analysis.md``)."""

    n_perm: int = 100
    """Structured permutations of the held-out labels for the null (variance estimate)."""
    alpha: float = 0.05
    """FDR level: a link is significant when its Benjamini-Hochberg q-value is below ``alpha``."""
    n_thresholds: int = 16
    """Threshold levels per feature: "active at all" plus the 1/Q .. (Q-1)/Q quantiles of its active values."""
    select_fraction: float = 0.5
    """Share of groups (proteins, time steps) in the selection split; the rest is held out."""
    split: Literal["random", "contiguous"] = "random"
    """``random`` groups, or ``contiguous`` (first part of the sorted groups: time blocks)."""
    null: Literal["shift", "shuffle", "permute"] = "shift"
    """Permutation null for token-level labels: circular shift within groups, shuffle of equal-size groups,
    or free permutation.  Per-item variables always use a free permutation of items."""
    min_active: int = 3
    """Pairs whose feature is active on fewer held-out tokens (items) get p = 1."""
    mi_bins: int = 8
    """Quantile bins of a continuous variable for mutual information."""
    region_recall: bool = True
    """Compute per-region recall of concepts (InterPLM): a region is a run of the concept within a group."""
    feature_block: int = 4096
    """Features processed together (memory ~ active entries of a block x 16 bytes + tables)."""
    pool: list[str] = field(default_factory=lambda: ["max", "mean"])
    """Pooling of a feature over an item's tokens for per-item variables."""
    probe_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    """Numbers of features/neurons in the sparse probes."""
    probe_max_tokens: int = 20000
    """Tokens sampled from each split to fit and score the probes."""
    seed: int = 0
    """Seed of the split, the permutations and the probe samples."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        checks = {
            "n_perm": self.n_perm >= 2, "alpha": 0 < self.alpha < 1, "n_thresholds": 1 <= self.n_thresholds <= 127,
            "select_fraction": 0 < self.select_fraction < 1, "split": self.split in ("random", "contiguous"),
            "null": self.null in ("shift", "shuffle", "permute"), "min_active": self.min_active >= 1,
            "mi_bins": self.mi_bins >= 2, "feature_block": self.feature_block >= 1,
            "pool": bool(self.pool) and set(self.pool) <= {"max", "mean"},
            "probe_ks": bool(self.probe_ks) and min(self.probe_ks) >= 1, "probe_max_tokens": self.probe_max_tokens >= 10,
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"LinkConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


def _variables(labels: xr.Dataset) -> tuple[list[str], list[str]]:
    names, kinds = [], []
    for name, var in labels.data_vars.items():
        kind = var.attrs.get("kind")
        if kind not in ("concept", "continuous"):
            raise ValueError(f"label variable {name!r} has attrs kind={kind!r}; expected 'concept' or 'continuous'")
        names.append(str(name))
        kinds.append(kind)
    if not names:
        raise ValueError("labels hold no variables")
    return names, kinds


def _coord(name: str, *datasets: xr.Dataset) -> np.ndarray:
    for ds in datasets:
        if name in ds.coords or name in ds.data_vars:
            return np.asarray(ds[name].values)
    raise KeyError(f"coordinate {name!r} is in neither the labels nor the features")


def split_masks(groups: np.ndarray, cfg: LinkConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(selection groups, held-out groups, selection token mask, held-out token mask)."""
    sel_g, held_g = split_groups(groups, cfg.select_fraction, method=cfg.split, seed=cfg.seed)
    sel = np.isin(groups, sel_g)
    return sel_g, held_g, sel, ~sel


def _pooled_codes(sc: SortedCodes, unit: np.ndarray, n_units: int, unit_size: np.ndarray, pool: str) -> SortedCodes:
    """Pool a feature over each unit's tokens (``unit`` (token,) in ``0 .. n_units - 1`` or -1)."""
    u = unit[sc.rows]
    col = np.repeat(np.arange(sc.n_features), np.diff(sc.indptr))
    ok = u >= 0
    key = col[ok] * n_units + u[ok]
    if pool == "mean":
        uk, inv = np.unique(key, return_inverse=True)
        val = np.bincount(inv, weights=sc.values[ok]) / unit_size[uk % n_units]
    else:  # values ascend within a feature, so the last entry of a key is its max
        rev = key[::-1]
        uk, first = np.unique(rev, return_index=True)
        val = sc.values[ok][::-1][first]
    return entries_to_codes(uk % n_units, uk // n_units, val, sc.n_features, n_units, f0=sc.f0)


def link_features(features: xr.Dataset, labels: xr.Dataset, config: LinkConfig | None = None, **overrides: Any) -> xr.Dataset:
    """Link every feature to every label variable; see the module docstring and ``docs/analysis.md``.

    Parameters
    ----------
    features
        Feature store dataset (:func:`sciinterp.features.open_features`), ``values``/``indices`` (token, k)
        and attrs ``d_sae``.
    labels
        Token-level labels along ``token`` (same length and order as ``features``) with attrs ``group`` and
        optional ``weight``; or per-item labels along ``item`` (coordinate = values of the ``group``
        coordinate; ``group`` from its attrs or the ``group`` override), linked to pooled activations.
    config, overrides
        :class:`LinkConfig`, or its fields as keywords (``n_perm=200``, ``split="contiguous"``...).

    Returns
    -------
    Link table ``xr.Dataset`` with dims ``(feature, variable)`` holding :data:`LINK_VARIABLES`
    (NaN where a statistic does not apply), coords ``variable_kind`` and ``level`` (``"token"`` or the
    pooling for item variables), attrs naming the groups of each split and the configuration.
    """
    group = overrides.pop("group", None) or labels.attrs.get("group")
    cfg = replace(config or LinkConfig(), **overrides)
    if not group:
        raise ValueError("labels.attrs['group'] is missing: name the coordinate whose values are the items/blocks")
    names, kinds = _variables(labels)
    groups = _coord(group, features)
    sel_g, held_g, sel, held = split_masks(groups, cfg)
    attrs = {
        "group": group, "selection_items": [str(g) for g in sel_g], "heldout_items": [str(g) for g in held_g],
        "config": json.dumps(asdict(cfg)), "d_sae": int(features.attrs["d_sae"]),
        "n_tokens_selection": int(sel.sum()), "n_tokens_heldout": int(held.sum()),
    }  # fmt: skip
    if "item" in labels.dims:
        return _link_items(features, labels, names, kinds, groups, sel_g, cfg, attrs)
    if labels.sizes.get("token") != features.sizes["token"]:
        raise ValueError(f"labels have {labels.sizes.get('token')} tokens, features {features.sizes['token']}")
    if group in labels.coords and not np.array_equal(np.asarray(labels[group].values), groups):
        raise ValueError(f"labels and features disagree on coordinate {group!r}: not the same tokens in the same order")
    wname = labels.attrs.get("weight")
    w = _coord(wname, labels, features).astype(np.float64) if wname else np.ones(groups.size)
    y = np.stack([np.asarray(labels[n].values, np.float32) for n in names], 1)
    table = _link(lambda f0, f1: sorted_codes(features, f0=f0, f1=f1), int(features.attrs["d_sae"]),
                  y, kinds, groups, sel, w, cfg, cfg.null)
    attrs.update(weight=wname or "", null=cfg.null)
    return _to_dataset(table, names, kinds, ["token"] * len(names), attrs)


def _link_items(features, labels, names, kinds, groups, sel_groups, cfg, attrs) -> xr.Dataset:
    items = np.asarray(labels["item"].values)
    idx = {g: i for i, g in enumerate(items.tolist())}
    unit = np.array([idx.get(g, -1) for g in groups.tolist()], np.int64)
    size = np.bincount(unit[unit >= 0], minlength=items.size).astype(float)
    if (size == 0).any():
        missing = items[size == 0][:5]
        raise ValueError(f"item labels name items with no tokens in the features, e.g. {missing.tolist()}")
    y = np.stack([np.asarray(labels[n].values, np.float32) for n in names], 1)
    sel = np.isin(items, sel_groups)
    out = []
    for pool in cfg.pool:
        def codes(f0, f1, pool=pool):
            return _pooled_codes(sorted_codes(features, f0=f0, f1=f1), unit, items.size, size, pool)

        table = _link(codes, int(features.attrs["d_sae"]), y, kinds, items, sel, np.ones(items.size), cfg, "permute")
        out.append(_to_dataset(table, [f"{n}[{pool}]" for n in names], kinds, [pool] * len(names), attrs))
    res = xr.concat(out, dim="variable")
    res["qvalue"] = (("feature", "variable"), benjamini_hochberg(res["pvalue"].values))
    res.attrs.update(null="permute", n_items_selection=int(sel.sum()), n_items_heldout=int((~sel).sum()))
    return res


def _to_dataset(table: dict[str, np.ndarray], names, kinds, level, attrs) -> xr.Dataset:
    table["qvalue"] = benjamini_hochberg(table["pvalue"])
    return xr.Dataset(
        {k: (("feature", "variable"), table[k]) for k in LINK_VARIABLES},
        coords={"feature": np.arange(table["score"].shape[0]), "variable": list(names),
                "variable_kind": ("variable", list(kinds)), "level": ("variable", list(level))},
        attrs=dict(attrs),
    )


def _link(codes, d_sae, y, kinds, groups, sel, w, cfg, null) -> dict[str, np.ndarray]:
    """All statistics ``(d_sae, V)``; ``codes(f0, f1)`` gives the :class:`SortedCodes` of a feature block."""
    kinds = np.asarray(kinds)
    ic, iv = np.flatnonzero(kinds == "concept"), np.flatnonzero(kinds == "continuous")
    held = ~sel
    yc_s, yc_h, v_h = y[sel][:, ic], y[held][:, ic], y[held][:, iv].astype(np.float64)
    known_s = None if np.isfinite(yc_s).all() else np.isfinite(yc_s).astype(np.float32)
    known_h = None if np.isfinite(yc_h).all() else np.isfinite(yc_h).astype(np.float32)
    yc_s, yc_h = np.nan_to_num(yc_s), np.nan_to_num(yc_h)
    w_h = w[held]
    blocks = blocks_of(groups[held])
    ybar = null_mean_labels(yc_h, blocks, null).astype(np.float32) if ic.size else None
    vknown = None if np.isfinite(v_h).all() else np.isfinite(v_h).astype(np.float64)
    v0 = np.nan_to_num(v_h)
    if iv.size:
        from scipy.stats import rankdata

        vrank = np.nan_to_num(rankdata(v_h, axis=0, nan_policy="omit"))
    out = {k: np.full((d_sae, y.shape[1]), np.nan) for k in LINK_VARIABLES}
    Q = cfg.n_thresholds
    bar = tqdm(total=d_sae, desc="link", unit="feat", disable=not cfg.progress)
    for f0 in range(0, d_sae, cfg.feature_block):
        f1 = min(f0 + cfg.feature_block, d_sae)
        sc = codes(f0, f1)
        sc_s, sc_h = subset_rows(sc, sel), subset_rows(sc, held)
        del sc
        edges = M.quantile_edges(sc_s, Q)
        bins_h = M.bin_entries(sc_h, edges)
        n_act = np.diff(sc_h.indptr)[:, None]
        rows = slice(f0, f1)
        if ic.size:
            t_s = M.concept_table(M.bin_matrix(sc_s, M.bin_entries(sc_s, edges), Q), yc_s, known_s, Q)
            level = np.argmax(t_s.f1(), axis=1)  # (F, C)
            del t_s
            mb = M.bin_matrix(sc_h, bins_h, Q)
            t_h = M.concept_table(mb, yc_h, known_h, Q)
            tp, pred = t_h.at(level)
            thr = np.where(level == 0, 0.0, np.take_along_axis(np.c_[np.zeros(f1 - f0), edges], level, 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                prec, rec = tp / pred, tp / t_h.pos[None, :]
                f1s = 2 * tp / (pred + t_h.pos[None, :])
            mu = M.tp_at(mb, ybar, level, Q)
            ss = np.zeros_like(mu)
            for p in range(cfg.n_perm):
                src = permutation_index(blocks, null, np.random.default_rng([cfg.seed, 1, p]))
                ss += (M.tp_at(mb, yc_h[src], level, Q) - mu) ** 2
            pval = count_pvalue(tp, mu, ss / cfg.n_perm)
            for name, val in [("score", f1s), ("precision", prec), ("recall", rec), ("threshold", thr),
                              ("auroc", M.auroc_from_table(t_h)), ("mi", M.mi_concept(t_h)),
                              ("effect", M.log_odds(tp, pred, t_h.pos[None, :], t_h.known[None, :])),
                              ("pvalue", np.where(n_act >= cfg.min_active, pval, 1.0))]:  # fmt: skip
                out[name][rows, ic] = val
            if cfg.region_recall:
                out["region_recall"][rows, ic] = M.region_recall(sc_h, bins_h, level, yc_h, blocks.order, blocks.starts)
            del mb, t_h
        if iv.size:
            mt, mt2 = M.value_matrix(sc_h), M.value_matrix(sc_h, sc_h.values.astype(np.float64) ** 2)
            r = M.correlation(mt, mt2, v0, vknown, w_h)
            s1, s2 = np.zeros_like(r), np.zeros_like(r)
            for p in range(cfg.n_perm):
                src = permutation_index(blocks, null, np.random.default_rng([cfg.seed, 1, p]))
                rp = np.nan_to_num(M.correlation(mt, mt2, v0[src], None if vknown is None else vknown[src], w_h))
                s1, s2 = s1 + rp, s2 + rp**2
            mean = s1 / cfg.n_perm
            sd = np.sqrt(np.maximum(s2 / cfg.n_perm - mean**2, 0) * cfg.n_perm / (cfg.n_perm - 1))
            rk = M.rank_codes(sc_h)
            rs = M.correlation(M.value_matrix(sc_h, rk), M.value_matrix(sc_h, rk**2), vrank, vknown, w_h)
            pval = np.where((n_act >= cfg.min_active) & np.isfinite(r), normal_pvalue(r, mean, sd, cfg.n_perm), 1.0)
            for name, val in [("score", r), ("pearson", r), ("effect", r), ("spearman", rs), ("pvalue", pval),
                              ("mi", M.mi_continuous(sc_h, bins_h, Q, v_h, w_h, cfg.mi_bins))]:  # fmt: skip
                out[name][rows, iv] = val
        bar.update(f1 - f0)
    bar.close()
    return out
