"""Bring your own model: wrap any ``torch.nn.Module`` as a sciinterp adapter.

>>> adapter = ModuleAdapter(model, hooks={"block2": "encoder.layers.2"})  # doctest: +SKIP
>>> samples = [Sample("run-001", x, {"time": t})]                         # doctest: +SKIP
>>> harvest_to_store(adapter, samples, ["block2"], "acts.zarr")            # doctest: +SKIP

Each hooked submodule's output is flattened to tokens: every axis except
``channel_dim`` becomes a token axis, in C order, and each sample supplies one
coordinate value per token.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sciinterp.adapter import HookPoint, TokenBatch
from sciinterp.provenance import state_dict_checksum

__all__ = ["ModuleAdapter", "Sample", "to_tokens"]


@dataclass
class Sample:
    """One input item for :class:`ModuleAdapter`.

    Attributes
    ----------
    key
        Unique id of the item (used to resume a harvest).
    inputs
        Positional arguments of ``model(*inputs)`` (a tensor or a tuple of them),
        with a leading batch axis of size 1.
    coords
        Coordinate name -> values, one per token of the hooked output.
    """

    key: str
    inputs: torch.Tensor | tuple[torch.Tensor, ...]
    coords: Mapping[str, Any] = field(default_factory=dict)


def to_tokens(x: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """Move ``channel_dim`` last and flatten the rest: ``(..., d) -> (n_tokens, d)``."""
    return x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])


class ModuleAdapter:
    """Record the outputs of named submodules of any torch model.

    Parameters
    ----------
    model
        The model; run in eval and inference mode.
    hooks
        Hook name -> dotted submodule path (``model.get_submodule`` syntax).
    channel_dim
        Feature axis of the hooked outputs (``-1`` for ``(..., d)``, ``1`` for ``(B, C, H, W)``).
    output_index
        If the hooked modules return tuples, which element is the activation.
    model_id
        Name recorded in the store's provenance.
    """

    name = "module"

    def __init__(
        self,
        model: torch.nn.Module,
        hooks: Mapping[str, str],
        *,
        channel_dim: int = -1,
        output_index: int | None = None,
        model_id: str | None = None,
    ):
        self.model = model.eval()
        self.hooks = dict(hooks)
        for hook, path in self.hooks.items():
            try:
                model.get_submodule(path)
            except AttributeError as err:
                raise ValueError(f"hook {hook!r}: model has no submodule {path!r}") from err
        self.channel_dim = channel_dim
        self.output_index = output_index
        self.model_id = model_id or type(model).__name__

    def hook_names(self) -> list[str]:
        return list(self.hooks)

    def provenance(self) -> dict[str, str]:
        return {"model_id": self.model_id, "model_checksum": state_dict_checksum(self.model)}

    def hook_point(self, hook: str) -> HookPoint:
        if hook not in self.hooks:
            raise KeyError(f"unknown hook {hook!r}; this adapter has {self.hook_names()}")
        return HookPoint(self.model.get_submodule(self.hooks[hook]), self.channel_dim, self.output_index)

    @torch.inference_mode()
    def harvest(
        self, data: Iterable[Sample], hooks: Sequence[str], *, skip: Collection[str] = ()
    ) -> Iterator[TokenBatch]:
        captured: dict[str, torch.Tensor] = {}

        def recorder(hook: str) -> Callable:
            def fn(_module, _inputs, output):
                if self.output_index is not None:
                    output = output[self.output_index]
                captured[hook] = to_tokens(output, self.channel_dim).float()

            return fn

        handles = [self.hook_point(h).module.register_forward_hook(recorder(h)) for h in hooks]
        try:
            for sample in data:
                if sample.key in skip:
                    continue
                captured.clear()
                inputs = sample.inputs if isinstance(sample.inputs, tuple) else (sample.inputs,)
                self.model(*inputs)
                yield TokenBatch(
                    acts={h: captured[h] for h in hooks},
                    coords={k: np.asarray(v) for k, v in sample.coords.items()},
                    items=[sample.key],
                )
        finally:
            for handle in handles:
                handle.remove()
