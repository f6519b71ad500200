"""Adapter discovery through the ``sciinterp.adapters`` entry-point group.

Built-in adapters are registered in ``pyproject.toml`` under the same group as
third-party plugins, so there is one table.  A plugin that fails to import
warns instead of breaking the others.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = ["GROUP", "available_adapters", "describe_adapters", "get_adapter", "load_adapter_class"]

GROUP = "sciinterp.adapters"


@functools.cache
def available_adapters() -> dict[str, EntryPoint]:
    """Registered adapters: name -> entry point (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_adapter_class(name: str) -> type:
    """Import and return the adapter class registered as ``name``."""
    eps = available_adapters()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise KeyError(
            f"no adapter named {name!r} in entry-point group {GROUP!r}; installed: {known}. "
            "Is the package providing it installed (pip install -e .)?"
        )
    try:
        return eps[name].load()
    except ImportError as err:
        raise ImportError(
            f"adapter {name!r} ({eps[name].value}) could not be imported: {err}. "
            "Install its extra, e.g. pip install 'sciinterp[esm]' or 'sciinterp[weather]'."
        ) from err


def get_adapter(adapter: str | type, **kwargs: Any) -> Any:
    """Build an adapter from its registered name or its class.

    >>> get_adapter("esm2", checkpoint="esm2_t6_8M.pt")  # doctest: +SKIP
    """
    cls = load_adapter_class(adapter) if isinstance(adapter, str) else adapter
    return cls(**kwargs)


def describe_adapters() -> list[tuple[str, str, str]]:
    """(name, target, status) for every registered adapter; broken ones warn."""
    rows = []
    for name, ep in sorted(available_adapters().items()):
        try:
            ep.load()
            status = "ok"
        except Exception as err:  # a broken plugin must not hide the others
            warnings.warn(f"adapter plugin {name!r} failed to load: {err}", stacklevel=2)
            status = f"broken: {type(err).__name__}: {err}"
        rows.append((name, ep.value, status))
    return rows
