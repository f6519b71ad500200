"""SFNO checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (:class:`SFNOMeta`).

A checkpoint is two files side by side::

    NAME.safetensors   the state dict of torch-harmonics' SphericalFourierNeuralOperator
    NAME.json          {"format": "sciinterp-sfno", "format_version": 1, "model_id", "model": {SFNO
                        kwargs}, "variables": [...], "step_hours": 6, "target": "tendency"|"state",
                        "mean": {var: float}, "std": {var: float}, "tendency_std": {var: float}}

Written atomically; loading builds the network from the ``model`` kwargs and checks every
parameter's name and shape, naming the file and the first mismatch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEMO_CHECKPOINT", "SFNOMeta", "build_sfno", "load_sfno", "load_state_checked", "save_sfno"]

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
