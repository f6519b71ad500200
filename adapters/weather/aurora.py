"""Aurora adapter: harvest Microsoft Aurora's latent tokens over autoregressive forecasts.

Needs the optional extra ``pip install 'sciinterp[aurora]'`` (``microsoft-aurora``).  Aurora
embeds patches of ``patch_size`` x ``patch_size`` grid points into ``latent_levels`` latent
levels (index 0 is the surface, 1 … the Perceiver's atmospheric latents) and runs a 3-D Swin
U-Net over them.  Every latent token becomes one sciinterp token whose ``lat``/``lon`` are the
centre of its patch (or merged patch, at the U-Net's coarser stages) and whose
``latent_level`` is its level index; ``level`` is NaN because latent levels have no pressure.

Hooks: ``encoder`` (Perceiver encoder output), ``enc_layer{i}`` / ``dec_layer{i}`` (Swin stages,
first element of their output tuple), ``backbone`` (U-Net output, 2 x embed_dim).
Items are (initial time, lead) as for :mod:`.sfno`; an initial time needs the state 6 h
before it (Aurora's two-step history).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciinterp.adapter import HookPoint, TokenBatch
from sciinterp.provenance import state_dict_checksum

from .sfno import item_key, iso_times

__all__ = ["TINY_CONFIG", "AuroraAdapter", "build_aurora"]

log = logging.getLogger(__name__)

TINY_CONFIG: dict[str, Any] = dict(
    embed_dim=64, encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), encoder_num_heads=(2, 4, 8),
    decoder_num_heads=(8, 4, 2), num_heads=4, window_size=(2, 4, 8), use_lora=False,
)
"""A ~3M-parameter Aurora for tests and CPU demos (random weights unless a checkpoint is given)."""

_INSTALL = "the Aurora adapter needs microsoft-aurora: pip install 'sciinterp[aurora]' (microsoft-aurora==2.0.1 torchvision==0.29.1)"


def _aurora():
    try:
        import aurora
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL) from err
    return aurora


def build_aurora(config: str | Mapping[str, Any] = "tiny") -> torch.nn.Module:
    """An Aurora network: ``"tiny"`` (:data:`TINY_CONFIG`), ``"small"`` (``AuroraSmall``), ``"full"``, or kwargs."""
    aurora = _aurora()
    if isinstance(config, str):
        builders = {"tiny": lambda: aurora.Aurora(**TINY_CONFIG), "small": aurora.AuroraSmall, "full": aurora.Aurora}
        if config not in builders:
            raise ValueError(f"unknown Aurora config {config!r}; use one of {sorted(builders)} or a dict of Aurora kwargs")
        return builders[config]()
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config).items()}
    return aurora.Aurora(**kw)


def _centres(values: np.ndarray, size: int, n_levels: int) -> list[np.ndarray]:
    """Patch centres at full patch resolution and after each 2x merge (odd sizes padded)."""
    out = [values[: size * (len(values) // size)].reshape(-1, size).mean(axis=1)]
    for _ in range(n_levels - 1):
        c = out[-1]
        if len(c) % 2:
            c = np.append(c, np.nan)
        out.append(np.nanmean(c.reshape(-1, 2), axis=1))
    return out


class AuroraAdapter:
    """Harvest an Aurora model's latent tokens.

    Parameters
    ----------
    checkpoint
        Local Aurora checkpoint (``.ckpt``) or ``None`` for random weights (tests, demos).
    config
        Architecture: ``"tiny"``, ``"small"``, ``"full"`` or a dict of ``aurora.Aurora`` kwargs.
    levels
        Pressure levels (hPa) to feed; ``None`` uses every level of the data.
    static_names
        Aurora static variable -> dataset variable (surface geopotential is ``zs`` in the data).
    n_steps, batch_size, device
        Forecast steps per initial time, initial times per forward, torch device.
    seed
        Seed of the random initialisation when ``checkpoint`` is ``None``.
    """

    name = "aurora"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        config: str | Mapping[str, Any] = "tiny",
        levels: Sequence[float] | None = None,
        static_names: Mapping[str, str] | None = None,
        n_steps: int = 1,
        batch_size: int = 1,
        device: str = "cpu",
        seed: int = 0,
    ):
        if n_steps < 1 or batch_size < 1:
            raise ValueError(f"n_steps={n_steps} and batch_size={batch_size} must be >= 1")
        torch.manual_seed(seed)
        self.model = build_aurora(config)
        cfg_name = config if isinstance(config, str) else "custom"
        if checkpoint is not None:
            path = os.fspath(checkpoint)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Aurora checkpoint not found: {path}")
            try:
                self.model.load_checkpoint_local(path, strict=True)
            except (RuntimeError, KeyError) as err:
                problems = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
                raise ValueError(
                    f"checkpoint {path} does not fit the Aurora config {cfg_name!r}: {problems[0]}"
                    + (f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else "")
                ) from None
            self.model_id = f"aurora-{cfg_name}:{os.path.basename(path)}"
        else:
            self.model_id = f"aurora-{cfg_name}-random-seed{seed}"
        self.device = torch.device(device)
        self.model = self.model.to(self.device).eval()
        self.levels = None if levels is None else [float(v) for v in levels]
        self.static_names = dict(static_names or {"lsm": "lsm", "z": "zs", "slt": "slt"})
        self.n_steps, self.batch_size = int(n_steps), int(batch_size)
        self.step_hours = int(self.model.timestep.total_seconds() // 3600)

    # -- protocol ------------------------------------------------------------
    def _modules(self) -> dict[str, tuple[torch.nn.Module, int | None]]:
        bb = self.model.backbone
        mods: dict[str, tuple[torch.nn.Module, int | None]] = {"encoder": (self.model.encoder, None)}
        mods.update({f"enc_layer{i}": (m, 0) for i, m in enumerate(bb.encoder_layers)})
        mods.update({f"dec_layer{i}": (m, 0) for i, m in enumerate(bb.decoder_layers)})
        mods["backbone"] = (bb, None)
        return mods

    def hook_names(self) -> list[str]:
        return list(self._modules())

    def hook_point(self, hook: str) -> HookPoint:
        mods = self._modules()
        if hook not in mods:
            raise KeyError(f"unknown hook {hook!r}; this adapter has {list(mods)}")
        module, index = mods[hook]
        return HookPoint(module, channel_dim=-1, output_index=index)

    def provenance(self) -> dict[str, str]:
        return {"model_id": self.model_id, "model_checksum": state_dict_checksum(self.model), "n_steps": str(self.n_steps)}

    # -- inputs --------------------------------------------------------------
    def prepare(self, data: Any) -> xr.Dataset:
        """Open and normalise a CF dataset holding Aurora's surface, atmospheric and static variables."""
        from .cf import open_dataset, prepare_dataset

        ds = open_dataset(data) if isinstance(data, (str, os.PathLike)) else data
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"Aurora input must be an xarray.Dataset or a file path, got {type(ds).__name__}")
        m = self.model
        names = list(m.surf_vars) + list(m.atmos_vars) + [self.static_names[k] for k in m.static_vars]
        return prepare_dataset(ds, list(dict.fromkeys(names)), levels=self.levels)

    def _batch(self, ds: xr.Dataset, idx: list[int]):
        """Aurora ``Batch`` for initial times ``idx`` (each with its predecessor as history)."""
        aurora = _aurora()
        m = self.model

        def hist(name: str) -> torch.Tensor:
            da = ds[name]
            arr = np.stack([da.isel(time=[i - 1, i]).values for i in idx])  # (B, 2, [level,] lat, lon)
            return torch.as_tensor(arr, dtype=torch.float32)

        static = {}
        for k in m.static_vars:
            da = ds[self.static_names[k]]
            static[k] = torch.as_tensor((da.isel(time=0) if "time" in da.dims else da).values, dtype=torch.float32)
        times = ds["time"].values
        return aurora.Batch(
            surf_vars={k: hist(k) for k in m.surf_vars},
            static_vars=static,
            atmos_vars={k: hist(k) for k in m.atmos_vars},
            metadata=aurora.Metadata(
                lat=torch.as_tensor(ds["lat"].values, dtype=torch.float32),
                lon=torch.as_tensor(ds["lon"].values, dtype=torch.float32),
                time=tuple(times[i].astype("datetime64[s]").item() for i in idx),
                atmos_levels=tuple(float(v) for v in ds["level"].values),
            ),
        )

    def _init_indices(self, ds: xr.Dataset) -> list[int]:
        t = ds["time"].values
        step = np.timedelta64(self.step_hours, "h")
        return [i for i in range(1, len(t)) if t[i] - t[i - 1] == step]

    def token_coords(self, lat: np.ndarray, lon: np.ndarray, n_tokens: int) -> dict[str, np.ndarray]:
        """Coordinates of the ``n_tokens`` latent tokens of one item (order level, lat, lon)."""
        p, C = self.model.patch_size, self.model.encoder.latent_levels
        H, W = len(lat) // p, len(lon) // p
        n_stages = len(self.model.backbone.encoder_layers)
        lats, lons = _centres(lat, p, n_stages), _centres(lon, p, n_stages)
        for la, lo in zip(lats, lons):
            if C * len(la) * len(lo) == n_tokens:
                break
        else:
            raise ValueError(f"{n_tokens} tokens fit no stage of the {C}x{H}x{W} latent grid")
        w = np.clip(np.cos(np.radians(la)), 0, None)
        w = w / w.mean()
        per = len(la) * len(lo)
        return {
            "level": np.full(C * per, np.nan, dtype=np.float32),
            "latent_level": np.repeat(np.arange(C, dtype=np.int16), per),
            "lat": np.tile(np.repeat(la, len(lo)), C),
            "lon": np.tile(lo, C * len(la)),
            "area_weight": np.tile(np.repeat(w, len(lo)), C),
        }

    # -- harvest -------------------------------------------------------------
    @torch.inference_mode()
    def harvest(self, data: Any, hooks: Sequence[str], *, skip: Collection[str] = ()) -> Iterator[TokenBatch]:
        """Yield one :class:`TokenBatch` per (batch of initial times, lead); see the module docstring."""
        aurora = _aurora()
        mods = self._modules()
        unknown = [h for h in hooks if h not in mods]
        if unknown or not hooks:
            raise ValueError(f"unknown hooks {unknown or hooks}; this adapter has {list(mods)}")
        ds = self.prepare(data)
        times = iso_times(ds)
        leads = [self.step_hours * k for k in range(1, self.n_steps + 1)]
        todo = [i for i in self._init_indices(ds) if any(item_key(times[i], ld) not in skip for ld in leads)]
        lat = ds["lat"].values
        lat = lat[: len(lat) - len(lat) % self.model.patch_size]  # Aurora crops one extra row
        lon = ds["lon"].values
        captured: dict[str, torch.Tensor] = {}

        def recorder(hook: str, index: int | None):
            def fn(_m, _i, out):
                captured[hook] = out if index is None else out[index]

            return fn

        handles = [mods[h][0].register_forward_hook(recorder(h, mods[h][1])) for h in hooks]
        try:
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                last = max(s for s, ld in enumerate(leads) if any(item_key(times[i], ld) not in skip for i in idx))
                preds = aurora.rollout(self.model, self._batch(ds, idx), steps=last + 1)
                for lead, _pred in zip(leads, preds):
                    want = [j for j, i in enumerate(idx) if item_key(times[i], lead) not in skip]
                    if want:
                        yield self._token_batch(captured, hooks, [times[idx[j]] for j in want], want, lead, lat, lon)
                    captured.clear()
        finally:
            for h in handles:
                h.remove()

    def _token_batch(self, captured, hooks, times, rows, lead, lat, lon) -> TokenBatch:
        sizes = {h: captured[h].shape[1] for h in hooks}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"hooks have different token grids {sizes}; harvest them into separate stores")
        n_tok = next(iter(sizes.values()))
        sel = torch.as_tensor(rows, device=captured[hooks[0]].device)
        acts = {h: captured[h].index_select(0, sel).reshape(-1, captured[h].shape[-1]).float().cpu() for h in hooks}
        grid = self.token_coords(lat, lon, n_tok)
        n = len(rows)
        coords = {
            "time": np.repeat(np.asarray(times), n_tok),
            "lead": np.full(n * n_tok, lead, dtype=np.int32),
            **{k: np.tile(v, n) for k, v in grid.items()},
        }
        return TokenBatch(acts=acts, coords=coords, items=[item_key(t, lead) for t in times])

    @torch.inference_mode()
    def forecast(self, data: Any, n_steps: int | None = None) -> list[Any]:
        """Aurora predictions (``aurora.Batch``, physical units) for each step from the first initial time batch."""
        aurora = _aurora()
        ds = self.prepare(data)
        idx = self._init_indices(ds)[: self.batch_size]
        preds = aurora.rollout(self.model, self._batch(ds, idx), steps=n_steps or self.n_steps)
        return [dataclasses.replace(p).to("cpu") for p in preds]
