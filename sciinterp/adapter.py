"""The adapter contract: what a scientific model offers to sciinterp.

An adapter wraps one model (ESM-2, SFNO, Aurora, any ``torch.nn.Module``) and turns
a domain input (a FASTA file, a CF ``xarray.Dataset``) into :class:`TokenBatch` es:
activations at named hook points, flattened to tokens, each token carrying the
domain coordinates it came from.  Adapters *fit* the :class:`Adapter` protocol;
they never need to inherit from it.

Adapters are discovered through the ``sciinterp.adapters`` entry-point group
(see :mod:`sciinterp.registry`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Adapter", "HookPoint", "Spliceable", "TokenBatch", "check_coords"]


def check_coords(n_tokens: int, coords: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` unless every coordinate is a 1-D array of ``n_tokens``.

    The one "handshake" helper: every place that pairs activations with
    coordinates calls it, so mismatches fail loudly and name the culprit.
    """
    ctx = f" in {where}" if where else ""
    for name, values in coords.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] != n_tokens:
            raise ValueError(
                f"coordinate {name!r}{ctx} has shape {arr.shape}, expected ({n_tokens},): "
                "every token needs exactly one value of every coordinate"
            )


@dataclass
class TokenBatch:
    """Activations of one forward pass, flattened to tokens.

    Attributes
    ----------
    acts
        Hook name -> activations, shape ``(n_tokens, d_hook)``.
    coords
        Coordinate name -> values, shape ``(n_tokens,)``; e.g. ``protein``,
        ``position`` (1-based), ``residue`` or ``time``, ``lead``, ``level``,
        ``lat``, ``lon``, ``area_weight``.
    items
        Keys of the input items (protein ids, valid times, ...) whose tokens are
        *all* in this batch.  A batch never holds part of an item; the store uses
        these keys to resume an interrupted harvest without duplicates.
    """

    acts: dict[str, torch.Tensor]
    coords: dict[str, np.ndarray]
    items: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.acts:
            raise ValueError("TokenBatch needs at least one hook in `acts`")
        sizes = {h: tuple(a.shape) for h, a in self.acts.items()}
        n = next(iter(sizes.values()))[0]
        for hook, shape in sizes.items():
            if len(shape) != 2 or shape[0] != n:
                raise ValueError(
                    f"activations at hook {hook!r} have shape {shape}, expected ({n}, d): "
                    "all hooks of a batch must share the same tokens"
                )
        check_coords(n, self.coords, where="TokenBatch")

    @property
    def n_tokens(self) -> int:
        return next(iter(self.acts.values())).shape[0]


@runtime_checkable
class Adapter(Protocol):
    """A model that can be harvested.

    ``harvest`` yields batches in a deterministic order; items listed in ``skip``
    (already stored) are not run again.
    """

    name: str

    def hook_names(self) -> list[str]:
        """Names of the hook points this model offers, e.g. ``"layer3"``."""
        ...

    def provenance(self) -> dict[str, str]:
        """Model identifier, weights checksum and anything else worth recording."""
        ...

    def harvest(
        self, data: Any, hooks: Sequence[str], *, skip: Collection[str] = ()
    ) -> Iterator[TokenBatch]:
        """Run the model over ``data`` and yield activations at ``hooks``."""
        ...


@dataclass(frozen=True)
class HookPoint:
    """Where a hook lives in the torch module tree, for splicing.

    Attributes
    ----------
    module
        The module whose forward *output* is the hooked activation.
    channel_dim
        Axis of that output holding the feature channels (``-1`` for
        ``(..., d)`` layouts, ``1`` for ``(batch, channel, lat, lon)``).
    output_index
        If the module returns a tuple, the index of the activation in it.
    """

    module: torch.nn.Module
    channel_dim: int = -1
    output_index: int | None = None


@runtime_checkable
class Spliceable(Protocol):
    """An adapter whose hooks can be edited during the model's own forward pass."""

    def hook_point(self, hook: str) -> HookPoint: ...
