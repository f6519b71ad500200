"""Adapter discovery through the ``sciinterp.adapters`` entry-point group.

Built-in adapters are registered in ``pyproject.toml`` under the same group as
third-party plugins, so there is one table.  A plugin that fails to import
warns instead of breaking the others.  A third-party package registers its
adapter class with::

    [project.entry-points."sciinterp.adapters"]
    mymodel = "my_package.adapter:MyModelAdapter"
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

__all__ = ["GROUP", "AdapterInfo", "available_adapters", "describe_adapters", "get_adapter", "load_adapter_class"]

GROUP = "sciinterp.adapters"
# missing top-level module -> the extra of pyproject.toml that installs it
_EXTRAS = {
    "esm": "esm", "torch_harmonics": "weather", "h5netcdf": "weather", "global_land_mask": "weather",
    "aurora": "aurora", "torchvision": "aurora", "mdtraj": "structure", "Bio": "structure", "pyhmmer": "structure",
}  # fmt: skip


class AdapterInfo(NamedTuple):
    """One registered adapter, as ``sciinterp adapters list`` shows it."""

    name: str
    """Registered name (``get_adapter(name)``)."""
    target: str
    """``module:Class`` the entry point names."""
    package: str
    """Distribution that registers it (``?`` if unknown)."""
    status: str
    """``"ok"`` or ``"broken"``."""
    error: str
    """Why a broken adapter failed to load, with a hint; empty when ok."""


@functools.cache
def available_adapters() -> dict[str, EntryPoint]:
    """Registered adapters: name -> entry point (not yet imported).

    Two distributions registering the same name warn; the first one found wins.
    """
    table: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in table and table[ep.name].value != ep.value:
            warnings.warn(
                f"adapter name {ep.name!r} is registered twice ({table[ep.name].value} and {ep.value}); "
                f"using {table[ep.name].value}",
                stacklevel=2,
            )
            continue
        table.setdefault(ep.name, ep)
    return table


def _hint(ep: EntryPoint, err: BaseException) -> str:
    module = ep.value.split(":")[0]
    missing = (getattr(err, "name", None) or "").split(".")[0]
    if isinstance(err, ImportError) and missing in _EXTRAS:
        return f"; install its extra: pip install 'sciinterp[{_EXTRAS[missing]}]'"
    if isinstance(err, ImportError) and missing == module.split(".")[0]:
        return f"; {err.name} is not part of this installation (not implemented in this version?)"
    if isinstance(err, ImportError):
        return "; is the package providing it installed?"
    if isinstance(err, AttributeError):
        return f"; {module} does not define it (not implemented in this version?)"
    return ""


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
    except (ImportError, AttributeError) as err:
        raise ImportError(f"adapter {name!r} ({eps[name].value}) could not be loaded: {err}{_hint(eps[name], err)}") from err


def get_adapter(adapter: str | type, **kwargs: Any) -> Any:
    """Build an adapter from its registered name or its class.

    >>> get_adapter("esm2", checkpoint="esm2_t6_8M.pt")  # doctest: +SKIP
    """
    cls = load_adapter_class(adapter) if isinstance(adapter, str) else adapter
    return cls(**kwargs)


def describe_adapters() -> list[AdapterInfo]:
    """Every registered adapter with its load status, sorted by name; broken ones warn."""
    rows = []
    for name, ep in sorted(available_adapters().items()):
        package = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
        try:
            ep.load()
            rows.append(AdapterInfo(name, ep.value, package, "ok", ""))
        except Exception as err:  # a broken plugin must not hide the others
            why = f"{type(err).__name__}: {err}{_hint(ep, err)}"
            warnings.warn(f"adapter plugin {name!r} ({ep.value}) failed to load: {why}", stacklevel=2)
            rows.append(AdapterInfo(name, ep.value, package, "broken", why))
    return rows
