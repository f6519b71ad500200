"""Checksums and environment facts recorded with every artefact (store, SAE, report)."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["file_checksum", "environment", "state_dict_checksum"]


def state_dict_checksum(model: torch.nn.Module | dict[str, torch.Tensor], n: int = 16) -> str:
    """SHA-256 (first ``n`` hex digits) over a model's parameter/buffer names, shapes and bytes."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:n]


def file_checksum(path: str | os.PathLike, n: int = 16) -> str:
    """SHA-256 (first ``n`` hex digits) of a file, or of every file below a directory."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"nothing to checksum at {path}")
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:n]


def environment() -> dict[str, Any]:
    """Versions worth recording beside results."""
    import numpy
    import xarray

    from sciinterp import __version__

    return {
        "sciinterp": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "xarray": xarray.__version__,
        "python": platform.python_version(),
    }
