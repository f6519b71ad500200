"""Widths of SAE-like objects, whatever their class.

Callers across the library accept any object that quacks like an SAE: our
:class:`~sciinterp.sae.SparseAutoencoder` (``.d_in``, ``.d_sae`` and ``.cfg.d_sae``),
SAELens SAEs (``.cfg.d_in``, ``.cfg.d_sae``) and small duck-typed test doubles (``.d_in``,
``.d_sae`` only).  These two functions are the one place that knows where the widths live;
what else a caller needs of the object (``encode``, ``encode_dense``) it checks itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["d_in_of", "d_sae_of"]


def _width(sae: Any, name: str, what: str) -> int:
    value = getattr(sae, name, None)
    if value is None:
        value = getattr(getattr(sae, "cfg", None), name, None)
    if value is None:
        raise TypeError(f"{type(sae).__name__} has no {what}: an SAE needs .{name} or .cfg.{name}")
    return int(value)


def d_sae_of(sae: Any) -> int:
    """Dictionary size (number of latents): ``.d_sae``, else ``.cfg.d_sae``; ``TypeError`` naming the type if neither."""
    return _width(sae, "d_sae", "dictionary size")


def d_in_of(sae: Any) -> int:
    """Input width (channels of the hooked activation): ``.d_in``, else ``.cfg.d_in``; ``TypeError`` if neither."""
    return _width(sae, "d_in", "input width")
