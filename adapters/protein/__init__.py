"""Protein language models (ESM-2) and biological variables.

Importing this package is cheap: the ESM-2 adapter (torch, fair-esm) and the FASTA reader
are imported on first attribute access, e.g. by the ``esm2`` entry point.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ESM2Adapter",
    "ESM2Options",
    "FastaError",
    "ProteinRecord",
    "convert_fair_esm_to_hf",
    "load_esm2",
    "read_fasta",
]

_LAZY = {
    "ESM2Adapter": "esm2",
    "ESM2Options": "esm2",
    "FastaError": "fasta",
    "ProteinRecord": "fasta",
    "read_fasta": "fasta",
    "convert_fair_esm_to_hf": "esm2_load",
    "load_esm2": "esm2_load",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
