"""The ``intervene`` stage: splice an SAE into a model, measure faithfulness, edit features.

:func:`intervene` loads the SAE, checks the request against the adapter, and hands the work
to the adapter's domain module (``run_interventions(adapter, sae, data, cfg, mean)``):

=================  ===============================================
adapter ``name``   module
=================  ===============================================
``esm2``           :mod:`sciinterp_adapters.protein.interventions`
``sfno``, ``fcn2`` :mod:`sciinterp_adapters.weather.interventions`
=================  ===============================================

Any other adapter may offer the same through a method ``run_interventions(sae, data, cfg, mean)``
(:class:`Intervenable`).  Results: ``<out_dir>/interventions.nc`` (one ``xr.Dataset``),
``summary.json`` (scalars) and PNG figures.

:func:`loss_recovered_eval` builds the same modules' trainer evaluator (masked-LM / forecast loss
recovered, a :class:`~sciinterp.sae.DownstreamEval`) for ``train(..., evaluators=...)``; an adapter
outside :data:`DOMAINS` offers one through a method ``loss_recovered_eval(hook, data, max_items=...)``.

>>> cfg = InterveneConfig(hook="layer4", features=[12], op="scale", value=4.0, residues=(30, 45))  # doctest: +SKIP
>>> intervene(ESM2Adapter(model="demo"), "runs/x/train/topk", "proteins.fasta", cfg, "runs/x/intervene")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import xarray as xr

__all__ = [
    "DOMAINS", "InterveneConfig", "Intervenable", "intervene", "intervention_figures", "loss_recovered_eval", "store_mean",
]

log = logging.getLogger(__name__)

DOMAINS = {
    "esm2": "sciinterp_adapters.protein.interventions",
    "sfno": "sciinterp_adapters.weather.interventions",
    "fcn2": "sciinterp_adapters.weather.interventions",
}
"""Adapter name -> module with ``run_interventions(adapter, sae, data, cfg, mean)`` and
``loss_recovered_eval(adapter, hook, data, max_items=...)``."""


@dataclass
class InterveneConfig:
    """What to splice, measure and edit."""

    hook: str
    """Hook the SAE was trained on (``"layer4"``, ``"block3"``)."""
    features: list[int] = field(default_factory=list)
    """SAE features to edit; empty: faithfulness only."""
    op: Literal["zero", "clamp", "scale"] = "zero"
    """Edit: ablate (``zero``), set to ``value`` (``clamp``) or multiply by ``value`` (``scale``)."""
    value: float = 0.0
    """Clamp value or scale factor α."""
    keep_error: bool = True
    """Keep the SAE's reconstruction error at edited tokens, so only the edit changes the model."""
    faithfulness: bool = True
    """Measure CE/KL (protein) or forecast RMSE (weather) with the SAE spliced in, vs ablations."""
    protein: str | None = None
    """Protein id to edit (default: the first)."""
    residues: list[int] | None = None
    """``[start, stop]``, 1-based inclusive residue range to edit (default: the whole protein)."""
    lat: list[float] | None = None
    """``[south, north]`` degrees of the box to edit (default: all latitudes)."""
    lon: list[float] | None = None
    """``[west, east]`` degrees east; ``west > east`` wraps through 0° (default: all longitudes)."""
    level: float | None = None
    """Pressure level (hPa) for hooks with levels."""
    lead: int | None = None
    """Lead (hours) whose producing step is edited (default: every step)."""
    n_steps: int = 4
    """Rollout steps (weather)."""
    max_items: int | None = 16
    """Proteins / initial times used for faithfulness (``None``: all)."""
    mask_frac: float = 0.15
    """Fraction of residues masked per protein for the masked-LM loss."""
    per_position: bool = False
    """Mask each residue in turn instead (exact pseudo-likelihood; small sets only)."""
    seed: int = 0
    """Seed of the masked positions."""
    store: str | None = None
    """Activation store whose mean at ``hook`` is the mean-ablation baseline (default: from the data)."""
    device: str | None = None
    """Device of the SAE (default: the device of the adapter's model)."""

    def __post_init__(self) -> None:
        if self.op not in ("zero", "clamp", "scale"):
            raise ValueError(f"InterveneConfig.op={self.op!r}: use 'zero', 'clamp' or 'scale'")
        self.features = [int(f) for f in self.features]
        if any(f < 0 for f in self.features):
            raise ValueError(f"InterveneConfig.features={self.features}: feature indices are >= 0")
        for name in ("residues", "lat", "lon"):  # plain lists (Hydra passes ListConfig)
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v := [int(x) if name == "residues" else float(x) for x in v])
                if len(v) != 2:
                    raise ValueError(f"InterveneConfig.{name}={v}: give two values [start, stop]")
        if self.residues is not None and not 1 <= self.residues[0] <= self.residues[1]:
            raise ValueError(f"InterveneConfig.residues={list(self.residues)}: need 1 <= start <= stop (1-based)")
        if self.n_steps < 1:
            raise ValueError(f"InterveneConfig.n_steps={self.n_steps} must be >= 1")
        if not 0 < self.mask_frac <= 1:
            raise ValueError(f"InterveneConfig.mask_frac={self.mask_frac} must be in (0, 1]")


