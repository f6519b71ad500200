"""Figures for features: maps over lat/lon, tracks along sequences, heatmaps, histograms.

Every function takes labelled xarray/numpy inputs and returns a matplotlib
``Figure``; matplotlib is imported lazily (Agg backend when no display), so
``import sciinterp`` stays light.  ``to_png(fig)`` gives the bytes the HTML
report embeds.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "activation_histogram",
    "feature_activations",
    "feature_map",
    "frequency_histogram",
    "lead_series",
    "link_heatmap",
    "residue_track",
    "to_png",
]

SS_COLOURS = {"H": "#d62728", "G": "#ff9896", "I": "#e377c2", "P": "#c5b0d5",
              "E": "#1f77b4", "B": "#aec7e8", "T": "#2ca02c", "S": "#98df8a", "C": "#dddddd", "-": "#ffffff"}


def _figure(width: float = 6.0, height: float = 3.0) -> Figure:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def feature_activations(features: xr.Dataset, feature: int) -> xr.DataArray:
    """Dense activation of one feature per token, ``(token,)``, from a feature store's sparse codes."""
    vals = np.asarray(features["values"])
    idx = np.asarray(features["indices"])
    act = np.where(idx == feature, vals, 0.0).sum(axis=1).astype(np.float32)
    coords = {k: ("token", np.asarray(v)) for k, v in features.coords.items() if v.dims == ("token",)}
    return xr.DataArray(act, dims="token", coords=coords, name=f"feature {feature}")


@functools.cache
def _land_grid(n_lat: int = 90, n_lon: int = 180) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        from global_land_mask import globe
    except ImportError:
        return None
    lat = np.linspace(-89.0, 89.0, n_lat)
    lon = np.linspace(-179.0, 179.0, n_lon)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    land = globe.is_land(la, lo).astype(float)
    order = np.argsort(np.mod(lon, 360.0))  # plot on 0..360
    return lat, np.mod(lon, 360.0)[order], land[:, order]


def feature_map(field: xr.DataArray, *, title: str = "", land: bool = True, cmap: str = "magma") -> Figure:
    """Map of a ``(lat, lon)`` field (degrees; lon in [0, 360)) with an optional land outline.

    ``field`` may also be a ``(token,)`` array with ``lat``/``lon`` coords: it is
    averaged per grid point (a composite).
    """
    if "token" in field.dims:
        df = field.to_dataframe(name="v")[["lat", "lon", "v"]] if "lat" not in field.dims else None
        if df is None or df.empty:
            raise ValueError("feature_map needs a (lat, lon) field or tokens with lat/lon coords")
        field = df.groupby(["lat", "lon"])["v"].mean().to_xarray()
    missing = {"lat", "lon"} - set(field.dims)
    if missing:
        raise ValueError(f"feature_map needs dims lat and lon; {field.name!r} lacks {sorted(missing)}")
    field = field.transpose("lat", "lon").sortby("lat").sortby("lon")
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(field.lon, field.lat, field.values, cmap=cmap, shading="auto")
    grid = _land_grid() if land else None
    if grid is not None:
        ax.contour(grid[1], grid[0], grid[2], levels=[0.5], colors="cyan", linewidths=0.6)
    ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)", xlim=(0, 360), ylim=(-90, 90), title=title)
    fig.colorbar(mesh, ax=ax, shrink=0.8, label="activation")
    return fig


def lead_series(act: xr.DataArray, *, title: str = "", weight: str | None = "area_weight") -> Figure:
    """Mean (area-weighted) activation per forecast lead time, with the firing fraction."""
    if "lead" not in act.coords:
        raise ValueError("lead_series needs a 'lead' coordinate (forecast lead in hours)")
    w = np.asarray(act[weight]) if weight and weight in act.coords else np.ones(act.size)
    df = act.to_dataframe(name="a").assign(w=w)
    df["aw"] = df["a"] * df["w"]
    df["fw"] = (df["a"] > 0) * df["w"]
    g = df.groupby("lead")[["aw", "fw", "w"]].sum()
    fig = _figure(5.0, 2.6)
    ax = fig.add_subplot()
    ax.plot(g.index, g["aw"] / g["w"], marker="o", label="mean activation")
    ax2 = ax.twinx()
    ax2.plot(g.index, g["fw"] / g["w"], color="grey", ls="--", label="fraction firing")
    ax.set(xlabel="lead time (h)", ylabel="mean activation", title=title)
    ax2.set_ylabel("fraction firing")
    return fig


