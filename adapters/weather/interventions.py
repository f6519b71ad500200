"""Interventions on weather models: forecast faithfulness of a spliced SAE, regional feature edits,
and physical-consistency checks of the edited forecast.

Everything runs through :func:`sciinterp.splice.splice` at ``adapter.hook_point(hook)`` during
the adapter's own rollout (``adapter.step`` applied ``n_steps`` times).  In a rollout forward
call ``k`` (0-based) produces lead ``(k + 1) * step_hours``; an edit "at lead L" rewrites the
hook only in the step that produces lead ``L``, so leads before ``L`` are untouched and later
leads see the edit through the evolving state.

Physical consistency (shallow-water states ``z`` = geopotential φ = g h, ``u``, ``v``):

* mass: area-weighted global mean of φ / g (m), conserved by the shallow-water equations;
* energy: area-weighted global mean of ½ h |u|² + ½ g h² (m³ s⁻², i.e. J m⁻² per unit density);
* ERA5-like fields with ``z`` and ``t`` on levels: hydrostatic thickness consistency, the RMS
  (m) of (z500 − z1000)/g − (R_d T̄ / g) ln(1000/500), T̄ the log-pressure mean of ``t``.

An edit's change of these quantities is reported relative to the clean forecast's own drift
over the rollout (``ratio``): ≲ 1 means the edit moves the weather within what the model does
anyway; ≫ 1 means it breaks the balance the model keeps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciinterp.splice import FeatureEdit, splice

__all__ = [
    "RUNS", "ForecastLossRecovered", "box_mask", "conservation", "edit_forecast", "forecast_faithfulness",
    "hydrostatic_thickness_error", "lead_step", "level_field", "loss_recovered_eval", "rollout", "shallow_water_budgets",
    "thickness_check",
]

log = logging.getLogger(__name__)

G = 9.80665
"""Standard gravity (m s-2)."""
R_DRY = 287.05
"""Gas constant of dry air (J kg-1 K-1)."""
RUNS = ("clean", "sae", "sae_error", "zero", "mean")
"""Runs of :func:`forecast_faithfulness`."""


# -- requests ---------------------------------------------------------------------------------
def lead_step(adapter: Any, lead: int, n_steps: int) -> int:
    """Forward-call index (0-based) that produces ``lead`` hours; a clear error if the rollout lacks it."""
    h = adapter.meta.step_hours
    leads = [h * k for k in range(1, n_steps + 1)]
    if int(lead) not in leads:
        raise ValueError(f"lead {lead} h is not in this rollout of {n_steps} steps of {h} h (leads {leads})")
    return leads.index(int(lead))


def box_mask(adapter: Any, shape: tuple[int, int], lat: tuple[float, float] | None,
             lon: tuple[float, float] | None) -> torch.Tensor:
    """``(nlat, nlon)`` bool mask of the hook grid ``shape`` inside a lat/lon box.

    ``lat = (south, north)`` in [-90, 90]; ``lon = (west, east)`` in degrees east (any of
    [-180, 360]); ``west > east`` wraps through 0° (``(350, 10)``).  ``None``: no limit.
    """
    from sciinterp_adapters.weather.sfno import grid_coords

    g = grid_coords(*shape, adapter._grid_name(tuple(shape)))
    glat, glon = g["lat"].reshape(shape), g["lon"].reshape(shape)
    m = np.ones(shape, dtype=bool)
    if lat is not None:
        s, n = map(float, lat)
        if not -90 <= s <= n <= 90:
            raise ValueError(f"lat box {lat} must satisfy -90 <= south <= north <= 90")
        m &= (glat >= s - 1e-9) & (glat <= n + 1e-9)
    if lon is not None:
        w, e = map(float, lon)
        if not (-180 <= w <= 360 and -180 <= e <= 360):
            raise ValueError(f"lon box {lon} is outside [-180, 360] degrees east")
        w = w % 360
        e = 360.0 if e == 360 else e % 360
        m &= ((glon >= w) & (glon <= e)) if w <= e else ((glon >= w) | (glon <= e))
    if not m.any():
        raise ValueError(f"lat/lon box lat={lat} lon={lon} contains no point of the hook's {shape[0]}x{shape[1]} grid")
    return torch.as_tensor(m)


def _weights(lat: np.ndarray) -> np.ndarray:
    w = np.clip(np.cos(np.radians(np.asarray(lat, dtype=float))), 0, None)
    return w / w.mean()


# -- rollouts ---------------------------------------------------------------------------------
def _initial(adapter: Any, data: Any, max_times: int | None) -> tuple[xr.Dataset, torch.Tensor]:
    ds = adapter.prepare(data)
    init = ds.isel(time=slice(0, max_times)) if max_times else ds
    return ds, adapter._tensor(init)


def rollout(adapter: Any, x0: torch.Tensor, n_steps: int, hook: str | None = None, stats: list | None = None,
            **splice_kw: Any) -> torch.Tensor:
    """``(B, n_steps, C, lat, lon)`` forecast from ``x0 (B, C, lat, lon)``, spliced at ``hook`` when given.

    ``splice_kw`` go to :func:`~sciinterp.splice.splice`, entered once per batch of
    ``adapter.batch_size`` initial times (so its ``steps`` count the forward calls of one rollout);
    each batch's :class:`~sciinterp.splice.SpliceStats` is appended to ``stats``.
    """
    out = []
    with torch.no_grad():
        for start in range(0, x0.shape[0], adapter.batch_size):
            x, steps = x0[start:start + adapter.batch_size], []
            with splice(adapter.hook_point(hook), **splice_kw) if hook else contextlib.nullcontext() as st:
                for _ in range(n_steps):
                    x = adapter.step(x)
                    steps.append(x.cpu())
            if stats is not None and st is not None:
                stats.append(st)
            out.append(torch.stack(steps, 1))
    return torch.cat(out)


def _truth(adapter: Any, ds: xr.Dataset, n_init: int, n_steps: int) -> torch.Tensor:
    """``(n_init, n_steps, C, lat, lon)`` verifying states from ``ds`` (NaN where absent)."""
    times = ds["time"].values
    traj = ds["trajectory"].values if "trajectory" in ds.coords else np.zeros(len(times))
    full = adapter._tensor(ds).cpu()
    out = torch.full((n_init, n_steps, *full.shape[1:]), float("nan"))
    index = {(t, k): j for j, (t, k) in enumerate(zip(times, traj))}
    for i in range(n_init):
        for s in range(n_steps):
            j = index.get((times[i] + np.timedelta64(adapter.meta.step_hours * (s + 1), "h"), traj[i]))
            if j is not None:
                out[i, s] = full[j]
    return out


def _rmse(a: torch.Tensor, b: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """Latitude-weighted RMSE ``(C, n_steps)`` of ``(B, n_steps, C, lat, lon)`` fields, NaN-aware over B."""
    se = ((a - b) ** 2 * torch.as_tensor(w, dtype=a.dtype)[:, None]).mean((-1, -2))  # (B, S, C)
    return np.sqrt(np.nanmean(se.numpy(), axis=0)).T


def hook_mean_rollout(adapter: Any, hook: str, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Mean ``(d,)`` activation at ``hook`` over every grid point and step of the clean rollout."""
    point, acc = adapter.hook_point(hook), []

    def grab(_m, _i, out):
        out = out if point.output_index is None else out[point.output_index]
        acc.append(out.movedim(point.channel_dim, -1).reshape(-1, out.shape[point.channel_dim]).float().mean(0))

    h = point.module.register_forward_hook(grab)
    try:
        rollout(adapter, x0, n_steps)
    finally:
        h.remove()
    return torch.stack(acc).mean(0).cpu()


