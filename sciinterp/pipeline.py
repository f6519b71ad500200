"""The pipeline's stages as plain functions: harvest -> train -> analyze -> report.

Each function takes plain Python objects (an adapter, a data object or path,
config dataclasses) and an output directory; none needs Hydra.  ``run_from_config``
is the only place that reads a Hydra/OmegaConf config, and it only instantiates
``_target_`` entries and calls these functions.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sciinterp.stages import run_stage

__all__ = ["AnalyzeConfig", "HarvestConfig", "analyze", "harvest", "report", "run_from_config", "train"]

log = logging.getLogger(__name__)


def _describe(data: Any) -> Any:
    """A JSON-able stand-in for ``data`` in stage fingerprints (content token for objects)."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, (int, float, bool, type(None))):
        return data
    if isinstance(data, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in data):
        return list(data)
    from dask.base import tokenize

    return f"{type(data).__name__}:{tokenize(data)}"


def _path_inputs(*candidates: Any) -> list[Path]:
    return [Path(c) for c in candidates if isinstance(c, (str, os.PathLike)) and Path(c).exists()]


@dataclass
class HarvestConfig:
    """How to record activations into a store."""

    hooks: list[str]
    """Hook points to record (see ``sciinterp adapters list`` and the adapter's ``hook_names()``)."""
    dtype: str = "float32"
    """On-disk dtype: float32, float16 or bfloat16."""
    chunk_rows: int | None = None
    """Rows per zarr chunk along ``token``; ``None``: chunks of ~8 MiB of the widest hook
    (:func:`sciinterp.store.auto_chunk_rows`)."""
    nonfinite: str = "error"
    """``error`` stops on NaN/inf activations; ``drop`` drops those tokens and counts them."""
    compression: str = "lz4"
    """Activation codec: ``lz4`` (fast, ~12 % smaller for float32), ``zstd`` (smaller, slower) or ``none``."""
    flush_rows: int | None = None
    """Rows buffered per flush; ``None``: whole chunks up to ~64 MiB (see ``StoreWriter``)."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("HarvestConfig.hooks is empty: name at least one hook point")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"HarvestConfig.dtype={self.dtype!r}: use float32, float16 or bfloat16")
        if self.compression not in ("lz4", "zstd", "none"):
            raise ValueError(f"HarvestConfig.compression={self.compression!r}: use lz4, zstd or none")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError(f"HarvestConfig.chunk_rows={self.chunk_rows}: must be >= 1 (or None for ~8 MiB chunks)")
        if self.flush_rows is not None and self.flush_rows < 1:
            raise ValueError(f"HarvestConfig.flush_rows={self.flush_rows}: must be >= 1 (or None for the default)")


def harvest(adapter: Any, data: Any, cfg: HarvestConfig, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Record ``cfg.hooks`` activations of ``adapter`` over ``data`` into ``<out>/harvest/store.zarr``."""
    from sciinterp.harvest import harvest_to_store

    unknown = set(cfg.hooks) - set(adapter.hook_names())
    if unknown:
        raise ValueError(f"unknown hooks {sorted(unknown)} for adapter {adapter.name!r}; it has {adapter.hook_names()}")
    record = {"adapter": adapter.provenance(), "adapter_name": adapter.name, "data": _describe(data), **asdict(cfg)}

    def work(d: Path) -> None:
        harvest_to_store(
            adapter, data, cfg.hooks, d / "store.zarr",
            dtype=cfg.dtype, chunk_rows=cfg.chunk_rows, nonfinite=cfg.nonfinite, attrs={"config": record},
            compression=cfg.compression, flush_rows=cfg.flush_rows,
        )

    return run_stage("harvest", out, record, work, inputs=_path_inputs(data), force=force) / "store.zarr"


def train(
    source: Any, hook: str | Sequence[str] | None, saes: Sequence[Any], trainer: Any, out: str | os.PathLike, *,
    force: bool = False,
    evaluators: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Train one or more SAEs in one pass over ``source`` (a store, ``.npy`` path or array).

    ``hook`` names the store's hook, or lists several read in lockstep (each SAE's
    ``hook`` then picks its rows: :class:`sciinterp.sources.HookSources`).

    ``evaluators`` (``{name: DownstreamEval}``, e.g. from :func:`sciinterp.intervene.loss_recovered_eval`)
    score each trained SAE; the numbers go to ``<sae dir>/eval.json``.  Their ``repr`` keys the stage.
    """
    from sciinterp.sae import train as train_saes
    from sciinterp.sources import as_source

    src = as_source(source, hook=hook) if hook else as_source(source)
    record = {"source": _describe(source), "hook": hook, "saes": [asdict(s) for s in saes], "trainer": asdict(trainer)}
    if evaluators:  # absent otherwise, so runs without evaluators keep their key
        record["evaluators"] = {name: _describe_evaluator(fn) for name, fn in evaluators.items()}
    result: list[Path] = []

    def work(d: Path) -> None:
        result.extend(train_saes(src, list(saes), trainer, d, evaluators=evaluators))

    stage_dir = run_stage("train", out, record, work, inputs=_path_inputs(source), force=force)
    return result or sorted(p.parent for p in stage_dir.glob("*/cfg.json"))


def _describe_evaluator(fn: Any) -> str:
    """A stable description of an evaluator for the stage key: its ``repr`` unless that is a memory address."""
    text = repr(fn)
    return f"{type(fn).__module__}.{type(fn).__qualname__}" if " at 0x" in text else text


@dataclass
class AnalyzeConfig:
    """How to encode the store with an SAE and link its features to labels."""

    hook: str
    """Hook point of the store that the SAE was trained on."""
    batch_size: int = 8192
    """Tokens encoded per batch."""
    top_n: int = 20
    """Top examples kept per feature."""
    link: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`sciinterp.analysis.LinkConfig` (``n_perm``, ``alpha``, ``split``, ...)."""


