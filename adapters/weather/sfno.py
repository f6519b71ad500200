"""SFNO adapter: harvest a Spherical Fourier Neural Operator over autoregressive forecasts.

A checkpoint is two files side by side::

    NAME.safetensors   the state dict of torch-harmonics' SphericalFourierNeuralOperator
    NAME.json          {"format": "sciinterp-sfno", "format_version": 1, "model_id", "model": {SFNO
                        kwargs}, "variables": [...], "step_hours": 6, "target": "tendency"|"state",
                        "mean": {var: float}, "std": {var: float}, "tendency_std": {var: float}}

The adapter normalises inputs with ``mean``/``std``; with ``target="tendency"`` the
network predicts ``(x[t+1] - x[t]) / tendency_std``, otherwise the normalised next state.
Hooks are ``encoder``, ``block0`` … ``block{L-1}``, ``decoder``; every grid point of a
hooked output ``(batch, channel, lat, lon)`` becomes one token.  One item is one
(initial time, lead): ``"2000-01-01T00:00:00/+12h"``; its tokens are the activations of the
forward step that produces the forecast at that lead (lead 6 h = the first step).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciinterp.adapter import HookPoint, TokenBatch
from sciinterp.provenance import state_dict_checksum

__all__ = ["DEMO_CHECKPOINT", "SFNOAdapter", "SFNOMeta", "grid_coords", "item_key", "load_state_checked", "save_sfno"]

log = logging.getLogger(__name__)

DEMO_CHECKPOINT = Path(__file__).parent / "data" / "sfno_demo.safetensors"
FORMAT = "sciinterp-sfno"
FORMAT_VERSION = 1


@dataclass
class SFNOMeta:
    """What a checkpoint needs beside its weights (the ``.json`` file)."""

    model: dict[str, Any]
    """Keyword arguments of ``SphericalFourierNeuralOperator`` (``img_size``, ``embed_dim`` ...)."""
    variables: list[str]
    """Input/output channels in order, e.g. ``["z", "u", "v"]``."""
    mean: dict[str, float]
    """Per-variable mean (physical units) subtracted before the network."""
    std: dict[str, float]
    """Per-variable standard deviation dividing the centred inputs."""
    tendency_std: dict[str, float] = field(default_factory=dict)
    """Per-variable std of the one-step change; needed when ``target == "tendency"``."""
    target: str = "tendency"
    """``"tendency"``: the net predicts the change scaled by ``tendency_std``; ``"state"``: the next state."""
    step_hours: int = 6
    """Hours advanced by one forward pass."""
    model_id: str = "sfno"
    """Name recorded in provenance."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (training data, skill scores)."""

    def __post_init__(self) -> None:
        if self.target not in ("tendency", "state"):
            raise ValueError(f"target must be 'tendency' or 'state', got {self.target!r}")
        needed = ["mean", "std"] + (["tendency_std"] if self.target == "tendency" else [])
        for attr in needed:
            missing = [v for v in self.variables if v not in getattr(self, attr)]
            if missing:
                raise ValueError(f"{attr} lacks variables {missing}")
        if self.model.get("in_chans", 3) != len(self.variables):
            raise ValueError(f"model in_chans={self.model.get('in_chans', 3)} but {len(self.variables)} variables {self.variables}")
        if self.step_hours <= 0:
            raise ValueError(f"step_hours must be > 0, got {self.step_hours}")

    def vector(self, attr: str) -> torch.Tensor:
        """``mean`` / ``std`` / ``tendency_std`` as a tensor of shape ``(1, C, 1, 1)``."""
        d = getattr(self, attr)
        return torch.tensor([d[v] for v in self.variables], dtype=torch.float32).reshape(1, -1, 1, 1)


