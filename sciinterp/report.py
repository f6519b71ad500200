"""A self-contained static HTML report: an overview, then a card per feature.

Inputs are the analysis stage's outputs: the link table (``feature`` × ``variable``),
the per-feature summary (frequency, top examples), and optionally the feature
store for per-feature pictures (lat/lon composites and lead-time series for
gridded data; residue tracks with secondary structure for proteins).  Images
are embedded as base64 PNGs, so ``index.html`` is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from sciinterp import plot

__all__ = ["build_report", "evaluation_section", "interventions_section", "loss_recovered_of", "strongest_links"]

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} .meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.card{border:1px solid #bbb;border-radius:6px;padding:1em;margin:1.2em 0;box-shadow:0 1px 3px #0001}
.card h3{margin-top:0} .desc{font-size:1.05em} img{max-width:100%}
.unlinked{border-color:#e0a000}
"""


def _img(fig: Any, alt: str) -> str:
    data = base64.b64encode(plot.to_png(fig)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def strongest_links(links: xr.Dataset, n: int = 10, alpha: float = 0.05) -> pd.DataFrame:
    """The ``n`` strongest significant (``qvalue < alpha``) links, by ``|score|``.

    Columns: feature, variable, score, qvalue (and auroc / effect where present).
    """
    cols = [c for c in ("score", "qvalue", "auroc", "effect", "precision", "recall") if c in links]
    df = links[cols].to_dataframe().reset_index()
    df = df[df["qvalue"] < alpha].dropna(subset=["score"])
    df = df.reindex(df["score"].abs().sort_values(ascending=False).index)
    keep = ["feature", "variable", *cols]
    return df[keep].head(n).reset_index(drop=True)


def _describe(links: xr.Dataset, feature: int, alpha: float) -> str:
    from sciinterp.analysis import describe_feature

    return describe_feature(links, feature, alpha=alpha)


def _top_examples_table(summary: xr.Dataset, feature: int, n: int) -> str:
    ranked = [v for v in summary.data_vars if "rank" in summary[v].dims and "feature" in summary[v].dims]
    if not ranked:
        return ""
    df = summary[ranked].sel(feature=feature).to_dataframe()[ranked].head(n)
    df.columns = [c.removeprefix("top_") for c in df.columns]
    return df.to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="top", border=0)


def _feature_pictures(
    features: xr.Dataset | None,
    feature: int,
    sequences: Mapping[str, str] | None,
    secondary: Mapping[str, str] | None,
) -> list[str]:
    if features is None:
        return []
    act = plot.feature_activations(features, feature)
    imgs = [_img(plot.activation_histogram(act.values, title="activations when firing"), "activation histogram")]
    coords = set(act.coords)
    if {"lat", "lon"} <= coords:
        imgs.append(_img(plot.feature_map(act, title=f"feature {feature}: mean activation (composite)"), "map"))
        if "lead" in coords and np.unique(act["lead"].values).size > 1:
            imgs.append(_img(plot.lead_series(act, title="through the forecast"), "lead series"))
    elif {"protein", "position"} <= coords and float(act.max()) > 0:
        protein = str(act["protein"].values[int(np.argmax(act.values))])
        sel = act.where(act["protein"] == protein, drop=True).sortby("position")
        pos = sel["position"].values.astype(int)
        seq = (sequences or {}).get(protein)
        if seq is None and "residue" in sel.coords:
            seq = "".join(map(str, sel["residue"].values))
            start = int(pos[0])
            track = sel.values
        else:
            start = 1
            track = np.zeros(len(seq))
            track[pos - 1] = sel.values
        ss = (secondary or {}).get(protein)
        if ss is not None and len(ss) != len(seq):
            ss = None
        imgs.append(_img(plot.residue_track(track, seq, ss=ss, start=start,
                                            title=f"feature {feature} along {protein}"), "residue track"))
    return imgs


