"""SFNO adapter: harvest a Spherical Fourier Neural Operator over autoregressive forecasts.

A checkpoint is ``NAME.safetensors`` + ``NAME.json`` (:mod:`.sfno_checkpoint`).  The adapter
normalises inputs with ``mean``/``std``; with ``target="tendency"`` the network predicts
``(x[t+1] - x[t]) / tendency_std``, otherwise the normalised next state.  Hooks are
``encoder``, ``block0`` … ``block{L-1}``, ``decoder``; every grid point of a hooked output
``(batch, channel, lat, lon)`` becomes one token.  One item is one (initial time, lead):
``"2000-01-01T00:00:00/+12h"``; its tokens are the activations of the forward step that
produces the forecast at that lead (lead 6 h = the first step).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciinterp.adapter import HookPoint, TokenBatch
from sciinterp.provenance import state_dict_checksum

from .sfno_checkpoint import (  # re-exported: the checkpoint API predates the split
    DEMO_CHECKPOINT,
    SFNOMeta,
    _paths,
    build_sfno,
    load_sfno,
    load_state_checked,
    save_sfno,
)

__all__ = [
    "DEMO_CHECKPOINT",
    "SFNOAdapter",
    "SFNOMeta",
    "build_sfno",
    "grid_coords",
    "item_key",
    "load_sfno",
    "load_state_checked",
    "save_sfno",
]

log = logging.getLogger(__name__)

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
        Batches computed ahead in a background thread while the consumer works (0: no thread,
        the default: ``harvest_to_store`` already writes in a thread behind the model, and a
        second thread costs ~5 % more CPU on a small model, see ``docs/weather-model.md``).
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
        prefetch: int = 0,
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
        self._tile_cache: dict[tuple, dict[str, np.ndarray]] = {}
        self._time_cache: tuple[Any, np.ndarray | None] = (None, None)

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
        acts = {}
        for h in hooks:
            x = captured[h] if sel is None else captured[h].index_select(0, sel)
            # (B, C, lat, lon) -> (C, B*lat*lon): copies whole fields, no element-wise transpose; its
            # transpose is the (token, C) batch, column-major, which the store keeps column-major
            acts[h] = x.transpose(0, 1).reshape(x.shape[1], -1).float().cpu().T
        n, per = len(rows), shape[0] * shape[1]
        if self._time_cache[0] != (times, per):  # the leads of one batch of initial times share it
            column = np.repeat(np.asarray(times), per)
            column.flags.writeable = False
            self._time_cache = ((times, per), column)
        coords = {"time": self._time_cache[1], **self._tiled(shape, n, lead)}
        return TokenBatch(acts=acts, coords=coords, items=[item_key(t, lead) for t in times])

    def _tiled(self, shape: tuple[int, int], n: int, lead: int) -> dict[str, np.ndarray]:
        """Coordinates of ``n`` fields on grid ``shape`` other than ``time`` (cached, read-only)."""
        key = (shape, n, lead)
        if key not in self._tile_cache:
            per = shape[0] * shape[1]
            coords = {
                "lead": np.full(n * per, lead, dtype=np.int32),
                "level": np.full(n * per, np.nan, dtype=np.float32),
                **{k: np.tile(v, n) for k, v in self._coords(shape).items()},
            }
            for v in coords.values():
                v.flags.writeable = False
            if len(self._tile_cache) > 64:
                self._tile_cache.clear()
            self._tile_cache[key] = coords
        return self._tile_cache[key]