def forecast_faithfulness(adapter: Any, data: Any, hook: str, sae: Any, *, n_steps: int = 4,
                          mean: torch.Tensor | None = None, max_times: int | None = None) -> xr.Dataset:
    """Forecast RMSE per variable and lead with the SAE spliced in at ``hook``, against ablations.

    Returns
    -------
    xarray.Dataset
        ``rmse_truth (run, variable, lead)`` — latitude-weighted RMSE against the verifying
        state in ``data`` (NaN where ``data`` has none; trajectories respected);
        ``rmse_clean (run, variable, lead)`` — against the clean forecast;
        ``recovered (variable, lead)`` = 1 − MSE(sae, clean) / MSE(mean, clean) (1: the SAE
        forecast is the model's; 0: as far off as mean-ablation); ``recovered_truth`` the
        loss-recovered of the MSE against truth (mean-ablation baseline); ``fve`` in attrs.
        ``run`` is one of :data:`RUNS`.
    """
    ds, x0 = _initial(adapter, data, max_times)
    if mean is None:
        mean = hook_mean_rollout(adapter, hook, x0, n_steps)
    kw = {"sae": {"replace": "sae"}, "sae_error": {"replace": "sae", "keep_error": True},
          "zero": {"replace": "zero"}, "mean": {"replace": "mean", "mean": torch.as_tensor(mean).float()}}
    fc = {"clean": rollout(adapter, x0, n_steps)}
    fve = float("nan")
    for run, k in kw.items():
        stats: list = []
        fc[run] = rollout(adapter, x0, n_steps, hook, stats, sae=sae if k["replace"] == "sae" else None, **k)
        if run == "sae":
            err, norm = sum(s.sq_err for s in stats), sum(s.sq_norm for s in stats)
            fve = 1 - err / norm if norm else float("nan")
    w = _weights(ds["lat"].values)
    truth = _truth(adapter, ds, x0.shape[0], n_steps)
    rt = np.stack([_rmse(fc[r], truth, w) for r in RUNS])
    rc = np.stack([_rmse(fc[r], fc["clean"], w) for r in RUNS])
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = 1 - rc[1] ** 2 / rc[4] ** 2
        rec_t = (rt[4] ** 2 - rt[1] ** 2) / (rt[4] ** 2 - rt[0] ** 2)
    leads = adapter.meta.step_hours * np.arange(1, n_steps + 1)
    dims = ("run", "variable", "lead")
    return xr.Dataset(
        {"rmse_truth": (dims, rt), "rmse_clean": (dims, rc),
         "recovered": (dims[1:], rec), "recovered_truth": (dims[1:], rec_t)},
        coords={"run": list(RUNS), "variable": list(adapter.meta.variables), "lead": ("lead", leads, {"units": "hours"})},
        attrs={"hook": hook, "fve": fve, "n_init": int(x0.shape[0])},
    )


