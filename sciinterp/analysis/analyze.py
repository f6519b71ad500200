"""All analysis outputs of one feature store in one call (the pipeline's ``analyze`` stage uses it)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import xarray as xr

from sciinterp.analysis.discovery import discovery_queue
from sciinterp.analysis.link import LinkConfig, link_features
from sciinterp.analysis.probe import sparse_probe
from sciinterp.features import feature_summary

__all__ = ["AnalysisResult", "analyze", "load_analysis"]

log = logging.getLogger(__name__)

_NAMES = ("summary", "links", "probes", "queue")


class AnalysisResult(NamedTuple):
    """``summary`` (feature_summary), ``links`` (token and item link tables concatenated along
    ``variable``, q-values recomputed over all pairs), ``probes`` (sparse_probe, or None without
    concepts), ``queue`` (discovery_queue)."""

    summary: xr.Dataset
    links: xr.Dataset
    probes: xr.Dataset | None
    queue: xr.Dataset


def _write(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` as a zarr directory atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # fixed-width unicode has no zarr v3 specification; variable-length strings do
    ds = ds.copy()
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object) if name not in ds.indexes else ds[name]
    ds = ds.assign_coords({n: ds[n].values.astype(object) for n in ds.indexes if ds[n].dtype.kind == "U"})
    ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def analyze(
    features: xr.Dataset,
    labels: xr.Dataset | None = None,
    *,
    item_labels: xr.Dataset | None = None,
    store: xr.Dataset | None = None,
    hook: str | None = None,
    config: LinkConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    top_n: int = 20,
) -> AnalysisResult:
    """Summary, link table(s), sparse probes and discovery queue of a feature store.

    ``labels`` are token-level, ``item_labels`` per item (either may be None, not both); ``store``
    and ``hook`` enable the neuron probes.  With ``out_dir`` every output is also written there as
    ``<name>.zarr`` (``summary``, ``links``, ``probes``, ``queue``); :func:`load_analysis` reads them.
    """
    from sciinterp.analysis.stats import benjamini_hochberg

    cfg = config or LinkConfig()
    if labels is None and item_labels is None:
        raise ValueError("analyze needs labels, item_labels or both")
    summary = feature_summary(features, top_n=top_n)
    tables = []
    if labels is not None:
        tables.append(link_features(features, labels, cfg))
    if item_labels is not None:
        group = item_labels.attrs.get("group") or (labels.attrs.get("group") if labels is not None else None)
        tables.append(link_features(features, item_labels, cfg, group=group))
    links = tables[0] if len(tables) == 1 else xr.concat(tables, dim="variable", combine_attrs="override")
    links["qvalue"] = (("feature", "variable"), benjamini_hochberg(links["pvalue"].values))
    has_concepts = labels is not None and any(v.attrs.get("kind") == "concept" for v in labels.data_vars.values())
    probes = sparse_probe(features, labels, store, hook, cfg) if has_concepts else None
    queue = discovery_queue(summary, links, alpha=cfg.alpha)
    result = AnalysisResult(summary, links, probes, queue)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, ds in zip(_NAMES, result):
            if ds is not None:
                _write(ds, out / f"{name}.zarr")
        log.info("analysis written to %s", out)
    return result


def load_analysis(out_dir: str | os.PathLike) -> AnalysisResult:
    """Read what :func:`analyze` wrote into ``out_dir`` (``probes`` is None if it was not written)."""
    out = Path(out_dir)
    found = {}
    for name in _NAMES:
        p = out / f"{name}.zarr"
        if not p.exists() and name != "probes":
            raise FileNotFoundError(f"{p} is missing: run analyze(..., out_dir={str(out)!r}) first")
        found[name] = xr.open_zarr(p, zarr_format=3, consolidated=False).load() if p.exists() else None
    return AnalysisResult(**found)