@runtime_checkable
class Intervenable(Protocol):
    """An adapter that runs its own interventions (for domains without a module in :data:`DOMAINS`)."""

    def run_interventions(self, sae: Any, data: Any, cfg: InterveneConfig, mean: torch.Tensor | None) -> xr.Dataset: ...


def store_mean(store: str | os.PathLike, hook: str) -> torch.Tensor:
    """Mean ``(d,)`` activation at ``hook`` over every token of an activation store."""
    from sciinterp.store import open_store

    ds = open_store(store)
    if hook not in ds:
        raise ValueError(f"store {store} has no hook {hook!r}; it has {list(ds.data_vars)}")
    return torch.as_tensor(np.asarray(ds[hook].astype("float64").mean("token").values), dtype=torch.float32)


def _runner(adapter: Any):
    if isinstance(adapter, Intervenable):
        return lambda sae, data, cfg, mean: adapter.run_interventions(sae, data, cfg, mean)
    name = getattr(adapter, "name", type(adapter).__name__)
    if name not in DOMAINS:
        raise ValueError(f"adapter {name!r} has no interventions: known {sorted(DOMAINS)}, "
                         "or give the adapter a run_interventions(sae, data, cfg, mean) method")
    mod = importlib.import_module(DOMAINS[name])
    return lambda sae, data, cfg, mean: mod.run_interventions(adapter, sae, data, cfg, mean)


def _check_hook(adapter: Any, hook: str) -> None:
    names = adapter.hook_names() if hasattr(adapter, "hook_names") else []
    if not hasattr(adapter, "hook_point"):
        raise ValueError(f"adapter {getattr(adapter, 'name', adapter)!r} cannot be spliced (no hook_point)")
    try:
        adapter.hook_point(hook)
    except (KeyError, ValueError) as err:
        raise ValueError(f"hook {hook!r} cannot be spliced: the adapter has {names}") from err