def build_report(
    out_dir: str | os.PathLike,
    links: xr.Dataset,
    summary: xr.Dataset,
    *,
    features: xr.Dataset | None = None,
    discovery: Sequence[int] = (),
    sequences: Mapping[str, str] | None = None,
    secondary: Mapping[str, str] | None = None,
    n_cards: int = 24,
    alpha: float = 0.05,
    title: str = "sciinterp report",
    describe: Callable[[xr.Dataset, int, float], str] | None = None,
    interventions: xr.Dataset | None = None,
    evaluation: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write ``<out_dir>/index.html`` and return its path.

    Parameters
    ----------
    links
        Link table, dims ``(feature, variable)`` with at least ``score`` and ``qvalue``.
    summary
        Per-feature summary along ``feature`` (``frequency`` and top examples along ``rank``).
    features
        Feature store (sparse codes with token coords), for per-feature pictures.
    discovery
        Feature ids of the discovery queue (strong features with no significant link).
    sequences, secondary
        Protein id -> sequence / DSSP string, for residue tracks.
    n_cards
        Cards for the features with the strongest significant links (plus the discovery queue).
    interventions
        Results of :func:`sciinterp.intervene.intervene` (``interventions.nc``), shown in a
        section of their own (:func:`interventions_section`).
    evaluation
        The SAE's ``eval.json`` (``{evaluator: {metric: value}}``, written by the trainer's
        downstream evaluators), shown in the overview (:func:`evaluation_section`).
    """
    describe = describe or _describe
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = strongest_links(links, n=len(links.feature) * len(links.variable), alpha=alpha)
    linked = list(dict.fromkeys(int(f) for f in top["feature"]))[:n_cards]
    queue = [int(f) for f in discovery if int(f) not in linked][: max(4, n_cards // 4)]
    freq = summary["frequency"].values if "frequency" in summary else None

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    meta = {k: v for k, v in links.attrs.items()
            if isinstance(v, (str, int, float)) and k != "config" and len(str(v)) <= 80}
    if meta:
        parts.append("<p class='meta'>" + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>")
    n_sig = int((links["qvalue"] < alpha).sum())
    n_dead = int((freq <= 0).sum()) if freq is not None else 0
    parts.append(
        f"<section id='overview'><h2>Overview</h2><p>{links.sizes['feature']} features × "
        f"{links.sizes['variable']} variables; <b>{n_sig}</b> significant links (q &lt; {alpha}, "
        f"Benjamini–Hochberg); {len(set(top['feature']))} features with at least one; "
        f"{n_dead} dead feature{'s' if n_dead != 1 else ''}.</p>"
    )
    if evaluation:
        parts.append(evaluation_section(evaluation))
    parts.append("<h3>Strongest links</h3>" + top.head(20).to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0))
    if freq is not None:
        parts.append(_img(plot.frequency_histogram(freq), "frequency histogram"))
    if linked:
        parts.append(_img(plot.link_heatmap(links, features=linked), "feature-variable heatmap"))
    parts.append("</section>")

    for feature, cls in [(f, "card") for f in linked] + [(f, "card unlinked") for f in queue]:
        text = describe(links, feature, alpha) if cls == "card" else "no significant link: worth a look"
        freq_txt = f" · fires on {100 * float(freq[feature]):.2g}% of tokens" if freq is not None else ""
        parts.append(f"<section class='{cls}' id='feature-{feature}'><h3>Feature {feature}{freq_txt}</h3>")
        parts.append(f"<p class='desc'>{html.escape(text)}</p>")
        parts.extend(_feature_pictures(features, feature, sequences, secondary))
        parts.append("<h4>Top examples</h4>" + _top_examples_table(summary, feature, 10) + "</section>")
    if interventions is not None:
        parts.append(interventions_section(interventions))
    parts.append("</body></html>")

    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    log.info("report written to %s (%d cards)", path, len(linked) + len(queue))
    return path


def loss_recovered_of(evaluation: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{evaluator: loss_recovered}`` for the evaluators of an ``eval.json`` that report one."""
    return {str(name): float(m["loss_recovered"]) for name, m in evaluation.items()
            if isinstance(m, Mapping) and "loss_recovered" in m}


def evaluation_section(evaluation: Mapping[str, Mapping[str, float]]) -> str:
    """HTML fragment of an SAE's ``eval.json``: the loss recovered in words, then every number per evaluator."""
    parts = ["<h3>The SAE spliced into the model (eval.json)</h3>"]
    for name, value in loss_recovered_of(evaluation).items():
        parts.append(f"<p>Loss recovered ({html.escape(name)}): <b>{value:.3f}</b> — 1: the model's own loss with "
                     "the SAE's reconstruction in place of the activations; 0: as bad as zero-ablating them.</p>")
    table = pd.DataFrame({str(k): pd.Series(v, dtype=float) for k, v in evaluation.items() if isinstance(v, Mapping)})
    if not table.empty:
        parts.append(table.to_html(float_format=lambda v: f"{v:.4g}", border=0, na_rep=""))
    return "\n".join(parts)


def interventions_section(results: xr.Dataset) -> str:
    """HTML fragment of an interventions result (:func:`sciinterp.intervene.intervene`): tables and figures."""
    from sciinterp.intervene import intervention_figures

    domain = results.attrs.get("domain", "")
    parts = [f"<section id='interventions'><h2>Interventions at {html.escape(str(results.attrs.get('hook', '')))}</h2>"]
    scalars = {k[len("faith_"):]: float(v) for k, v in results.data_vars.items() if k.startswith("faith_") and v.ndim == 0}
    if scalars:
        parts.append("<h3>Faithfulness (SAE spliced into the forward pass)</h3>"
                     + pd.Series(scalars, name="value").to_frame().to_html(float_format=lambda v: f"{v:.4g}", border=0))
    if "faith_recovered" in results:
        rec = results["faith_recovered"].to_pandas()
        parts.append("<h3>Forecast loss recovered (1 − MSE(SAE, clean) / MSE(mean-ablated, clean)) by lead (h)</h3>"
                     + rec.to_html(float_format=lambda v: f"{v:.4g}", border=0))
    figs = intervention_figures(results)
    if "faithfulness" in figs:
        parts.append(_img(figs["faithfulness"], "faithfulness"))
    if "edits" in results.attrs:
        where = {"protein": f"protein {results.attrs.get('protein')}, residues {results.attrs.get('residues')}",
                 "weather": f"lat {results.attrs.get('lat')}, lon {results.attrs.get('lon')}, leads {results.attrs.get('edit_leads')}"}
        parts.append(f"<h3>Edit: {html.escape(str(results.attrs['edits']))} at {html.escape(where.get(domain, ''))}</h3>")
        if "edit" in figs:
            parts.append(_img(figs["edit"], "edit effect"))
        keys = [k for k in ("mass_change", "mass_drift", "mass_ratio", "energy_change", "energy_drift", "energy_ratio")
                if k in results]
        if keys:
            table = pd.DataFrame({k: results[k].to_pandas() for k in keys})
            parts.append("<h4>Physical consistency (ratio = change caused by the edit / the clean forecast's own drift;"
                         " ≲ 1 moves weather, ≫ 1 breaks the balance)</h4>"
                         + table.to_html(float_format=lambda v: f"{v:.3g}", border=0))
        if "kl" in results:
            top = results["kl"].to_pandas().sort_values(ascending=False).head(10)
            parts.append("<h4>Residues with the largest KL(clean ‖ edited)</h4>"
                         + top.to_frame("KL (nats)").to_html(float_format=lambda v: f"{v:.3g}", border=0))
    parts.append("</section>")
    return "\n".join(parts)
