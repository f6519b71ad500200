"""Metric sinks of the trainer: one CSV per SAE, optional TensorBoard / wandb (guarded imports)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from sciinterp.sae.config import TrainerConfig

__all__ = ["RunLogger"]

log = logging.getLogger(__name__)


class RunLogger:
    """CSV per SAE under ``<out>/logs``, optional TensorBoard / wandb."""

    FIELDS = ("step", "rows", "loss", "fvu", "fve", "aux", "l0", "dead", "lr", "rows_per_s")

    def __init__(self, out: Path | None, names: list[str], tc: TrainerConfig, resume_step: int):
        self.files, self.sinks = {}, []
        if out is None:
            return
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for n in names:
            p = logs / f"{n}.csv"
            rows = list(csv.DictReader(p.open())) if p.exists() and resume_step else []
            f = p.open("w", newline="")
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(r for r in rows if int(r["step"]) <= resume_step)
            self.files[n] = (f, w)
        if "tensorboard" in tc.trackers:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.sinks.append(("tb", SummaryWriter(str(logs / "tensorboard"))))
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); skipping it")
        if "wandb" in tc.trackers:
            try:
                import wandb
                self.sinks.append(("wandb", wandb.init(project="sciinterp", dir=str(logs))))
            except ImportError:
                log.warning("wandb is not installed (pip install wandb); skipping it")

    def write(self, step: int, rows: int, runs: list[Any], rate: float) -> None:
        for r in runs:
            row = {"step": step, "rows": rows, **{k: r.last.get(k) for k in ("loss", "fvu", "aux", "l0", "dead", "lr")},
                   "fve": 1 - r.last["fvu"], "rows_per_s": round(rate, 1)}
            if r.name in self.files:
                f, w = self.files[r.name]
                w.writerow(row)
                f.flush()
            for kind, sink in self.sinks:
                scalars = {f"{r.name}/{k}": v for k, v in row.items() if k not in ("step", "rows")}
                if kind == "tb":
                    for k, v in scalars.items():
                        sink.add_scalar(k, v, step)
                else:
                    sink.log(scalars, step=step)

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()
        for kind, sink in self.sinks:
            sink.close() if kind == "tb" else sink.finish()
