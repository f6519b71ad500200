"""Train the demo SFNO on shallow-water trajectories and write its checkpoint and model card.

    nice -n 10 python -m sciinterp_adapters.weather.train_demo --out adapters/weather/data/sfno_demo

The network (torch-harmonics SFNO, embed 32, 4 blocks, internal grid at half resolution)
predicts the 6-hour change of (z, u, v), normalised by the change's standard deviation;
predicting the normalised next state instead lost to persistence.  Skill is
``1 - RMSE / RMSE_persistence`` with latitude-weighted RMSE on held-out trajectories
(another generator seed).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from .sfno import SFNOAdapter, SFNOMeta, build_sfno, save_sfno
from .shallow_water import generate_shallow_water

__all__ = ["DemoConfig", "skill_vs_persistence", "train_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`train_demo`."""

    nlat: int = 32
    """Grid latitudes (equiangular, poles included)."""
    nlon: int = 64
    """Grid longitudes."""
    n_trajectories: int = 8
    """Training trajectories (generator seed ``seed``)."""
    n_times: int = 32
    """6-hourly outputs per training trajectory."""
    n_test_trajectories: int = 4
    """Held-out trajectories (generator seed ``seed + 1000``)."""
    embed_dim: int = 32
    """SFNO channel width."""
    num_layers: int = 4
    """SFNO blocks."""
    scale_factor: int = 2
    """Down-sampling of the SFNO's internal grid."""
    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 8
    """Samples per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay to 0)."""
    seed: int = 0
    """Seed of the training data and of the network initialisation."""

    def __post_init__(self) -> None:
        for name in ("n_trajectories", "n_times", "n_test_trajectories", "steps", "batch_size", "embed_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_times < 2:
            raise ValueError("n_times must be >= 2 to form (state, next state) pairs")


def _pairs(ds: xr.Dataset) -> np.ndarray:
    """Indices ``i`` with ``time[i+1]`` the next step of the same trajectory."""
    traj = ds["trajectory"].values
    return np.flatnonzero(traj[1:] == traj[:-1])


def skill_vs_persistence(adapter: SFNOAdapter, test: xr.Dataset, leads_steps: tuple[int, ...] = (1, 4, 8)) -> dict[str, dict[int, float]]:
    """Latitude-weighted RMSE of the model and of persistence, and skill, per variable and lead.

    Returns ``{var: {lead_hours: skill}}`` plus ``rmse_<var>`` / ``rmse_persistence_<var>`` entries.
    """
    n = max(leads_steps)
    traj = test["trajectory"].values
    inits = [i for i in range(test.sizes["time"] - n) if traj[i] == traj[i + n]]
    fc = adapter.forecast(test.isel(time=inits), n)
    w = np.cos(np.radians(test["lat"].values))[:, None]
    w = w / w.mean()
    out: dict[str, dict[int, float]] = {}
    for var in adapter.meta.variables:
        x0 = test[var].values[inits]
        skill, rm, rp = {}, {}, {}
        for s in leads_steps:
            truth = test[var].values[[i + s for i in inits]]
            pred = fc[var].isel(lead=s - 1).values
            lead = s * adapter.meta.step_hours
            rm[lead] = float(np.sqrt(np.mean(w * (pred - truth) ** 2)))
            rp[lead] = float(np.sqrt(np.mean(w * (x0 - truth) ** 2)))
            skill[lead] = 1.0 - rm[lead] / rp[lead]
        out[var], out[f"rmse_{var}"], out[f"rmse_persistence_{var}"] = skill, rm, rp
    return out


def train_demo(cfg: DemoConfig, out: Path, threads: int = 1) -> dict:
    """Generate data, train, evaluate, and save ``out.safetensors`` + ``out.json``; return the skill dict."""
    torch.set_num_threads(threads)
    t0 = time.time()
    grid = dict(nlat=cfg.nlat, nlon=cfg.nlon, progress=False)
    train = generate_shallow_water(n_trajectories=cfg.n_trajectories, n_times=cfg.n_times, seed=cfg.seed, **grid)
    test = generate_shallow_water(n_trajectories=cfg.n_test_trajectories, n_times=20, seed=cfg.seed + 1000, **grid)
    log.info("generated %d training and %d test times in %.0f s", train.sizes["time"], test.sizes["time"], time.time() - t0)
    t_data = time.time() - t0
    variables = ["z", "u", "v"]
    x = torch.as_tensor(np.stack([train[v].values for v in variables], axis=1))  # (T, C, H, W)
    idx = _pairs(train)
    dx = x[idx + 1] - x[idx]
    meta = SFNOMeta(
        model=dict(img_size=[cfg.nlat, cfg.nlon], grid="equiangular", grid_internal="legendre-gauss", scale_factor=cfg.scale_factor,
                   in_chans=3, out_chans=3, embed_dim=cfg.embed_dim, num_layers=cfg.num_layers),
        variables=variables,
        mean={v: float(x[:, i].mean()) for i, v in enumerate(variables)},
        std={v: float(x[:, i].std()) for i, v in enumerate(variables)},
        tendency_std={v: float(dx[:, i].std()) for i, v in enumerate(variables)},
        target="tendency", step_hours=6, model_id="sfno-demo-shallow-water",
    )
    torch.manual_seed(cfg.seed)
    model = build_sfno(meta.model)
    mean, std, tstd = meta.vector("mean"), meta.vector("std"), meta.vector("tendency_std")
    xin, target = (x[idx] - mean) / std, dx / tstd
    w = torch.cos(torch.deg2rad(torch.tensor(np.array(train["lat"].values), dtype=torch.float32))).reshape(1, 1, -1, 1)
    w = w / w.mean()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(cfg.seed)
    t1 = time.time()
    for step in range(cfg.steps):
        b = torch.randint(len(idx), (cfg.batch_size,), generator=g)
        loss = (w * (model(xin[b]) - target[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - t1)
    t_train = time.time() - t1
    model.eval()
    skill = skill_vs_persistence(SFNOAdapter(None, model=model, meta=meta, batch_size=32), test)
    meta.extra = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_data": f"generate_shallow_water(nlat={cfg.nlat}, nlon={cfg.nlon}, n_trajectories={cfg.n_trajectories}, n_times={cfg.n_times}, seed={cfg.seed})",
        "test_data": f"generate_shallow_water(nlat={cfg.nlat}, nlon={cfg.nlon}, n_trajectories={cfg.n_test_trajectories}, n_times=20, seed={cfg.seed + 1000})",
        "train_config": cfg.__dict__,
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1), "torch_threads": threads,
        "skill": {k: {str(ld): round(s, 4) for ld, s in v.items()} for k, v in skill.items()},
    }
    save_sfno(out, model, meta)
    log.info("saved %s; skill %s", out, {k: skill[k] for k in variables})
    return skill


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "sfno_demo")
    ap.add_argument("--steps", type=int, default=DemoConfig.steps)
    ap.add_argument("--n-trajectories", type=int, default=DemoConfig.n_trajectories)
    ap.add_argument("--n-times", type=int, default=DemoConfig.n_times)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = DemoConfig(steps=args.steps, n_trajectories=args.n_trajectories, n_times=args.n_times)
    train_demo(cfg, args.out, threads=args.threads)


if __name__ == "__main__":
    main()
