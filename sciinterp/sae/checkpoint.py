"""The trainer's resumable checkpoint: one ``checkpoint.pt`` per run directory, written atomically.

It holds every SAE's weights, Adam state, normalisation and dead-latent counters plus the data
position; :func:`fingerprint` (configs, schedule, data shape) guards against resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sciinterp.sae.config import SAEConfig, TrainerConfig

__all__ = ["CHECKPOINT", "fingerprint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def fingerprint(cfgs: Sequence[SAEConfig], tc: TrainerConfig, d_in: Any, n_rows: int) -> str:
    """16 hex digits identifying a run: SAE configs, the schedule-relevant trainer fields, data shape."""
    keep = {k: v for k, v in asdict(tc).items() if k in ("batch_size", "max_rows", "epochs", "seed", "warmup_steps",
                                                           "decay", "decay_start", "min_lr_ratio", "grad_clip")}
    doc = json.dumps([[asdict(c) for c in cfgs], keep, d_in, n_rows], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, runs: Sequence[Any], state: dict[str, Any]) -> None:
    """Write ``state`` (step, data position, fingerprint) and every run's tensors to ``path`` atomically."""
    doc = dict(state)
    doc["runs"] = [{"name": r.name, "sae": r.sae.state_dict(), "opt": r.opt.state_dict(), "mean": r.mean,
                    "scale": r.scale, "var": r.var, "since_fired": r.since_fired, "fired_count": r.fired_count}
                   for r in runs]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(doc, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, runs: Sequence[Any], expected: str, dev: torch.device) -> dict[str, Any]:
    """Restore ``runs`` in place from ``path``; return its state.  Refuses another run's checkpoint."""
    doc = torch.load(path, map_location=dev, weights_only=False)
    if doc.get("fingerprint") != expected:
        raise ValueError(f"checkpoint {path} belongs to a different run (configs or data changed); "
                         f"delete it or set trainer.resume=false")
    for r, saved in zip(runs, doc["runs"]):
        r.sae.load_state_dict(saved["sae"])
        r.opt.load_state_dict(saved["opt"])
        r.mean, r.scale, r.var = saved["mean"], saved["scale"], saved["var"]
        r.since_fired.copy_(saved["since_fired"])
        r.fired_count.copy_(saved["fired_count"])
    return doc
