"""One-line descriptions of features, written from their significant links."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["describe_feature"]


_UNIT_WORD = {"protein": "residues", "time": "grid points"}


def _fmt_q(q: float) -> str:
    return "q < 1e-4" if q < 1e-4 else f"q = {q:.2g}"


def _split_pool(name: str) -> tuple[str, str | None]:
    if name.endswith("]") and "[" in name:
        base, pool = name[:-1].rsplit("[", 1)
        return base, pool
    return name, None


def describe_feature(
    link_table: xr.Dataset, feature: int, *, alpha: float = 0.05, max_links: int = 3, summary: xr.Dataset | None = None
) -> str:
    """A sentence such as ``"fires on alpha helix residues: F1 0.81, precision 0.77, recall 0.86, q < 1e-4"``.

    Variables are named by their ``long_name`` (from the labels' attrs) when the table has one; tokens
    are "residues" when the group is ``protein``, "grid points" when it is ``time``.

    Links with q-value below ``alpha`` are listed, strongest (smallest q, then largest |score|)
    first, at most ``max_links``; the rest are counted.  Without significant links the closest
    variable is named.  With ``summary`` the firing frequency is appended.
    """
    if feature not in link_table["feature"].values:
        raise KeyError(f"feature {feature} is not in the link table (d_sae = {link_table.sizes['feature']})")
    row = link_table.sel(feature=feature)
    q = np.nan_to_num(row["qvalue"].values, nan=1.0)
    score = np.nan_to_num(row["score"].values)
    names = [str(v) for v in row["variable"].values]
    long = [str(v) for v in row["long_name"].values] if "long_name" in row.coords else names
    unit = _UNIT_WORD.get(str(link_table.attrs.get("group", "")), "tokens")
    kinds = [str(k) for k in row["variable_kind"].values]
    order = np.lexsort((-np.abs(score), q))
    sig = [i for i in order if q[i] < alpha]
    parts = []
    for i in sig[:max_links]:
        base, pool = _split_pool(names[i])
        base = long[i] if long[i] != names[i] else base
        r = row.isel(variable=i)
        if kinds[i] == "concept":
            where = f"{base} {unit}"
            lead = f"{pool} activation per item separates {base}" if pool else f"fires on {where}"
            if pool:
                parts.append(f"{lead}: AUROC {float(r.auroc):.2f}, {_fmt_q(q[i])}")
            else:
                parts.append(f"{lead}: F1 {float(r.score):.2f}, precision {float(r.precision):.2f}, "
                             f"recall {float(r.recall):.2f}, {_fmt_q(q[i])}")  # fmt: skip
        else:
            what = f"{pool} activation per item" if pool else "activation"
            direction = "rises" if score[i] > 0 else "falls"
            parts.append(f"{what} {direction} with {base}: r = {float(r.pearson):+.2f}, "
                         f"Spearman {float(r.spearman):+.2f}, {_fmt_q(q[i])}")  # fmt: skip
    if parts:
        text = "; ".join(parts)
        if len(sig) > max_links:
            text += f" (+{len(sig) - max_links} more links)"
    else:
        i = int(order[0])
        text = f"no significant link (closest: {names[i]}, score {score[i]:.2f}, {_fmt_q(float(q[i]))})"
    if summary is not None:
        text += f"; active on {100 * float(summary['frequency'].sel(feature=feature)):.2g}% of tokens"
    return text