def analyze(
    store: str | os.PathLike,
    sae_dir: str | os.PathLike,
    labels: Any,
    data: Any,
    cfg: AnalyzeConfig,
    out: str | os.PathLike,
    *,
    force: bool = False,
) -> Path:
    """Encode ``store`` with the SAE, then summarise features and link them to labels.

    ``labels`` is a callable ``labels(tokens) -> xr.Dataset`` (the label contract in
    ``docs/architecture.md``; ``tokens`` is the opened store) or a ready ``xr.Dataset``;
    ``data`` (the harvest input) is recorded in the stage fingerprint.
    Writes ``<out>/analyze/features.zarr`` and what :func:`sciinterp.analysis.analyze` writes
    (``summary``, ``links``, ``probes``, ``queue``, read back with ``load_analysis``).
    """
    from sciinterp.analysis import LinkConfig
    from sciinterp.analysis import analyze as analyze_features
    from sciinterp.features import encode_store, open_features
    from sciinterp.store import open_store

    record = {"store": str(store), "sae": str(sae_dir), "labels": _describe(labels), "data": _describe(data), **asdict(cfg)}

    def work(d: Path) -> None:
        feats = open_features(encode_store(store, sae_dir, cfg.hook, d / "features.zarr", batch_size=cfg.batch_size))
        tokens = open_store(store)
        lab = labels(tokens) if callable(labels) else labels
        token_labels = lab if "token" in lab.dims else None
        item_labels = lab if "item" in lab.dims else None
        analyze_features(feats, token_labels, item_labels=item_labels, store=tokens, hook=cfg.hook,
                         config=LinkConfig(**cfg.link), out_dir=d, top_n=cfg.top_n)

    return run_stage("analyze", out, record, work, inputs=_path_inputs(store, sae_dir, data), force=force)


