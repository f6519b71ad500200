"""The discovery queue: frequent, strong features that no known variable explains.

These are the candidates for new science (or for missing labels): a feature that fires often and
strongly but has no significant link is ranked by ``frequency x mean_active`` (its mean activation
over all tokens), with its top examples from :func:`sciinterp.features.feature_summary`.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["discovery_queue"]


def discovery_queue(
    summary: xr.Dataset, link_table: xr.Dataset, *, alpha: float = 0.05, min_frequency: float = 1e-4, n: int = 50
) -> xr.Dataset:
    """Rank features with no link at FDR ``alpha`` (all q-values >= alpha or NaN).

    Parameters
    ----------
    summary
        :func:`~sciinterp.features.feature_summary` output (``frequency``, ``mean_active``, top examples).
    link_table
        :func:`~sciinterp.analysis.link_features` output; several tables can be merged with
        ``xr.concat(..., dim="variable")`` first.
    alpha, min_frequency, n
        FDR level, smallest share of tokens a feature must fire on, queue length.

    Returns
    -------
    ``xr.Dataset`` along ``queue`` (best first): ``feature``, ``priority`` (= frequency x mean_active),
    ``frequency``, ``mean_active``, ``closest_variable`` / ``closest_q`` / ``closest_score`` (the
    variable with the smallest q-value, for context), and along ``(queue, example)`` the summary's
    top examples (``top_value``, ``top_token`` and every token coordinate).
    """
    if summary.sizes["feature"] != link_table.sizes["feature"]:
        raise ValueError(
            f"summary has {summary.sizes['feature']} features, link table {link_table.sizes['feature']}"
        )
    q = link_table["qvalue"].values
    linked = (np.nan_to_num(q, nan=1.0) < alpha).any(axis=1)
    freq = summary["frequency"].values
    mean_active = np.nan_to_num(summary["mean_active"].values)
    priority = freq * mean_active
    ok = ~linked & (freq >= min_frequency)
    order = np.flatnonzero(ok)[np.argsort(-priority[ok], kind="stable")][:n]
    qq = np.nan_to_num(q[order], nan=np.inf)
    best = np.argmin(qq, axis=1) if order.size else np.zeros(0, int)
    var = link_table["variable"].values
    data = {
        "feature": ("queue", order),
        "priority": ("queue", priority[order]),
        "frequency": ("queue", freq[order]),
        "mean_active": ("queue", mean_active[order]),
        "closest_variable": ("queue", var[best].astype(str) if order.size else np.zeros(0, str)),
        "closest_q": ("queue", q[order, best] if order.size else np.zeros(0)),
        "closest_score": ("queue", link_table["score"].values[order, best] if order.size else np.zeros(0)),
    }
    for name, v in summary.data_vars.items():
        if v.dims == ("feature", "rank"):
            data[name] = (("queue", "example"), v.values[order])
    return xr.Dataset(data, coords={"queue": np.arange(order.size)},
                      attrs={"alpha": alpha, "min_frequency": min_frequency, "n_unlinked": int(ok.sum())})