class ForecastLossRecovered:
    """The trainer's :class:`~sciinterp.sae.DownstreamEval` for SFNO: forecast loss recovered.

    The loss is the MSE against the clean forecast (0 for the model itself).  Returns
    ``loss_recovered`` = 1 − MSE(SAE) / MSE(zero-ablated) (mean over variables and leads: the
    zero-ablation convention), ``recovered`` the same against mean-ablation, ``recovered_<var>``
    (mean-ablation, mean over leads), ``rmse_sae_<var>`` and ``rmse_mean_<var>`` (against the clean
    forecast, last lead), ``fve``.  An SAE whose provenance names another hook is not scored (``{}``).
    """

    name = "forecast"
    """Key of these numbers in ``eval.json``."""

    def __init__(self, adapter: Any, hook: str, data: Any, *, n_steps: int = 2, max_times: int | None = 4,
                 mean: torch.Tensor | None = None):
        adapter.hook_point(hook)
        self.adapter, self.hook, self.data = adapter, hook, data
        self.n_steps, self.max_times, self.mean = n_steps, max_times, mean

    def __call__(self, sae: Any) -> Mapping[str, float]:
        trained_on = (getattr(sae, "provenance", None) or {}).get("hook_name")
        if trained_on not in (None, self.hook):  # one pass may train SAEs on several hooks
            log.info("forecast loss recovered at %s: skipping an SAE trained on %r", self.hook, trained_on)
            return {}
        r = forecast_faithfulness(self.adapter, self.data, self.hook, sae, n_steps=self.n_steps,
                                  mean=self.mean, max_times=self.max_times)
        mse = r["rmse_clean"] ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            vs_zero = 1 - mse.sel(run="sae") / mse.sel(run="zero")
        out = {"loss_recovered": float(vs_zero.mean()), "recovered": float(r["recovered"].mean()),
               "fve": float(r.attrs["fve"])}
        for v in r["variable"].values:
            out[f"recovered_{v}"] = float(r["recovered"].sel(variable=v).mean())
            out[f"rmse_sae_{v}"] = float(r["rmse_clean"].sel(run="sae", variable=v)[-1])
            out[f"rmse_mean_{v}"] = float(r["rmse_clean"].sel(run="mean", variable=v)[-1])
        return out

    def __repr__(self) -> str:  # stable across runs: it keys the pipeline's train stage
        return (f"ForecastLossRecovered(hook={self.hook!r}, n_steps={self.n_steps}, max_times={self.max_times}"
                f"{', mean=given' if self.mean is not None else ''})")


