"""The pipeline's stages as plain functions: harvest -> train -> analyze -> report.

Each function takes plain Python objects (an adapter, a data object or path,
config dataclasses) and an output directory; none needs Hydra.  ``run_from_config``
is the only place that reads a Hydra/OmegaConf config, and it only instantiates
``_target_`` entries and calls these functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sciinterp.stages import run_stage

__all__ = ["HarvestConfig", "harvest", "run_from_config", "train"]

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
    chunk_rows: int = 8192
    """Rows per zarr chunk along ``token``."""
    nonfinite: str = "error"
    """``error`` stops on NaN/inf activations; ``drop`` drops those tokens and counts them."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("HarvestConfig.hooks is empty: name at least one hook point")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"HarvestConfig.dtype={self.dtype!r}: use float32, float16 or bfloat16")


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
        )

    return run_stage("harvest", out, record, work, inputs=_path_inputs(data), force=force) / "store.zarr"


def train(
    source: Any, hook: str | None, saes: Sequence[Any], trainer: Any, out: str | os.PathLike, *, force: bool = False
) -> list[Path]:
    """Train one or more SAEs in one pass over ``source`` (a store, ``.npy`` path or array)."""
    from sciinterp.sae import train as train_saes
    from sciinterp.sources import as_source

    src = as_source(source, hook=hook) if hook else as_source(source)
    record = {"source": _describe(source), "hook": hook, "saes": [asdict(s) for s in saes], "trainer": asdict(trainer)}
    result: list[Path] = []

    def work(d: Path) -> None:
        result.extend(train_saes(src, list(saes), trainer, d))

    stage_dir = run_stage("train", out, record, work, inputs=_path_inputs(source), force=force)
    return result or sorted(p.parent for p in stage_dir.glob("*/cfg.json"))


def run_from_config(cfg: Any) -> Any:
    """Dispatch ``cfg.stage`` from a resolved Hydra config (the CLI's only entry)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    stage = cfg.stage
    out = Path(cfg.out)
    force = bool(cfg.force)
    result: dict[str, Any] = {}
    if stage in ("harvest", "run"):
        adapter = instantiate(cfg.adapter)
        data = instantiate(cfg.data) if "_target_" in cfg.data else cfg.data.path
        hcfg = HarvestConfig(**OmegaConf.to_container(cfg.harvest, resolve=True))
        result["store"] = harvest(adapter, data, hcfg, out, force=force)
    if stage in ("train", "run"):
        source = cfg.train.source or result.get("store") or out / "harvest" / "store.zarr"
        saes = [instantiate(cfg.sae, **dict(o)) for o in (cfg.train.sweep or [{}])]
        result["saes"] = train(source, cfg.train.hook, saes, instantiate(cfg.trainer), out, force=force)
    return result