def report(analysis_dir: str | os.PathLike, out: str | os.PathLike, *, title: str = "sciinterp report",
           n_cards: int = 24, interventions: str | os.PathLike | None = None,
           evaluation: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the HTML report of an analyze stage into ``<out>/report/index.html``.

    ``interventions``: an intervene stage directory; its ``interventions.nc`` (when present) adds the
    faithfulness and steering section.  ``evaluation``: the SAE's ``eval.json`` (when present: the
    train stage's downstream evaluators, e.g. loss recovered) adds a section to the overview.
    """
    import json

    from sciinterp.analysis import load_analysis
    from sciinterp.features import open_features
    from sciinterp.report import build_report

    import xarray as xr

    a = Path(analysis_dir)
    inter = Path(interventions) / "interventions.nc" if interventions else None
    inter = inter if inter is not None and inter.is_file() else None
    ev = Path(evaluation) if evaluation and Path(evaluation).is_file() else None
    record = {"analysis": str(a), "title": title, "n_cards": n_cards, "interventions": str(inter)}
    if ev is not None:  # absent otherwise, so reports without one keep their key
        record["evaluation"] = str(ev)

    def work(d: Path) -> None:
        res = load_analysis(a)
        edits = xr.load_dataset(inter, engine="h5netcdf") if inter is not None else None
        build_report(d, res.links, res.summary, features=open_features(a / "features.zarr"),
                     discovery=[int(f) for f in res.queue["feature"].values], n_cards=n_cards, title=title,
                     interventions=edits, evaluation=json.loads(ev.read_text()) if ev is not None else None)

    inputs = [a] + ([inter] if inter is not None else []) + ([ev] if ev is not None else [])
    return run_stage("report", out, record, work, inputs=inputs, force=force) / "index.html"


def run_from_config(cfg: Any) -> Any:
    """Dispatch ``cfg.stage`` from a resolved Hydra config (the CLI's only entry)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    stage = cfg.stage
    out = Path(cfg.out)
    force = bool(cfg.force)
    result: dict[str, Any] = {}
    adapter = None
    if stage in ("harvest", "run"):
        adapter = instantiate(cfg.adapter)
        data = result["data"] = _instantiate_data(cfg)
        hcfg = HarvestConfig(**OmegaConf.to_container(cfg.harvest, resolve=True))
        result["store"] = harvest(adapter, data, hcfg, out, force=force)
    if stage in ("train", "run"):
        data_path = cfg.data.get("path") if stage == "train" else None  # `data.path=acts.npy` (issue #3 form)
        source = cfg.train.source or data_path or result.get("store") or out / "harvest" / "store.zarr"
        sweep = OmegaConf.to_container(cfg.train.sweep, resolve=True) if cfg.train.sweep else [{}]
        hooks = list(cfg.train.get("hooks") or [])  # several hook points in one pass: every SAE on each
        if hooks:
            if cfg.train.hook not in hooks:
                raise ValueError(f"train.hook={cfg.train.hook!r} (the one analysed) must be one of train.hooks={hooks}")
            sweep = [{"hook": h, **o} for h in hooks for o in sweep]
        saes = [instantiate(cfg.sae, **o) for o in sweep]
        evaluators = None
        if cfg.train.get("loss_recovered"):  # the adapter's masked-LM / forecast loss recovered -> eval.json
            from sciinterp.intervene import loss_recovered_eval

            if "data" not in result:
                result["data"] = _instantiate_data(cfg)
            evaluators = loss_recovered_eval(adapter if adapter is not None else instantiate(cfg.adapter),
                                             cfg.train.hook, result["data"], max_items=cfg.train.get("loss_recovered_items", 16))
        result["saes"] = train(source, hooks or cfg.train.hook, saes, instantiate(cfg.trainer), out, force=force,
                               evaluators=evaluators)
    sae_dir = Path(cfg.analyze.sae) if cfg.analyze.get("sae") else None
    if sae_dir is None and stage in ("analyze", "report", "intervene", "run"):
        sae_dir = _first_sae_of(result.get("saes") or _trained_saes(out), cfg.train.hook)
    store = Path(cfg.train.source or out / "harvest" / "store.zarr")
    if stage in ("analyze", "run"):
        data = result.get("data", _instantiate_data(cfg))
        labels = instantiate(cfg.labels)
        link = OmegaConf.to_container(cfg.analysis, resolve=True)
        link.pop("_target_", None)
        acfg = AnalyzeConfig(hook=cfg.train.hook, batch_size=cfg.analyze.batch_size, top_n=cfg.analyze.top_n, link=link)
        if cfg.analyze.get("data_arg"):  # e.g. weather labels need the gridded fields: labels(tokens, fields=data)
            labels = functools.partial(labels, **{cfg.analyze.data_arg: data})
        result["analysis"] = analyze(store, sae_dir, labels, data, acfg, out, force=force)
    if stage == "intervene" or (stage == "run" and cfg.get("intervene") is not None and cfg.run_intervene):
        from sciinterp.intervene import intervene

        if cfg.get("intervene") is None:
            raise ValueError("the intervene stage needs an intervene config, e.g. intervene=protein_demo")
        result["intervene"] = intervene(instantiate(cfg.adapter), sae_dir, _instantiate_data(cfg),
                                        instantiate(cfg.intervene), out / "intervene")
    if stage in ("report", "run"):
        result["report"] = report(out / "analyze", out, title=cfg.report.title, n_cards=cfg.report.n_cards,
                                  interventions=out / "intervene", evaluation=sae_dir / "eval.json", force=force)
        _print_summary(out / "analyze", result["report"], sae_dir / "eval.json")
    return result


def no_labels(tokens: Any, *_: Any, **__: Any) -> Any:
    """The default label builder: fails, naming the config groups that provide labels."""
    raise ValueError("analyze needs labels: choose a label builder, e.g. labels=protein_structure, "
                     "labels=protein_sequence or labels=weather (see conf/labels/)")


def _instantiate_data(cfg: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(cfg.data) if "_target_" in cfg.data else cfg.data.path


def _first_sae_of(paths: Sequence[Path], hook: str | None) -> Path:
    """The first of ``paths`` trained on ``hook`` (by its ``cfg.json``), else the first."""
    for p in paths:
        if hook is not None and json.loads((Path(p) / "cfg.json").read_text()).get("hook_name") == hook:
            return Path(p)
    return Path(paths[0])


def _trained_saes(out: Path) -> list[Path]:
    found = sorted(p.parent for p in (out / "train").glob("*/cfg.json"))
    if not found:
        raise FileNotFoundError(f"no trained SAE under {out / 'train'}: run the train stage first, or set analyze.sae=DIR")
    return found


def _print_summary(analysis_dir: Path, report_path: Path, evaluation: Path | None = None, n: int = 12) -> None:
    """Print where the report is, the SAE's loss recovered (when evaluated) and the strongest links, one
    per family of variables (``aa_*``, ``ss3_*``, ``z_*``...), so one dominant family does not hide the others."""
    import json

    from sciinterp.analysis import load_analysis
    from sciinterp.report import loss_recovered_of, strongest_links

    top = strongest_links(load_analysis(analysis_dir).links, n=10**9)
    family = top["variable"].astype(str).str.split("_").str[0]
    best = top[~family.duplicated()].head(n)
    print(f"\nHTML report: {report_path.resolve()}")
    if evaluation is not None and evaluation.is_file():
        for name, value in loss_recovered_of(json.loads(evaluation.read_text())).items():
            print(f"loss recovered ({name}, SAE spliced in vs zero-ablation): {value:.3f}")
    print("strongest feature-variable links, best per variable family (q < 0.05, held-out split):")
    print(best.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