def loss_recovered_eval(adapter: Any, hook: str, data: Any, *, max_items: int | None = 16) -> ForecastLossRecovered:
    """:class:`ForecastLossRecovered` over the first ``max_items`` initial times, rolled out as far as the
    adapter harvests (``adapter.n_steps``, else 2 steps).

    What :func:`sciinterp.intervene.loss_recovered_eval` (the CLI's ``train.loss_recovered``) builds for SFNO.
    """
    return ForecastLossRecovered(adapter, hook, data, n_steps=int(getattr(adapter, "n_steps", 2) or 2),
                                 max_times=max_items)


# -- edits --------------------------------------------------------------------------------------
def edit_forecast(
    adapter: Any, data: Any, hook: str, sae: Any, edits: Sequence[FeatureEdit], *,
    lat: tuple[float, float] | None = None, lon: tuple[float, float] | None = None, level: float | None = None,
    lead: int | Sequence[int] | None = None, n_steps: int = 4, keep_error: bool = True, max_times: int | None = 1,
) -> xr.Dataset:
    """Edit SAE features in a lat/lon box at chosen leads and return clean, edited and difference forecasts.

    Parameters
    ----------
    lat, lon
        The box (see :func:`box_mask`), on the hook's own grid.
    level
        Pressure level (hPa) for hooks with levels; SFNO hooks have none (an error if given).
    lead
        Lead(s) in hours whose producing step is edited; ``None``: every step.
    keep_error
        Keep the SAE's reconstruction error (only the edit changes the computation).

    Returns
    -------
    xarray.Dataset
        ``<var>_clean``, ``<var>_edited``, ``<var>_diff`` ``(time, lead, lat, lon)``; ``rmse_diff
        (variable, lead)`` (latitude-weighted RMS of the difference); for shallow-water states
        ``mass``/``energy`` ``(forecast, time, lead)`` and the :func:`conservation` summary
        (``mass_change``, ``mass_drift``, ``mass_ratio`` and the same for energy, per lead).
    """
    if level is not None:
        raise ValueError(f"level={level}: hook {hook!r} of {adapter.name} has no levels (its tokens are single-level)")
    if not edits:
        raise ValueError("edit_forecast needs at least one FeatureEdit")
    steps = None
    if lead is not None:
        steps = sorted({lead_step(adapter, ld, n_steps) for ld in np.atleast_1d(lead)})
    ds, x0 = _initial(adapter, data, max_times)
    adapter.hook_point(hook)
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def tokens(shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in cache:
            cache[shape] = box_mask(adapter, tuple(shape[-2:]), lat, lon).expand(shape).to(x0.device)
        return cache[shape]

    box_mask(adapter, adapter.grid, lat, lon)  # bad boxes fail before anything runs
    clean = rollout(adapter, x0, n_steps)
    edited = rollout(adapter, x0, n_steps, hook=hook, sae=sae, replace="sae" if not keep_error else None,
                     keep_error=keep_error, edits=list(edits), tokens=tokens, steps=steps)
    leads = adapter.meta.step_hours * np.arange(1, n_steps + 1)
    dims = ("time", "lead", "lat", "lon")
    coords = {"time": ds["time"].values[: x0.shape[0]], "lead": ("lead", leads, {"units": "hours"}),
              "lat": ds["lat"].values, "lon": ds["lon"].values}
    out = xr.Dataset(coords=coords)
    w = _weights(ds["lat"].values)
    for i, v in enumerate(adapter.meta.variables):
        out[f"{v}_clean"] = (dims, clean[:, :, i].numpy())
        out[f"{v}_edited"] = (dims, edited[:, :, i].numpy())
        out[f"{v}_diff"] = (dims, (edited - clean)[:, :, i].numpy())
    out["rmse_diff"] = (("variable", "lead"), _rmse(edited, clean, w))
    out = out.assign_coords(variable=list(adapter.meta.variables))
    init = ds.isel(time=slice(0, x0.shape[0]))
    if {"z", "u", "v"} <= set(adapter.meta.variables):
        out = out.merge(conservation(init, out))
    if {"z500", "z1000", "t500", "t1000"} <= set(adapter.meta.variables):
        out = out.merge(thickness_check(init, out, adapter.meta.variables))
    out.attrs.update(hook=hook, edits="; ".join(f"{e.op}({list(map(int, e.features))}, {e.value:g})" for e in edits),
                     lat=str(lat), lon=str(lon),
                     box=[float(v) for v in (*(lat or (-90, 90)), *(lon or (0, 360)))], edit_leads=str([int(leads[s]) for s in steps] if steps else "all"),
                     keep_error=int(keep_error))
    return out


# -- physics ------------------------------------------------------------------------------------
def shallow_water_budgets(z: xr.DataArray, u: xr.DataArray, v: xr.DataArray, g: float = G) -> xr.Dataset:
    """Area-weighted global means: ``mass`` = mean h (m, h = z / g) and ``energy`` = mean(½ h|u|² + ½ g h²) (m³ s⁻²).

    ``z`` is the geopotential of the fluid surface (m² s⁻²); dims ``lat``, ``lon`` and any others.
    """
    w = xr.DataArray(_weights(z["lat"].values), dims="lat", coords={"lat": z["lat"]})
    h = z / g
    e = 0.5 * h * (u**2 + v**2) + 0.5 * g * h**2
    mean = lambda a: a.weighted(w).mean(("lat", "lon"))  # noqa: E731
    return xr.Dataset({"mass": mean(h).assign_attrs(units="m", long_name="global mean fluid depth"),
                       "energy": mean(e).assign_attrs(units="m3 s-2", long_name="global mean total energy per unit density")})


def conservation(init: xr.Dataset, edit: xr.Dataset) -> xr.Dataset:
    """How an edit changes mass and energy, relative to the clean forecast's own drift.

    ``<q>_change (lead)``: mean over initial times of |Q_edited − Q_clean|;
    ``<q>_drift (lead)``: mean of |Q_clean(lead) − Q(initial state)|, floored at 1e-7 |Q|;
    ``<q>_ratio = change / max over leads of drift``.  Also ``mass``/``energy`` ``(forecast, time, lead)``.
    """
    b0 = shallow_water_budgets(init["z"], init["u"], init["v"])
    runs = {r: shallow_water_budgets(edit[f"z_{r}"], edit[f"u_{r}"], edit[f"v_{r}"]) for r in ("clean", "edited")}
    out = xr.Dataset()
    for q in ("mass", "energy"):
        out[q] = xr.concat([runs["clean"][q], runs["edited"][q]], dim=xr.DataArray(["clean", "edited"], dims="forecast"))
        change = abs(runs["edited"][q] - runs["clean"][q]).mean("time")
        drift = abs(runs["clean"][q] - b0[q].values[:, None]).mean("time")
        drift = np.maximum(drift, 1e-7 * float(abs(b0[q]).mean()))
        out[f"{q}_change"], out[f"{q}_drift"] = change, drift
        out[f"{q}_ratio"] = change / float(drift.max())
    return out


def hydrostatic_thickness_error(z: xr.DataArray, t: xr.DataArray, top: float = 500.0, bottom: float = 1000.0,
                                g: float = G) -> xr.DataArray:
    """Area-weighted RMS (m) of the 1000–500 hPa thickness minus its hydrostatic value.

    ``z`` geopotential (m² s⁻²) and ``t`` temperature (K) with a ``level`` dim (hPa) holding
    ``top`` and ``bottom``; T̄ is the trapezoid mean of ``t`` in ln p over the levels between.
    An exactly hydrostatic dry atmosphere gives 0 (virtual-temperature effects give a few m).
    """
    for name, a in (("z", z), ("t", t)):
        missing = [p for p in (top, bottom) if not np.isclose(a["level"].values, p).any()]
        if missing:
            raise ValueError(f"{name} lacks level(s) {missing} hPa for the thickness check (has {a['level'].values})")
    tl = t.sel(level=(t["level"] >= top) & (t["level"] <= bottom)).sortby("level")
    lnp = np.log(tl["level"].values.astype(float))
    tbar = xr.apply_ufunc(
        lambda a: np.trapezoid(a, lnp, axis=-1) / (lnp[-1] - lnp[0]), tl, input_core_dims=[["level"]])
    dz = (z.sel(level=top) - z.sel(level=bottom)) / g
    err = dz - R_DRY * tbar / g * np.log(bottom / top)
    w = xr.DataArray(_weights(z["lat"].values), dims="lat", coords={"lat": z["lat"]})
    return np.sqrt((err**2).weighted(w).mean(("lat", "lon"))).assign_attrs(units="m")


def run_interventions(adapter: Any, sae: Any, data: Any, cfg: Any, mean: torch.Tensor | None = None) -> xr.Dataset:
    """What :func:`sciinterp.intervene.intervene` runs for SFNO-like adapters: faithfulness and one edit.

    Faithfulness variables are prefixed ``faith_`` (``faith_rmse_truth (run, variable, lead)`` ...);
    the edit (when ``cfg.features``) adds :func:`edit_forecast`' variables.
    """
    out = xr.Dataset(attrs={"domain": "weather", "hook": cfg.hook})
    if cfg.features:  # validate the request before the long faithfulness runs
        if cfg.lead is not None:
            lead_step(adapter, cfg.lead, cfg.n_steps)
        box_mask(adapter, adapter.grid, cfg.lat, cfg.lon)
    if cfg.faithfulness:
        f = forecast_faithfulness(adapter, data, cfg.hook, sae, n_steps=cfg.n_steps, mean=mean, max_times=cfg.max_items)
        out = out.merge(f.rename({k: f"faith_{k}" for k in f.data_vars}))
        out.attrs.update(faith_fve=f.attrs["fve"], faith_recovered_avg=float(f["recovered"].mean()),
                         faith_recovered_truth_avg=float(f["recovered_truth"].mean()))
    if cfg.features:
        edit = edit_forecast(adapter, data, cfg.hook, sae, [FeatureEdit(list(cfg.features), cfg.op, cfg.value)],
                             lat=tuple(cfg.lat) if cfg.lat else None, lon=tuple(cfg.lon) if cfg.lon else None,
                             level=cfg.level, lead=cfg.lead, n_steps=cfg.n_steps, keep_error=cfg.keep_error, max_times=1)
        out = out.merge(edit.drop_vars([v for v in edit.data_vars if v.endswith(("_clean", "_edited"))]))
        out.attrs.update(edit.attrs)
        for q in ("mass", "energy"):
            if f"{q}_ratio" in out:
                out.attrs[f"{q}_ratio_max"] = float(out[f"{q}_ratio"].max())
    return out


def level_field(ds: xr.Dataset, name: str, suffix: str = "") -> xr.DataArray | None:
    """Channels ``{name}{hPa}{suffix}`` of ``ds`` (``z500``, ``z1000_clean``) stacked along ``level`` (hPa, ascending)."""
    found = {}
    for k in map(str, ds.data_vars):
        core = k[: len(k) - len(suffix)]
        if k.endswith(suffix) and core.startswith(name) and core[len(name):].isdigit():
            found[float(core[len(name):])] = k
    if not found:
        return None
    levels = sorted(found)
    return xr.concat([ds[found[p]] for p in levels], dim=xr.DataArray(levels, dims="level", name="level"))


def thickness_check(init: xr.Dataset, edit: xr.Dataset, variables: Sequence[str]) -> xr.Dataset:
    """How an edit changes hydrostatic consistency of the 1000–500 hPa layer, relative to the model's drift.

    ``thickness_error (forecast, time, lead)`` is :func:`hydrostatic_thickness_error` (m) of the
    clean and edited forecasts; ``thickness_change``, ``thickness_drift`` (from the initial state's
    error, floored at 1 mm) and ``thickness_ratio`` per lead as in :func:`conservation`.
    """
    def err(ds: xr.Dataset, suffix: str = "") -> xr.DataArray:
        return hydrostatic_thickness_error(level_field(ds, "z", suffix), level_field(ds, "t", suffix))

    e0, ec, ee = err(init), err(edit, "_clean"), err(edit, "_edited")
    change = abs(ee - ec).mean("time")
    drift = np.maximum(abs(ec - e0.values[:, None]).mean("time"), 1e-3)
    return xr.Dataset({
        "thickness_error": xr.concat([ec, ee], dim=xr.DataArray(["clean", "edited"], dims="forecast")).assign_attrs(units="m"),
        "thickness_change": change, "thickness_drift": drift, "thickness_ratio": change / float(drift.max()),
    })

