"""FourCastNet-v2 (ECMWF ai-models "fourcastnetv2-small") through the SFNO adapter.

The network code comes from ``pip install --no-deps ai-models-fourcastnetv2==0.0.3``
(``FourierNeuralOperatorNet``); its weights are not downloadable here, so bring the three
files of a released checkpoint directory::

    weights.tar        torch.save({"model_state": {"module.<name>": tensor, ...}, ...})
    global_means.npy   (1, >= C, 1, 1) per-channel means
    global_stds.npy    (1, >= C, 1, 1) per-channel standard deviations

Channels are named ``param`` (surface: ``10u``, ``2t``, ``msl`` …) or ``param + level``
(``u850``, ``z500`` …); the network predicts the normalised next state (6 h).  Hooks,
tokens, items and :meth:`forecast` are those of :class:`~.sfno.SFNOAdapter`.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .sfno import SFNOAdapter, SFNOMeta, load_state_checked

__all__ = ["FCN2_CHANNELS", "FourCastNetV2Adapter", "build_fcn2", "load_fcn2", "save_fcn2"]

_LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
FCN2_CHANNELS: list[str] = ["10u", "10v", "100u", "100v", "2t", "sp", "msl", "tcwv"] + [
    f"{p}{lev}" for p in ("u", "v", "z", "t", "r") for lev in _LEVELS
]
"""The 73 channels of the released fourcastnetv2-small, in network order."""

_TRANSFORM_BUFFERS = ("trans_down.", "itrans_up.", "trans.", "itrans.")
_INSTALL = "FourCastNet-v2 needs its network code: pip install --no-deps ai-models-fourcastnetv2==0.0.3"


def _network_class():
    """``FourierNeuralOperatorNet``, with a shim for ``numpy.lib.arraypad`` (gone from NumPy 2)."""
    try:
        import numpy.lib.arraypad  # noqa: F401
    except ImportError:
        shim = types.ModuleType("numpy.lib.arraypad")
        shim.pad = np.pad
        sys.modules["numpy.lib.arraypad"] = shim
    try:
        from ai_models_fourcastnetv2.fourcastnetv2.sfnonet import FourierNeuralOperatorNet
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return FourierNeuralOperatorNet


def build_fcn2(kwargs: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """``FourierNeuralOperatorNet(**kwargs)``; no kwargs gives the released 721x1440, 73-channel net."""
    kw = dict(kwargs or {})
    if "img_size" in kw:
        kw["img_size"] = tuple(kw["img_size"])
    return _network_class()(**kw)


def split_channel(name: str) -> tuple[str, float | None]:
    """``"u850"`` -> ``("u", 850.0)``; surface channels (``"10u"``, ``"msl"``) -> ``(name, None)``."""
    m = re.fullmatch(r"([a-z]+)(\d+)", name)
    return (m.group(1), float(m.group(2))) if m else (name, None)


def save_fcn2(directory: str | os.PathLike, model: torch.nn.Module, means: np.ndarray, stds: np.ndarray) -> Path:
    """Write a checkpoint directory in the released layout (``module.``-prefixed ``model_state``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model_state": state, "epoch": 0}, d / "weights.tar")
    np.save(d / "global_means.npy", np.asarray(means, dtype=np.float32).reshape(1, -1, 1, 1))
    np.save(d / "global_stds.npy", np.asarray(stds, dtype=np.float32).reshape(1, -1, 1, 1))
    return d


def load_fcn2(
    directory: str | os.PathLike, channels: Sequence[str] = FCN2_CHANNELS, model_kwargs: Mapping[str, Any] | None = None
) -> tuple[torch.nn.Module, SFNOMeta]:
    """Build the network and load a released-layout checkpoint directory (see the module docstring)."""
    d = Path(directory)
    files = {n: d / n for n in ("weights.tar", "global_means.npy", "global_stds.npy")}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"FourCastNet-v2 checkpoint file not found: {path}")
    kwargs = {**dict(model_kwargs or {}), "in_chans": len(channels), "out_chans": len(channels)}
    model = build_fcn2(kwargs)
    record = torch.load(files["weights.tar"], map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or "model_state" not in record:
        raise ValueError(f"{files['weights.tar']} has no 'model_state' entry; is it a FourCastNet-v2 checkpoint?")
    state = {k.removeprefix("module."): v for k, v in record["model_state"].items()}
    state = {k: v for k, v in state.items() if not k.startswith("norm.")}  # unused in the released net
    describe = f"img_size={tuple(model.img_size)}, embed_dim={model.embed_dim}, num_layers={model.num_layers}, {len(channels)} channels"
    load_state_checked(model, state, str(files["weights.tar"]), describe, optional=_TRANSFORM_BUFFERS)
    stats = {}
    for key in ("global_means.npy", "global_stds.npy"):
        arr = np.load(files[key]).reshape(-1)
        if arr.size < len(channels):
            raise ValueError(f"{files[key]} holds {arr.size} channels, the model needs {len(channels)}")
        stats[key] = dict(zip(channels, arr[: len(channels)].astype(float).tolist()))
    meta = SFNOMeta(
        model={**kwargs, "img_size": list(model.img_size)}, variables=list(channels),
        mean=stats["global_means.npy"], std=stats["global_stds.npy"], target="state", step_hours=6,
        model_id=f"fourcastnetv2:{d.name}",
    )  # fmt: skip
    return model, meta


class FourCastNetV2Adapter(SFNOAdapter):
    """:class:`~.sfno.SFNOAdapter` for a FourCastNet-v2 checkpoint directory.

    Parameters
    ----------
    checkpoint
        Directory with ``weights.tar``, ``global_means.npy``, ``global_stds.npy``.
    channels
        Channel names in network order (default: the released 73).
    model_kwargs
        ``FourierNeuralOperatorNet`` arguments other than the channel counts (default: released net).
    **kwargs
        ``n_steps``, ``batch_size``, ``device``, ``autocast`` as for :class:`SFNOAdapter`.
    """

    name = "fcn2"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        channels: Sequence[str] = FCN2_CHANNELS,
        model_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        self._channels, self._model_kwargs = list(channels), dict(model_kwargs or {})
        self._split = [split_channel(c) for c in self._channels]
        super().__init__(checkpoint, **kwargs)
        self.source = str(Path(checkpoint) / "weights.tar")

    def _load(self, checkpoint) -> tuple[torch.nn.Module, SFNOMeta]:
        return load_fcn2(checkpoint, self._channels, self._model_kwargs)

    def prepare(self, data: Any) -> xr.Dataset:
        from .cf import open_dataset, prepare_dataset

        ds = open_dataset(data) if isinstance(data, (str, os.PathLike)) else data
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"FourCastNet-v2 input must be an xarray.Dataset or a file path, got {type(ds).__name__}")
        names = list(dict.fromkeys(v for v, _ in self._split))
        levels = sorted({lev for _, lev in self._split if lev is not None}) or None
        return self._check_grid(prepare_dataset(ds, names, levels=levels))

    def _tensor(self, ds: xr.Dataset) -> torch.Tensor:
        fields = []
        for var, lev in self._split:
            da = ds[var] if lev is None else ds[var].sel(level=lev)
            fields.append(da.transpose("time", "lat", "lon").values)
        return torch.as_tensor(np.stack(fields, axis=1), dtype=torch.float32, device=self.device)
