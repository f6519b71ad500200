"""``sciinterp`` command line: Hydra at the edge, plain functions underneath.

Usage::

    sciinterp harvest|train|analyze|report|intervene|run [--force] [key=value ...] [-m]
    sciinterp adapters list

Every ``key=value`` is a Hydra override of the configs in ``conf/`` (shipped as
``sciinterp.conf``); ``-m``/``--multirun`` sweeps, e.g.
``sciinterp train -m sae.d_sae=2048,4096 sae.k=16,32``.  Each stage writes into
``<out>/<stage>/`` and is skipped when its config and inputs are unchanged
(content hash); ``--force`` redoes it.  The resolved config of the last run is
saved as ``<out>/config.yaml``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

__all__ = ["main"]

STAGES = ("harvest", "train", "analyze", "report", "intervene", "run")
USAGE = __doc__


def _hydra_entry() -> None:
    import hydra
    from omegaconf import DictConfig

    from sciinterp.pipeline import run_from_config

    @hydra.main(version_base="1.3", config_path="pkg://sciinterp.conf", config_name="config")
    def _main(cfg: DictConfig) -> None:
        _multirun_out(cfg)
        _save_config(cfg)
        run_from_config(cfg)

    _main()


def _multirun_out(cfg) -> None:
    """In a multirun sweep, give each job its own ``<out>/<overrides>`` so stages never collide."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.out = str(Path(cfg.out) / (hc.job.override_dirname or f"job{hc.job.num}"))


def _save_config(cfg) -> None:
    """Write the resolved config to ``<out>/config.yaml`` (atomically)."""
    from omegaconf import OmegaConf

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".config.yaml.{os.getpid()}.tmp"
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, out / "config.yaml")


def _list_adapters() -> int:
    from sciinterp.registry import GROUP, describe_adapters

    with warnings.catch_warnings():  # the table below says the same, once
        warnings.simplefilter("ignore")
        rows = describe_adapters()
    if not rows:
        print(f"no adapters registered in entry-point group {GROUP!r}")
        return 1
    w_name = max(len("NAME"), *(len(r.name) for r in rows))
    w_target = max(len("TARGET"), *(len(r.target) for r in rows))
    print(f"{'NAME':<{w_name}}  {'STATUS':<6}  {'TARGET':<{w_target}}  PACKAGE")
    for r in rows:
        print(f"{r.name:<{w_name}}  {r.status:<6}  {r.target:<{w_target}}  {r.package}")
        if r.error:
            print(f"{'':<{w_name}}    -> {r.error}")
    broken = [r.name for r in rows if r.status != "ok"]
    if broken:
        print(f"\n{len(broken)} of {len(rows)} adapters failed to load ({', '.join(broken)}); the others work.")
    return 0 if len(broken) < len(rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "adapters":
        if argv[1:] not in ([], ["list"]):
            print("usage: sciinterp adapters list", file=sys.stderr)
            return 2
        return _list_adapters()
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}\n{USAGE}", file=sys.stderr)
        return 2
    overrides = ["force=true" if a == "--force" else a for a in rest]
    # `data.path=acts.npy` works whether or not the chosen data config declares `path`
    overrides = ["++" + a if a.startswith("data.path=") else a for a in overrides]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    flags = [a for a in overrides if a.startswith("-")]  # Hydra's own flags (-m, --cfg job...) go first
    sys.argv = [f"sciinterp {stage}", *flags, f"stage={stage}", *(a for a in overrides if not a.startswith("-"))]
    _hydra_entry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