def residue_track(
    act: np.ndarray, sequence: str, *, ss: str | None = None, title: str = "", start: int = 1
) -> Figure:
    """Activation along a protein sequence, with a secondary-structure bar (DSSP letters) below."""
    act = np.asarray(act, dtype=float)
    if act.shape != (len(sequence),):
        raise ValueError(f"residue_track: {act.shape[0]} activations for a sequence of {len(sequence)} residues")
    if ss is not None and len(ss) != len(sequence):
        raise ValueError(f"residue_track: secondary structure has {len(ss)} letters, sequence {len(sequence)}")
    pos = np.arange(start, start + len(sequence))
    fig = _figure(max(5.0, min(14.0, len(sequence) / 25)), 2.4)
    gs = fig.add_gridspec(2, 1, height_ratios=[4, 1])
    ax = fig.add_subplot(gs[0])
    ax.fill_between(pos, act, step="mid", color="#444")
    ax.set(ylabel="activation", title=title, xlim=(pos[0] - 0.5, pos[-1] + 0.5))
    ax.tick_params(labelbottom=False)
    bar = fig.add_subplot(gs[1], sharex=ax)
    if ss is not None:
        from matplotlib.colors import ListedColormap

        letters = sorted(SS_COLOURS)
        codes = np.array([[letters.index(c if c in SS_COLOURS else "-") for c in ss]])
        bar.imshow(codes, aspect="auto", cmap=ListedColormap([SS_COLOURS[c] for c in letters]),
                   vmin=0, vmax=len(letters) - 1, extent=(pos[0] - 0.5, pos[-1] + 0.5, 0, 1))
    if len(sequence) <= 120:
        bar.set_xticks(pos, list(sequence), fontsize=6)
    bar.set_yticks([])
    bar.set_xlabel("residue (position; bar: DSSP, red helix, blue strand)")
    return fig


def link_heatmap(links: xr.Dataset, *, features: Sequence[int] | None = None, var: str = "score",
                 max_features: int = 40) -> Figure:
    """Feature × variable heatmap of a link table (``var``, e.g. F1 or correlation)."""
    table = links[var]
    if features is None:
        best = np.nan_to_num(np.abs(table.values)).max(axis=1)
        features = np.argsort(-best)[:max_features]
    sub = table.isel(feature=list(features))
    fig = _figure(max(4.0, 0.3 * sub.sizes["variable"] + 2), max(3.0, 0.22 * len(features) + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(sub.values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(sub.sizes["variable"]), [str(v) for v in sub["variable"].values], rotation=90, fontsize=7)
    ax.set_yticks(range(len(features)), [str(int(f)) for f in sub["feature"].values], fontsize=7)
    ax.set(xlabel="variable", ylabel="feature")
    fig.colorbar(im, ax=ax, shrink=0.8, label=var)
    return fig


def frequency_histogram(frequency: Any, *, title: str = "Feature firing frequency") -> Figure:
    """Histogram of log10 firing frequency over features; dead features counted apart."""
    f = np.asarray(frequency, dtype=float)
    dead = int((f <= 0).sum())
    fig = _figure(5.0, 2.6)
    ax = fig.add_subplot()
    alive = f[f > 0]
    if alive.size:
        ax.hist(np.log10(alive), bins=50, color="#4c72b0")
    ax.set(xlabel="log10 firing frequency", ylabel="features", title=f"{title} ({dead} dead)")
    return fig


def activation_histogram(act: Any, *, title: str = "") -> Figure:
    """Histogram of a feature's non-zero activations (log count)."""
    a = np.asarray(act, dtype=float)
    a = a[a > 0]
    fig = _figure(4.0, 2.4)
    ax = fig.add_subplot()
    if a.size:
        ax.hist(a, bins=40, color="#dd8452", log=True)
    ax.set(xlabel="activation (when firing)", ylabel="tokens", title=title)
    return fig
