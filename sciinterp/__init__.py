"""sciinterp: sparse-autoencoder interpretability for scientific models.

Data path: adapter -> activation store -> SAE trainer -> feature store -> analysis -> report.
"""

from sciinterp.adapter import Adapter, HookPoint, Spliceable, TokenBatch
from sciinterp.registry import available_adapters, get_adapter
from sciinterp.store import StoreWriter, open_store

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "HookPoint",
    "Spliceable",
    "StoreWriter",
    "TokenBatch",
    "available_adapters",
    "get_adapter",
    "open_store",
]
