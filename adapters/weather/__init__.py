"""Weather models (SFNO, FourCastNet-v2, Aurora) and physical variables.

Imports are lazy: ``import sciinterp_adapters.weather`` loads neither torch-harmonics nor
``microsoft-aurora``; ``SFNOAdapter`` / ``FourCastNetV2Adapter`` / ``AuroraAdapter`` load their
module on first use, and a missing optional dependency raises an ImportError naming the fix.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AuroraAdapter", "FourCastNetV2Adapter", "SFNOAdapter", "generate_shallow_water"]

_LAZY = {
    "SFNOAdapter": ".sfno",
    "AuroraAdapter": ".aurora",
    "FourCastNetV2Adapter": ".fcn2",
    "generate_shallow_water": ".shallow_water",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
