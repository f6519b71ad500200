"""sciinterp: sparse-autoencoder interpretability for scientific models.

Data path: adapter -> activation store -> SAE trainer -> feature store -> analysis -> report.
"""

__version__ = "0.1.0"

from sciinterp.adapter import Adapter, HookPoint, Spliceable, TokenBatch  # noqa: E402
from sciinterp.harvest import harvest_to_store  # noqa: E402
from sciinterp.registry import available_adapters, get_adapter  # noqa: E402
from sciinterp.sources import ArraySource, RowSource, StoreSource, as_source  # noqa: E402
from sciinterp.store import StoreError, StoreWriter, open_store  # noqa: E402

__all__ = [
    "Adapter",
    "ArraySource",
    "HookPoint",
    "RowSource",
    "Spliceable",
    "StoreError",
    "StoreSource",
    "StoreWriter",
    "TokenBatch",
    "as_source",
    "available_adapters",
    "get_adapter",
    "harvest_to_store",
    "open_store",
]
