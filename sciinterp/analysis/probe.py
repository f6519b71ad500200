"""k-sparse probes: SAE features against raw neurons for every concept (the polysemanticity gap).

For each concept and each ``k``, the ``k`` columns with the largest univariate score
(|standardised mean difference| between concept and non-concept tokens) on the *selection* split
are fed to a scikit-learn logistic regression fit on the selection split and scored on the
*held-out* split (F1 at probability 0.5 with balanced class weights, and AUROC).  The same is done
with the neurons of the activation store.  If SAE features are monosemantic, a 1-sparse probe on
features is about as good as a k-sparse probe; neurons need more ``k`` for the same score.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr

from sciinterp.analysis.link import LinkConfig, split_masks, _coord

__all__ = ["sparse_probe"]

log = logging.getLogger(__name__)


def _sample(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return np.sort(rng.choice(idx, min(n, idx.size), replace=False)) if idx.size else idx


def _code_rows(features: xr.Dataset, rows: np.ndarray) -> sp.csr_matrix:
    """Dense-free ``(len(rows), d_sae)`` CSR of the codes at ``rows`` (sorted)."""
    vals = np.asarray(features["values"].isel(token=rows).values, np.float32)
    idx = np.asarray(features["indices"].isel(token=rows).values, np.int64)
    ok = (idx >= 0) & (vals > 0)
    r = np.nonzero(ok)[0]
    return sp.csr_matrix((vals[ok], (r, idx[ok])), shape=(rows.size, int(features.attrs["d_sae"])))


def _scores(x, y: np.ndarray) -> np.ndarray:
    """|mean(x | y=1) - mean(x | y=0)| / sd(x) per column (sparse or dense ``x``)."""
    n1, n0 = y.sum(), (1 - y).sum()
    s1 = np.asarray(x.T @ y).ravel()
    tot = np.asarray(x.sum(axis=0)).ravel()
    sq = np.asarray((x.multiply(x) if sp.issparse(x) else x * x).sum(axis=0)).ravel()
    n = y.size
    sd = np.sqrt(np.maximum(sq / n - (tot / n) ** 2, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(s1 / n1 - (tot - s1) / n0) / sd
    return np.nan_to_num(d, nan=0.0)


def _fit_score(xs, ys, xh, yh) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(ys)) < 2 or len(np.unique(yh)) < 2:
        return np.nan, np.nan
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(class_weight="balanced", max_iter=2000).fit(scaler.transform(xs), ys)
    z = scaler.transform(xh)
    return float(f1_score(yh, clf.predict(z))), float(roc_auc_score(yh, clf.decision_function(z)))


def sparse_probe(
    features: xr.Dataset,
    labels: xr.Dataset,
    store: xr.Dataset | None = None,
    hook: str | None = None,
    config: LinkConfig | None = None,
    **overrides: Any,
) -> xr.Dataset:
    """Held-out F1 and AUROC of k-sparse logistic probes on SAE features and on neurons.

    Parameters
    ----------
    features, labels
        As for :func:`~sciinterp.analysis.link_features` (token-level labels; only ``concept`` variables
        are probed).  The split is the same as the link table's for the same config.
    store, hook
        The activation store (``open_store``) and hook the SAE was trained on; without them only the
        SAE basis is probed (neuron scores are NaN).
    config, overrides
        :class:`~sciinterp.analysis.LinkConfig` (``probe_ks``, ``probe_max_tokens``, ``seed``, split).

    Returns
    -------
    ``xr.Dataset`` with ``f1``/``auroc`` (variable, k, basis) for basis ``["sae", "neuron"]``,
    ``gap_f1``/``gap_auroc`` (variable, k) = sae - neuron, and the chosen columns ``sae_columns`` /
    ``neuron_columns`` (variable, rank) in order of their univariate score.
    """
    group = overrides.pop("group", None) or labels.attrs.get("group")
    cfg = replace(config or LinkConfig(), **overrides)
    if not group:
        raise ValueError("labels.attrs['group'] is missing: name the coordinate whose values are the items/blocks")
    concepts = [str(n) for n, v in labels.data_vars.items() if v.attrs.get("kind") == "concept"]
    if not concepts:
        raise ValueError("labels hold no concept variables to probe")
    n_tok = features.sizes["token"]
    if labels.sizes.get("token") != n_tok:
        raise ValueError(f"labels have {labels.sizes.get('token')} tokens, features {n_tok}")
    if store is not None:
        if hook not in store.data_vars:
            raise KeyError(f"hook {hook!r} is not in the activation store; it holds {sorted(store.data_vars)}")
        if store.sizes["token"] != n_tok:
            raise ValueError(f"activation store has {store.sizes['token']} tokens, features {n_tok}")
    groups = _coord(group, features)
    _, _, sel, held = split_masks(groups, cfg)
    rng = np.random.default_rng([cfg.seed, 7])
    rows_s, rows_h = _sample(sel, cfg.probe_max_tokens, rng), _sample(held, cfg.probe_max_tokens, rng)
    xs, xh = _code_rows(features, rows_s), _code_rows(features, rows_h)
    ns = nh = None
    if store is not None:
        ns = np.asarray(store[hook].isel(token=rows_s).values, np.float32)
        nh = np.asarray(store[hook].isel(token=rows_h).values, np.float32)
    ks = sorted(set(cfg.probe_ks))
    kmax = max(ks)
    f1 = np.full((len(concepts), len(ks), 2), np.nan)
    auc = np.full_like(f1, np.nan)
    cols = {b: np.full((len(concepts), kmax), -1, np.int64) for b in ("sae", "neuron")}
    for i, name in enumerate(concepts):
        y = np.asarray(labels[name].values, np.float64)
        ys, yh = y[rows_s], y[rows_h]
        ks_ok, kh_ok = np.isfinite(ys), np.isfinite(yh)
        for b, (a_s, a_h) in enumerate([(xs, xh), (ns, nh)]):
            if a_s is None:
                continue
            order = np.argsort(-_scores(a_s[ks_ok], ys[ks_ok]), kind="stable")[:kmax]
            cols[("sae", "neuron")[b]][i, : order.size] = order
            for j, k in enumerate(ks):
                c = order[:k]
                d_s, d_h = a_s[ks_ok][:, c], a_h[kh_ok][:, c]
                if sp.issparse(d_s):
                    d_s, d_h = d_s.toarray(), d_h.toarray()
                f1[i, j, b], auc[i, j, b] = _fit_score(d_s, ys[ks_ok], d_h, yh[kh_ok])
    ds = xr.Dataset(
        {
            "f1": (("variable", "k", "basis"), f1),
            "auroc": (("variable", "k", "basis"), auc),
            "gap_f1": (("variable", "k"), f1[..., 0] - f1[..., 1]),
            "gap_auroc": (("variable", "k"), auc[..., 0] - auc[..., 1]),
            "sae_columns": (("variable", "rank"), cols["sae"]),
            "neuron_columns": (("variable", "rank"), cols["neuron"]),
        },
        coords={"variable": concepts, "k": ks, "basis": ["sae", "neuron"], "rank": np.arange(kmax)},
        attrs={"group": group, "hook": hook or "", "n_train": int(rows_s.size), "n_test": int(rows_h.size)},
    )
    return ds