def _model_device(adapter: Any) -> str:
    model = getattr(adapter, "model", None)
    try:
        return str(next(model.parameters()).device)
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def _write_netcdf(ds: xr.Dataset, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    clean = ds.copy()
    for name, v in list(clean.variables.items()):
        if v.dtype == bool:
            clean[name] = v.astype("int8")
    clean.attrs = {k: (v if isinstance(v, (str, int, float)) else np.asarray(v, dtype=float)
                       if isinstance(v, (list, tuple, np.ndarray)) and np.asarray(v).dtype.kind in "iuf" else str(v))
                   for k, v in ds.attrs.items()}
    clean.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def intervene(adapter: Any, sae_dir: str | os.PathLike, data: Any, cfg: InterveneConfig,
              out_dir: str | os.PathLike) -> Path:
    """Run the interventions of ``cfg`` and write ``<out_dir>/interventions.nc`` (returned), figures, summary.

    Parameters
    ----------
    adapter
        A spliceable adapter (``hook_point``), e.g. ``ESM2Adapter`` or ``SFNOAdapter``.
    sae_dir
        SAE directory (``cfg.json`` + ``sae_weights.safetensors``) trained on ``cfg.hook``.
    data
        The adapter's input: FASTA path / ``{id: sequence}`` (protein), CF dataset or path (weather).
    cfg
        :class:`InterveneConfig`.
    out_dir
        Output directory (created).

    Raises
    ------
    ValueError
        Unknown hook, an SAE trained on another hook or width, unknown feature index, residue
        range outside the protein, lat/lon box outside the grid, lead beyond the rollout.
    """
    from sciinterp.sae import SparseAutoencoder

    _check_hook(adapter, cfg.hook)
    sae = SparseAutoencoder.load(sae_dir, hook=cfg.hook, device=cfg.device or _model_device(adapter)).eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    bad = [f for f in cfg.features if f >= sae.d_sae]
    if bad:
        raise ValueError(f"unknown feature index {bad[0]}: the SAE at {sae_dir} has {sae.d_sae} features (0..{sae.d_sae - 1})")
    mean = store_mean(cfg.store, cfg.hook) if cfg.store else None
    results = _runner(adapter)(sae, data, cfg, mean)
    results.attrs.update(sae=str(sae_dir), config=json.dumps(asdict(cfg)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "interventions.nc"
    _write_netcdf(results, path)
    summary = {k: float(v) for k, v in results.data_vars.items() if v.ndim == 0}
    summary.update({k: v for k, v in results.attrs.items() if isinstance(v, (int, float))})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    from sciinterp import plot

    for name, fig in intervention_figures(results).items():
        (out / f"{name}.png").write_bytes(plot.to_png(fig))
    log.info("interventions written to %s", path)
    return path


def loss_recovered_eval(adapter: Any, hook: str, data: Any, *, max_items: int | None = 16) -> dict[str, Any]:
    """The adapter's downstream "loss recovered" evaluator, ready for ``train(..., evaluators=...)``.

    Parameters
    ----------
    adapter
        A spliceable adapter of a domain in :data:`DOMAINS` (ESM-2: masked-LM cross-entropy;
        SFNO / FourCastNet-v2: forecast MSE against the clean rollout), or one with a method
        ``loss_recovered_eval(hook, data, max_items=...)``.
    hook
        The hook the SAEs are trained on.
    data
        The adapter's input (the harvest data); the first ``max_items`` proteins / initial times are scored.
    max_items
        Proteins or initial times scored per SAE (``None``: all).

    Returns
    -------
    dict[str, DownstreamEval]
        ``{name: evaluator}`` (``masked_lm`` or ``forecast``); each evaluator returns at least
        ``loss_recovered`` = (L_zero − L_SAE) / (L_zero − L_clean), written to the SAE's ``eval.json``.

    Raises
    ------
    ValueError
        An adapter with no evaluator (naming the ones that have one), or a hook that cannot be spliced.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items={max_items}: score at least one item (or None for all)")
    name = getattr(adapter, "name", type(adapter).__name__)
    own = getattr(adapter, "loss_recovered_eval", None)
    if not callable(own) and name not in DOMAINS:
        raise ValueError(f"adapter {name!r} has no loss-recovered evaluator: known {sorted(DOMAINS)}, or give the "
                         "adapter a loss_recovered_eval(hook, data, max_items) method")
    _check_hook(adapter, hook)
    if callable(own):
        fn = own(hook, data, max_items=max_items)
    else:
        fn = importlib.import_module(DOMAINS[name]).loss_recovered_eval(adapter, hook, data, max_items=max_items)
    return {getattr(fn, "name", "loss_recovered"): fn}


# -- figures -----------------------------------------------------------------------------------
def intervention_figures(results: xr.Dataset) -> dict[str, Any]:
    """Matplotlib figures of an :func:`intervene` result, by name (``faithfulness``, ``edit``, ...)."""
    figs: dict[str, Any] = {}
    if results.attrs.get("domain") == "protein":
        if "faith_ce_clean" in results:
            figs["faithfulness"] = _bars(results, ["clean", "sae", "sae_error", "mean", "zero"], "faith_ce_{}",
                                         "masked-LM cross-entropy (nats)")
        if "dlogit" in results:
            figs["edit"] = _residue_edit(results)
    else:
        if "faith_rmse_truth" in results:
            figs["faithfulness"] = _rmse_by_lead(results)
        diffs = [v for v in results.data_vars if v.endswith("_diff")]
        if diffs:
            figs["edit"] = _diff_maps(results, diffs[0])
    return figs


def _fig(w: float, h: float):
    from sciinterp.plot import _figure

    return _figure(w, h)


def _bars(r: xr.Dataset, runs: Sequence[str], pattern: str, ylabel: str):
    fig = _fig(5, 3)
    ax = fig.subplots()
    vals = [float(r[pattern.format(k)]) for k in runs]
    ax.bar(runs, vals, color=["#444", "#1f77b4", "#7fb3e0", "#e0a000", "#d62728"][: len(runs)])
    ax.set_ylabel(ylabel)
    ax.set_title(f"SAE spliced at {r.attrs.get('hook')}: loss recovered {float(r.get('faith_recovered_mean', np.nan)):.3f} (vs mean)")
    return fig


def _residue_edit(r: xr.Dataset, margin: int = 25):
    """Δ logit heatmap and p(actual residue) around the edited range (± ``margin`` residues)."""
    ed = r["position"].values[np.asarray(r["edited"].values, dtype=bool)]
    r = r.sel(position=(r["position"] >= ed.min() - margin) & (r["position"] <= ed.max() + margin))
    fig = _fig(8, 4.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    d = r["dlogit"].transpose("amino_acid", "position").values
    lim = float(np.abs(d).max()) or 1.0
    pos = r["position"].values
    im = ax1.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                    extent=(pos[0] - 0.5, pos[-1] + 0.5, len(r["amino_acid"]) - 0.5, -0.5))
    ax1.set_yticks(range(len(r["amino_acid"])), r["amino_acid"].values, fontsize=6)
    ax1.set_title(f"Δ logit after {r.attrs.get('edits')} at residues {r.attrs.get('residues')} ({r.attrs.get('hook')})")
    fig.colorbar(im, ax=ax1, label="Δ logit")
    ax2.plot(pos, r["p_residue_clean"], label="clean")
    ax2.plot(pos, r["p_residue_edited"], label="edited")
    edited = pos[np.asarray(r["edited"].values, dtype=bool)]
    for ax in (ax1, ax2):
        ax.axvspan(edited.min() - 0.5, edited.max() + 0.5, color="#e0a000", alpha=0.15)
    ax2.set_ylabel("p(actual residue)")
    ax2.set_xlabel("residue position")
    ax2.legend(fontsize=7)
    return fig


def _rmse_by_lead(r: xr.Dataset):
    variables = list(r["variable"].values)
    fig = _fig(3.2 * len(variables), 3)
    axes = np.atleast_1d(fig.subplots(1, len(variables)))
    truth = bool(np.isfinite(r["faith_rmse_truth"].sel(run="clean")).any())
    key = "faith_rmse_truth" if truth else "faith_rmse_clean"
    for ax, v in zip(axes, variables):
        for run in r["run"].values:
            ax.plot(r["lead"], r[key].sel(run=run, variable=v), marker="o", label=str(run))
        ax.set_title(f"{v}: RMSE vs {'truth' if truth else 'clean forecast'}")
        ax.set_xlabel("lead (h)")
    axes[0].legend(fontsize=7)
    return fig


def _diff_maps(r: xr.Dataset, var: str):
    leads = r["lead"].values
    fig = _fig(2.6 * len(leads), 2.4)
    axes = np.atleast_1d(fig.subplots(1, len(leads)))
    d = r[var].isel(time=0)
    lim = float(np.abs(d).max()) or 1.0
    for ax, ld in zip(axes, leads):
        im = ax.pcolormesh(r["lon"], r["lat"], d.sel(lead=ld), cmap="RdBu_r", vmin=-lim, vmax=lim, shading="nearest")
        ax.set_title(f"{var} +{int(ld)} h", fontsize=8)
        _outline(ax, r.attrs.get("box"))
    fig.colorbar(im, ax=axes.tolist(), label=var)
    return fig


def _outline(ax: Any, box: Any) -> None:
    """Draw the edited lat/lon box ``[south, north, west, east]`` (wrapping through 0° when west > east)."""
    if box is None or np.size(box) != 4:
        return
    s, n, w, e = (float(v) for v in box)
    w, e = w % 360, (360.0 if e == 360 else e % 360)
    for lo, hi in ([(w, e)] if w <= e else [(w, 360.0), (0.0, e)]):
        ax.plot([lo, hi, hi, lo, lo], [s, s, n, n, s], color="k", lw=0.8)

