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

from sciinterp.analysis.engine import LINK_VARIABLES, link_codes
from sciinterp.analysis.stats import benjamini_hochberg, split_groups
from sciinterp.features import SortedCodes, entries_to_codes, sorted_codes

__all__ = ["LINK_VARIABLES", "LinkConfig", "link_features", "split_masks"]

log = logging.getLogger(__name__)


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
    null_method: Literal["shift", "shuffle", "permute"] = "shift"
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
        self.pool, self.probe_ks = [str(p) for p in self.pool], [int(k) for k in self.probe_ks]  # Hydra lists
        checks = {
            "n_perm": self.n_perm >= 2, "alpha": 0 < self.alpha < 1, "n_thresholds": 1 <= self.n_thresholds <= 127,
            "select_fraction": 0 < self.select_fraction < 1, "split": self.split in ("random", "contiguous"),
            "null_method": self.null_method in ("shift", "shuffle", "permute"), "min_active": self.min_active >= 1,
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
            arr = np.asarray(ds[name].values)
            return arr.astype(object).astype(str) if arr.dtype.kind in "TO" else arr
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
    if key.size == 0:
        return entries_to_codes(key, key, np.zeros(0, np.float32), sc.n_features, n_units, f0=sc.f0)
    order = np.argsort(key, kind="stable")  # stable: within a key, values stay ascending
    ks = key[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    uk = ks[start]
    if pool == "mean":
        val = np.add.reduceat(sc.values[ok][order].astype(np.float64), start) / unit_size[uk % n_units]
    else:  # values ascend within a feature, so the last entry of a key is its max
        val = sc.values[ok][order][np.r_[start[1:], ks.size] - 1]
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
    (NaN where a statistic does not apply), coords ``variable_kind``, ``level`` (``"token"`` or the
    pooling for item variables) and ``long_name`` (the label's ``long_name`` attr, else its name),
    attrs naming the groups of each split and the configuration.
    """
    group = overrides.pop("group", None) or labels.attrs.get("group")
    cfg = replace(config or LinkConfig(), **overrides)
    if not group:
        raise ValueError("labels.attrs['group'] is missing: name the coordinate whose values are the items/blocks")
    names, kinds = _variables(labels)
    groups = _coord(group, features, labels)
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
    if group in labels.coords and not np.array_equal(_coord(group, labels), groups):
        raise ValueError(f"labels and features disagree on coordinate {group!r}: not the same tokens in the same order")
    wname = labels.attrs.get("weight")
    w = _coord(wname, labels, features).astype(np.float64) if wname else np.ones(groups.size)
    y = np.stack([np.asarray(labels[n].values, np.float32) for n in names], 1)
    table = link_codes(lambda f0, f1: sorted_codes(features, f0=f0, f1=f1), int(features.attrs["d_sae"]),
                  y, kinds, groups, sel, w, cfg, cfg.null_method)
    attrs.update(weight=wname or "", null=cfg.null_method)
    return _to_dataset(table, names, kinds, ["token"] * len(names), attrs, _long_names(labels, names))


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

        table = link_codes(codes, int(features.attrs["d_sae"]), y, kinds, items, sel, np.ones(items.size), cfg, "permute")
        out.append(_to_dataset(table, [f"{n}[{pool}]" for n in names], kinds, [pool] * len(names), attrs,
                               _long_names(labels, names)))  # fmt: skip
    res = xr.concat(out, dim="variable")
    res["qvalue"] = (("feature", "variable"), benjamini_hochberg(res["pvalue"].values))
    res.attrs.update(null="permute", n_items_selection=int(sel.sum()), n_items_heldout=int((~sel).sum()))
    return res


def _long_names(labels: xr.Dataset, names: list[str]) -> list[str]:
    return [str(labels[n].attrs.get("long_name", n)) for n in names]


def _to_dataset(table: dict[str, np.ndarray], names, kinds, level, attrs, long_names) -> xr.Dataset:
    table["qvalue"] = benjamini_hochberg(table["pvalue"])
    return xr.Dataset(
        {k: (("feature", "variable"), table[k]) for k in LINK_VARIABLES},
        coords={"feature": np.arange(table["score"].shape[0]), "variable": list(names),
                "variable_kind": ("variable", list(kinds)), "level": ("variable", list(level)),
                "long_name": ("variable", list(long_names))},
        attrs=dict(attrs),
    )