def _paths(checkpoint: str | os.PathLike) -> tuple[Path, Path]:
    p = DEMO_CHECKPOINT if str(checkpoint) == "demo" else Path(checkpoint)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_sfno(path: str | os.PathLike, model: torch.nn.Module, meta: SFNOMeta) -> Path:
    """Write ``model``'s weights and ``meta`` as ``path.safetensors`` + ``path.json`` (atomically)."""
    from safetensors.torch import save_file

    weights, meta_path = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta.__dict__}
    tmp_w, tmp_m = weights.with_name(f".{weights.name}.tmp"), meta_path.with_name(f".{meta_path.name}.tmp")
    save_file(state, str(tmp_w))
    tmp_m.write_text(json.dumps(record, indent=1))
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta_path)
    return weights


def load_state_checked(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, describe: str = "", optional: tuple[str, ...] = ()
) -> None:
    """``model.load_state_dict(state)``, failing with an error naming ``source`` and the first mismatch.

    Entries of the model whose names start with one of ``optional`` (deterministic buffers
    such as spherical-harmonic transform tables) may be absent from ``state``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in own]
    ctx = f" (model built with {describe})" if describe else ""
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit this architecture{ctx}: "
            f"missing parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected parameters {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"checkpoint {source}: parameter {k!r} has shape {tuple(state[k].shape)} in the file "
                f"but {tuple(v.shape)} in the model{ctx}; the checkpoint is for another width/architecture"
            )
    model.load_state_dict(dict(state), strict=not optional)


def build_sfno(kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """``SphericalFourierNeuralOperator(**kwargs)`` (``img_size`` as a tuple)."""
    from torch_harmonics.examples.models import SphericalFourierNeuralOperator

    kw = dict(kwargs)
    if "img_size" in kw:
        kw["img_size"] = tuple(kw["img_size"])
    return SphericalFourierNeuralOperator(**kw)


def load_sfno(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, SFNOMeta]:
    """Build the network described by ``NAME.json`` and load ``NAME.safetensors`` into it."""
    from safetensors.torch import load_file

    weights, meta_path = _paths(checkpoint)
    for p in (weights, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"SFNO checkpoint file not found: {p} (a checkpoint is NAME.safetensors + NAME.json)")
    rec = json.loads(meta_path.read_text())
    if rec.get("format") != FORMAT or rec.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format {rec.get('format')!r} version {rec.get('format_version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    fields = {k: v for k, v in rec.items() if k not in ("format", "format_version")}
    try:
        meta = SFNOMeta(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{meta_path}: {err}") from err
    model = build_sfno(meta.model)
    describe = ", ".join(f"{k}={meta.model[k]}" for k in ("img_size", "embed_dim", "num_layers", "scale_factor") if k in meta.model)
    load_state_checked(model, load_file(str(weights)), str(weights), f"{describe} from {meta_path.name}")
    return model, meta


# -- coordinates -----------------------------------------------------------
def grid_coords(nlat: int, nlon: int, grid: str = "equiangular") -> dict[str, np.ndarray]:
    """Token coordinates of one ``(nlat, nlon)`` field in C order: ``lat``, ``lon``, ``area_weight``."""
    from .shallow_water import grid_latitudes

    lat = grid_latitudes(nlat, grid)
    lon = np.arange(nlon) * (360.0 / nlon)
    w = np.clip(np.cos(np.radians(lat)), 0.0, None)
    w = w / w.mean()
    return {
        "lat": np.repeat(lat, nlon),
        "lon": np.tile(lon, nlat),
        "area_weight": np.repeat(w, nlon),
    }


def item_key(time: str, lead: int) -> str:
    """Store item of one (initial time, lead hours): ``"2000-01-01T00:00:00/+6h"``."""
    return f"{time}/+{lead}h"


def _prefetched(batches: Iterator[TokenBatch], depth: int) -> Iterator[TokenBatch]:
    """Run the generator ``batches`` in a background thread, at most ``depth`` items ahead.

    Errors in the thread are re-raised here; closing this generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.inference_mode():
                for batch in batches:
                    if not put(batch):
                        break
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
        finally:
            batches.close()

    thread = threading.Thread(target=work, name="sciinterp-sfno-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def iso_times(ds: xr.Dataset) -> list[str]:
    """ISO 8601 strings (seconds) of ``ds.time``."""
    return [str(np.datetime_as_string(t, unit="s")) for t in np.atleast_1d(ds["time"].values)]


class SFNOAdapter:
    """Harvest a torch-harmonics SFNO over autoregressive forecasts.

    Parameters
    ----------
    checkpoint
        ``NAME.safetensors`` (with ``NAME.json`` beside it), or ``"demo"`` for the shipped
        demo model trained on shallow-water trajectories.
    model, meta
        Instead of ``checkpoint``: an already built network and its :class:`SFNOMeta`.
    n_steps
        Forecast steps harvested from every initial time (leads ``step_hours * 1 … n_steps``).
    batch_size
        Initial times run together.
    device
        Torch device; activations are moved to CPU as float32.
    autocast
        Run the network under ``torch.autocast(device, bfloat16)`` (GPU).
    prefetch
        Batches computed ahead in a background thread while the consumer writes (0: no thread).
    """

    name = "sfno"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = "demo",
        *,
        model: torch.nn.Module | None = None,
        meta: SFNOMeta | None = None,
        n_steps: int = 1,
        batch_size: int = 4,
        device: str = "cpu",
        autocast: bool = False,
        prefetch: int = 2,
    ):
        if model is not None:
            if meta is None:
                raise ValueError("pass `meta` (variables and normalisation) together with `model`")
            self.model, self.meta, self.source = model, meta, "<in-memory model>"
        elif checkpoint is None:
            raise ValueError("SFNOAdapter needs a checkpoint path (or 'demo'), or model= and meta=")
        else:
            self.model, self.meta = self._load(checkpoint)
            self.source = str(_paths(checkpoint)[0])
        if n_steps < 1 or batch_size < 1:
            raise ValueError(f"n_steps={n_steps} and batch_size={batch_size} must be >= 1")
        self.n_steps, self.batch_size = int(n_steps), int(batch_size)
        self.device = torch.device(device)
        self.autocast = bool(autocast)
        self.prefetch = int(prefetch)
        self.model = self.model.to(self.device).eval()
        self._norm = {k: self.meta.vector(k).to(self.device) for k in ("mean", "std")}
        if self.meta.target == "tendency":
            self._norm["tendency_std"] = self.meta.vector("tendency_std").to(self.device)
        self._coord_cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def _load(self, checkpoint) -> tuple[torch.nn.Module, SFNOMeta]:
        return load_sfno(checkpoint)

    # -- protocol ------------------------------------------------------------
    def _modules(self) -> dict[str, torch.nn.Module]:
        m = self.model
        return {"encoder": m.encoder, **{f"block{i}": b for i, b in enumerate(m.blocks)}, "decoder": m.decoder}

    def hook_names(self) -> list[str]:
        return list(self._modules())

    def hook_point(self, hook: str) -> HookPoint:
        modules = self._modules()
        if hook not in modules:
            raise KeyError(f"unknown hook {hook!r}; this adapter has {list(modules)}")
        return HookPoint(modules[hook], channel_dim=1)

    def provenance(self) -> dict[str, str]:
        return {
            "model_id": self.meta.model_id,
            "model_checksum": state_dict_checksum(self.model),
            "checkpoint": self.source,
            "variables": ",".join(self.meta.variables),
            "step_hours": str(self.meta.step_hours),
            "n_steps": str(self.n_steps),
        }

    @property
    def grid(self) -> tuple[int, int]:
        """``(nlat, nlon)`` of the model's input grid."""
        return tuple(self.model.img_size)

    def _grid_name(self, shape: tuple[int, int]) -> str:
        m = self.model
        if tuple(shape) == tuple(m.img_size):
            return getattr(m, "grid", None) or m.trans_down.grid
        if tuple(shape) == (m.h, m.w):
            return getattr(m, "grid_internal", None) or m.trans.grid
        raise ValueError(f"hooked output grid {shape} is neither the input grid {m.img_size} nor the internal {(m.h, m.w)}")

    def _coords(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        if shape not in self._coord_cache:
            self._coord_cache[shape] = grid_coords(*shape, self._grid_name(shape))
        return self._coord_cache[shape]

    # -- inputs --------------------------------------------------------------
    def prepare(self, data: Any) -> xr.Dataset:
        """Open/validate ``data`` (CF dataset or path) and check it is on the model's grid."""
        from .cf import open_dataset, prepare_dataset

        ds = open_dataset(data) if isinstance(data, (str, os.PathLike)) else data
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"SFNO input must be an xarray.Dataset or a file path, got {type(ds).__name__}")
        return self._check_grid(prepare_dataset(ds, self.meta.variables))

    def _check_grid(self, ds: xr.Dataset) -> xr.Dataset:
        if "time" not in ds.dims:
            raise ValueError(f"input needs a 'time' dimension of initial times; it has dims {dict(ds.sizes)}")
        shape = (ds.sizes["lat"], ds.sizes["lon"])
        if shape != self.grid:
            raise ValueError(f"input grid is {shape[0]}x{shape[1]} (lat x lon) but the model ({self.source}) needs {self.grid[0]}x{self.grid[1]}")
        want = np.unique(self._coords(self.grid)["lat"])[::-1]
        err = np.abs(ds["lat"].values - want).max()
        if err > 0.01:
            raise ValueError(
                f"input latitudes differ from the model's {self._grid_name(self.grid)} grid by up to {err:.3f} degrees "
                f"(input {ds['lat'].values[:3]}..., model {want[:3]}...); regrid the data first"
            )
        return ds

    def _tensor(self, ds: xr.Dataset) -> torch.Tensor:
        """``(time, C, lat, lon)`` float32 physical state."""
        arr = np.stack([ds[v].transpose("time", "lat", "lon").values for v in self.meta.variables], axis=1)
        return torch.as_tensor(arr, dtype=torch.float32, device=self.device)

    # -- model ---------------------------------------------------------------
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance a physical state ``(B, C, lat, lon)`` by ``step_hours``."""
        n = self._norm
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            y = self.model((x - n["mean"]) / n["std"]).float()
        if self.meta.target == "tendency":
            return x + y * n["tendency_std"]
        return y * n["std"] + n["mean"]

    @torch.inference_mode()
    def forecast(self, data: xr.Dataset | np.ndarray | torch.Tensor, n_steps: int | None = None) -> xr.Dataset:
        """Roll the model forward from every initial time; fields in physical units.

        Parameters
        ----------
        data
            A CF dataset ``(time, lat, lon)`` of initial states, or an array ``(B, C, lat, lon)``
            (channels in ``meta.variables`` order; ``time`` then counts 0 … B-1).
        n_steps
            Steps to take (default ``self.n_steps``).

        Returns
        -------
        xarray.Dataset
            One variable per channel, dims ``(time, lead, lat, lon)``, ``lead`` in hours
            (``step_hours`` … ``n_steps * step_hours``).
        """
        n_steps = self.n_steps if n_steps is None else int(n_steps)
        if isinstance(data, xr.Dataset):
            ds = self.prepare(data)
            x0, times, lat, lon = self._tensor(ds), ds["time"].values, ds["lat"].values, ds["lon"].values
        else:
            x0 = torch.as_tensor(np.asarray(data), dtype=torch.float32, device=self.device)
            if x0.ndim != 4 or x0.shape[1] != len(self.meta.variables) or tuple(x0.shape[2:]) != self.grid:
                raise ValueError(f"state must have shape (B, {len(self.meta.variables)}, {self.grid[0]}, {self.grid[1]}), got {tuple(x0.shape)}")
            times = np.arange(x0.shape[0])
            lat = np.unique(self._coords(self.grid)["lat"])[::-1]
            lon = np.arange(self.grid[1]) * (360.0 / self.grid[1])
        out = []
        for start in range(0, x0.shape[0], self.batch_size):
            x, steps = x0[start : start + self.batch_size], []
            for _ in range(n_steps):
                x = self.step(x)
                steps.append(x.cpu())
            out.append(torch.stack(steps, dim=1))
        arr = torch.cat(out).numpy()  # (time, lead, C, lat, lon)
        leads = self.meta.step_hours * np.arange(1, n_steps + 1)
        dims = ("time", "lead", "lat", "lon")
        return xr.Dataset(
            {v: (dims, arr[:, :, i]) for i, v in enumerate(self.meta.variables)},
            coords={"time": times, "lead": ("lead", leads, {"units": "hours"}), "lat": lat, "lon": lon},
            attrs={"model_id": self.meta.model_id},
        )

    # -- harvest -------------------------------------------------------------
    def harvest(self, data: Any, hooks: Sequence[str], *, skip: Collection[str] = ()) -> Iterator[TokenBatch]:
        """Yield one :class:`TokenBatch` per (batch of initial times, lead) with activations at ``hooks``.

        Tokens are ordered item by item (initial time, then lat north→south, then lon);
        coordinates: ``time`` (initial time, ISO), ``lead`` (h), ``level`` (NaN), ``lat``,
        ``lon``, ``area_weight``.  Items in ``skip`` are not yielded (a rollout still runs
        through them when a later lead is needed).  With ``prefetch > 0`` the rollouts run
        in a background thread, up to ``prefetch`` batches ahead of the consumer (the store
        writes then overlap the model's forward passes).
        """
        modules = self._modules()
        unknown = [h for h in hooks if h not in modules]
        if unknown or not hooks:
            raise ValueError(f"unknown hooks {unknown or hooks}; this adapter has {list(modules)}")
        ds = self.prepare(data)
        batches = self._rollouts(ds, list(hooks), skip)
        yield from (_prefetched(batches, self.prefetch) if self.prefetch else batches)

    @torch.inference_mode()
    def _rollouts(self, ds: xr.Dataset, hooks: list[str], skip: Collection[str]) -> Iterator[TokenBatch]:
        modules = self._modules()
        times = iso_times(ds)
        leads = [self.meta.step_hours * k for k in range(1, self.n_steps + 1)]
        todo = [i for i, t in enumerate(times) if any(item_key(t, ld) not in skip for ld in leads)]
        captured: dict[str, torch.Tensor] = {}

        def recorder(hook: str):
            def fn(_module, _inputs, output):
                captured[hook] = output

            return fn

        handles = [modules[h].register_forward_hook(recorder(h)) for h in hooks]
        try:
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                x = self._tensor(ds.isel(time=idx))
                last = max(s for s, ld in enumerate(leads) if any(item_key(times[i], ld) not in skip for i in idx))
                for lead in leads[: last + 1]:
                    want = [j for j, i in enumerate(idx) if item_key(times[i], lead) not in skip]
                    captured.clear()
                    x = self.step(x)
                    if want:
                        yield self._batch(captured, hooks, [times[idx[j]] for j in want], want, lead)
        finally:
            for h in handles:
                h.remove()

    def _batch(self, captured, hooks, times: list[str], rows: list[int], lead: int) -> TokenBatch:
        shapes = {h: tuple(captured[h].shape[-2:]) for h in hooks}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"hooks live on different grids {shapes}: a store holds one token grid, "
                "so harvest hooks of different resolution into separate stores"
            )
        shape = next(iter(shapes.values()))
        everyone = rows == list(range(captured[hooks[0]].shape[0]))  # the common case: no copy for the selection
        sel = None if everyone else torch.as_tensor(rows, device=self.device)
        acts = {h: (captured[h] if sel is None else captured[h].index_select(0, sel))
                .movedim(1, -1).reshape(-1, captured[h].shape[1]).float().cpu() for h in hooks}
        grid = self._coords(shape)
        n, per = len(rows), shape[0] * shape[1]
        coords = {
            "time": np.repeat(np.asarray(times), per),
            "lead": np.full(n * per, lead, dtype=np.int32),
            "level": np.full(n * per, np.nan, dtype=np.float32),
            **{k: np.tile(v, n) for k, v in grid.items()},
        }
        return TokenBatch(acts=acts, coords=coords, items=[item_key(t, lead) for t in times])
