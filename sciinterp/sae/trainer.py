"""Train several SAEs in one pass over a stream of activation rows.

:func:`train` is a short loop over named steps: ``_prepare`` (normalisation, b_dec,
optimisers, resume), ``_step`` (forward/backward/update per SAE), ``_log`` and
``_checkpoint`` (:mod:`sciinterp.sae.checkpoint`).  DDP (torchrun; gloo on CPU, NCCL on GPU) splits every global batch
across ranks and sums gradients, so a run's result does not depend on the world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sciinterp.sae.checkpoint import CHECKPOINT, fingerprint, load_checkpoint, save_checkpoint
from sciinterp.sae.config import SAEConfig, TrainerConfig
from sciinterp.sae.dist import all_gather_fn, all_sum_fn, get_dist, pick_device
from sciinterp.sae.metrics import DownstreamEval
from sciinterp.sae.model import SparseAutoencoder
from sciinterp.sae.runlog import RunLogger
from sciinterp.sources import HookSources, read_ahead

__all__ = ["StepInfo", "fit", "train"]

log = logging.getLogger(__name__)


class StepInfo(NamedTuple):
    """What callbacks receive after every step."""

    step: int
    """Steps done (1-based)."""
    rows: int
    """Training rows seen (global)."""
    metrics: dict[str, dict[str, float]]
    """Per SAE name: ``loss``, ``fvu``, ``l0``, ``dead`` (fraction), ``lr`` of this step."""


@dataclass
class _Run:
    """One SAE being trained and its state."""

    cfg: SAEConfig
    name: str
    hook: str
    """Key of this SAE's rows in a batch."""
    sae: SparseAutoencoder
    opt: torch.optim.Optimizer
    mean: torch.Tensor
    scale: torch.Tensor
    var: float
    since_fired: torch.Tensor
    fired_count: torch.Tensor
    last: dict[str, float] = field(default_factory=dict)


def _lr_factor(step: int, total: int, tc: TrainerConfig) -> float:
    """Warm-up then decay multiplier of the peak learning rate at 0-based ``step``."""
    warmup = min(tc.warmup_steps, total // 20)  # short runs: at most a twentieth of the run
    if warmup and step < warmup:
        return (step + 1) / warmup
    start = max(warmup, int(tc.decay_start * total))
    if tc.decay == "none" or step < start or total <= start:
        return 1.0
    frac = (step - start) / max(total - start, 1)
    shape = 1 - frac if tc.decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * shape


def _norm_stats(x: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    if how == "expected_norm":
        return x.new_zeros(()), (x.pow(2).sum(1).mean() / x.shape[1]).sqrt().clamp_min(1e-12)
    if how == "standardize":
        return x.mean(0), x.std(0).clamp_min(1e-6)
    return x.new_zeros(()), x.new_ones(())


def _make_optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(sae.parameters(), lr=lr, foreach=True)


def _names(cfgs: Sequence[SAEConfig]) -> list[str]:
    """Directory names: ``run_name``, prefixed by the hook when a run trains on several hooks."""
    several = len({c.hook for c in cfgs}) > 1
    seen: dict[str, int] = {}
    out = []
    for c in cfgs:
        n = f"{c.hook}-{c.run_name}".replace("/", "_") if several and c.hook and not c.name else c.run_name
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _schedule(n_rows: int, tc: TrainerConfig) -> tuple[int, int]:
    """(total rows, total steps) of the run."""
    total = tc.max_rows if tc.max_rows is not None else tc.epochs * n_rows
    per_epoch = math.ceil(n_rows / tc.batch_size)
    full, rem = divmod(total, n_rows)
    return total, full * per_epoch + math.ceil(rem / tc.batch_size)


def _batches(source: HookSources, tc: TrainerConfig, total: int, epoch: int,
             row: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """(epoch, first row in epoch, global batch per hook) from ``(epoch, row)`` on, ``total`` rows in all."""
    seen = epoch * source.n_rows + row
    while seen < total:
        for batch in read_ahead(source.batches(tc.batch_size, seed=tc.seed + epoch, shuffle=True, start_row=row),
                                tc.prefetch):
            batch = {h: b[: total - seen] for h, b in batch.items()}
            n = next(iter(batch.values())).shape[0]
            yield epoch, row, batch
            row += n
            seen += n
            if seen >= total:
                return
        epoch, row = epoch + 1, 0


def _hooked(src: Any, cfgs: Sequence[SAEConfig]) -> tuple[HookSources, list[str]]:
    """The source as :class:`HookSources` and the hook each config trains on.

    A single-hook source serves every config under its own hook name (``SAEConfig.hook``
    is then only a label); a :class:`HookSources` needs each config's ``hook`` to be one
    of its hooks (or holds just one).
    """
    if not isinstance(src, HookSources):
        key = getattr(src, "hook", None) or "rows"
        return HookSources({key: src}), [key] * len(cfgs)
    hooks = []
    for c in cfgs:
        if c.hook is None and len(src.hooks) == 1:
            hooks.append(src.hooks[0])
        elif c.hook not in src.sources:
            raise ValueError(f"SAEConfig.hook={c.hook!r} (SAE {c.run_name!r}) is not among the source's hooks "
                             f"{src.hooks}; set hook= on every SAE of a several-hook run")
        else:
            hooks.append(c.hook)
    return src, hooks


def _prepare(source: HookSources, hooks: Sequence[str], cfgs: Sequence[SAEConfig], tc: TrainerConfig,
             dev: torch.device) -> list[_Run]:
    peek = next(iter(source.batches(tc.batch_size, seed=tc.seed, shuffle=True)))
    runs = []
    for cfg, name, hook in zip(cfgs, _names(cfgs), hooks):
        first = peek[hook].to(dev, torch.float32)
        gen = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else tc.seed)
        sae = SparseAutoencoder(cfg, source.d_ins[hook], device=dev, generator=gen)
        sae.bf16 = tc.autocast == "bf16" or (tc.autocast == "auto" and dev.type == "cuda")
        _maybe_compile(sae, tc)
        mean, scale = _norm_stats(first, cfg.normalize)
        xn = (first - mean) / scale
        with torch.no_grad():
            if cfg.init_b_dec == "median":
                sae.b_dec.copy_(xn.median(0).values)
            elif cfg.init_b_dec == "mean":
                sae.b_dec.copy_(xn.mean(0))
        var = float((xn - xn.mean(0)).pow(2).sum(1).mean())
        zeros = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)
        runs.append(_Run(cfg, name, hook, sae, _make_optimizer(sae, cfg.learning_rate), mean, scale, var, zeros,
                         zeros.clone()))
    return runs


def _source_provenance(src: Any) -> dict[str, Any]:
    """``model_id``, ``model_checksum``, ``store_hash``, ``hook_name`` of a source, where it knows them."""
    prov = dict(getattr(src, "provenance", None) or {})
    path = getattr(src, "path", None)
    if path is not None and "model_checksum" not in prov:
        try:
            from sciinterp.store import open_store, read_commit

            attrs = open_store(path).attrs
            prov.update({k: attrs[k] for k in ("model_id", "model_checksum") if attrs.get(k) is not None})
            commit = json.dumps(read_commit(path), sort_keys=True, default=str)
            prov["store_hash"] = hashlib.sha256(commit.encode()).hexdigest()[:16]
        except Exception as err:  # noqa: BLE001 - provenance is best effort, never fatal
            log.warning("could not read the provenance of %s: %s", path, err)
    if getattr(src, "hook", None):
        prov.setdefault("hook_name", src.hook)
    return prov


def _maybe_compile(sae: SparseAutoencoder, tc: TrainerConfig) -> None:
    """``torch.compile`` the dense loss of relu/jumprelu SAEs (TopK paths are sparse kernels already).

    Off unless ``TrainerConfig.compile``; ``SCIINTERP_NO_COMPILE=1`` disables it; a failure to compile
    falls back to eager with a warning.
    """
    if not tc.compile or os.environ.get("SCIINTERP_NO_COMPILE", "0") in ("1", "true", "yes"):
        return
    if sae.cfg.architecture not in ("relu", "jumprelu"):
        return
    eager = sae.loss_terms
    try:
        compiled = torch.compile(eager)
    except Exception as err:  # noqa: BLE001 - no compiler / unsupported platform
        log.warning("torch.compile unavailable (%s); training eagerly", err)
        return

    def loss_terms(*args: Any, **kwargs: Any):
        try:
            return compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - compilation errors surface on the first call
            log.warning("torch.compile failed (%s); training eagerly", err)
            sae.loss_terms = eager
            return eager(*args, **kwargs)

    sae.loss_terms = loss_terms


def _step(run: _Run, x: torch.Tensor, n_global: int, lr: float, tc: TrainerConfig, world: int, all_sum,
          all_gather, where: str) -> None:
    """One optimisation step of one SAE on the local rows ``x``."""
    sae, cfg = run.sae, run.cfg
    if cfg.normalize == "none":
        xn = x
    elif cfg.normalize == "expected_norm":
        xn = x * (1.0 / run.scale)  # scalar scale, zero mean: one pass
    else:
        xn = (x - run.mean) / run.scale
    dead = None
    if cfg.architecture in ("topk", "batchtopk") and cfg.auxk_alpha > 0:
        ids = (run.since_fired >= cfg.dead_tokens).nonzero().squeeze(1)
        dead = ids if ids.numel() else None
    out = sae.loss_terms(xn, dead=dead, var=run.var, n_rows=n_global, all_sum=all_sum, all_gather=all_gather)
    out.loss.backward()
    params = [p for p in sae.parameters() if p.grad is not None]
    if world > 1:
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors([p.grad for p in params])
        dist.all_reduce(flat)
        for p, g in zip(params, _unflatten_dense_tensors(flat, [p.grad for p in params])):
            p.grad.copy_(g)
    sae.remove_parallel_grads_()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    stats = torch.stack([out.loss.detach(), out.fvu.detach(), out.aux_loss.detach(), out.l0 * x.shape[0] / n_global])
    loss, fvu, aux, l0 = all_sum(stats).tolist()  # one device sync per step
    norm = float(grad_norm)
    if 0 < tc.grad_clip < norm:  # scale only when clipping (saves a pass over the gradients)
        torch.nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm, foreach=True)
    if tc.check_finite and not (math.isfinite(loss) and math.isfinite(norm)):
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
        raise FloatingPointError(f"SAE {run.name!r}: non-finite {what} ({value}) at {where}; stopping "
                                 "(resume from the last checkpoint with a lower lr or check the activations)")
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    sae.normalize_decoder_()
    fired = out.fired if world == 1 else all_sum(out.fired.to(torch.int32)) > 0
    run.since_fired += n_global
    run.since_fired[fired] = 0
    run.fired_count += fired
    run.last = {"loss": loss, "fvu": fvu, "aux": aux, "l0": l0, "lr": lr,
                "dead": float((run.since_fired >= cfg.dead_tokens).float().mean())}



def _evaluate(sae: SparseAutoencoder, evaluators: Mapping[str, DownstreamEval]) -> dict[str, dict]:
    """Run every evaluator on ``sae``; the results are also kept as ``sae.evaluations``."""
    sae.evaluations = {name: dict(fn(sae)) for name, fn in evaluators.items()}
    return sae.evaluations


def fit(
    source: Any, saes: Sequence[SAEConfig], trainer: TrainerConfig, out_dir: str | os.PathLike | None = None, *,
    callbacks: Sequence[Callable[[StepInfo], None]] = (), evaluators: Mapping[str, DownstreamEval] | None = None,
) -> list[SparseAutoencoder]:
    """Train ``saes`` in one pass over ``source``; return them folded to raw-activation space.

    ``out_dir`` (optional) holds the checkpoint and the logs.  See :func:`train`.
    """
    from tqdm.auto import tqdm

    from sciinterp.sources import as_source

    tc = trainer
    if not saes:
        raise ValueError("train: the list of SAEConfigs is empty")
    src, hooks = _hooked(as_source(source), saes)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    rank, world = get_dist()
    dev = pick_device(tc.device, rank)
    all_sum, all_gather = all_sum_fn(world), all_gather_fn(world)
    out = Path(out_dir) if out_dir is not None else None
    total, steps = _schedule(src.n_rows, tc)
    runs = _prepare(src, hooks, saes, tc, dev)
    d_in = src.d_ins if len(src.hooks) > 1 else next(iter(src.d_ins.values()))  # one width: old fingerprints hold
    fp = fingerprint(saes, tc, d_in, src.n_rows)
    ckpt = out / CHECKPOINT if out is not None else None
    state = {"step": 0, "epoch": 0, "row": 0, "rows": 0, "fingerprint": fp}
    if ckpt is not None and tc.resume and ckpt.exists():
        state = load_checkpoint(ckpt, runs, fp, dev)
        log.info("resuming from %s at step %d (%d rows)", ckpt, state["step"], state["rows"])
    for r in runs:
        r.sae.train()
    logger = RunLogger(out if rank == 0 else None, [r.name for r in runs], tc, state["step"])
    bar = tqdm(total=steps, initial=state["step"], disable=not tc.progress or rank != 0,
               desc="train SAE", unit="step", dynamic_ncols=True)
    step, rows = state["step"], state["rows"]
    t0, rows0 = time.perf_counter(), rows
    try:
        for epoch, row, batch in _batches(src, tc, total, state["epoch"], state["row"]):
            n_global = next(iter(batch.values())).shape[0]
            local = {h: b.tensor_split(world)[rank].to(dev, torch.float32, non_blocking=True) for h, b in batch.items()
                     if h in hooks}
            lr_f = _lr_factor(step, steps, tc)
            where = f"step {step + 1} (epoch {epoch}, batch rows {row}-{row + n_global} of the pass)"
            for r in runs:
                _step(r, local[r.hook], n_global, r.cfg.learning_rate * lr_f, tc, world, all_sum, all_gather, where)
            step, rows = step + 1, rows + n_global
            row_next = row + n_global
            info = StepInfo(step, rows, {r.name: dict(r.last) for r in runs})
            rate = (rows - rows0) / max(time.perf_counter() - t0, 1e-9)
            if step % tc.log_every == 0 or step == steps:
                logger.write(step, rows, runs, rate)
                r0 = runs[0].last
                bar.set_postfix(fve=f"{1 - r0['fvu']:.3f}", l0=f"{r0['l0']:.1f}", dead=f"{r0['dead']:.3f}",
                                rows_s=f"{rate:.0f}")
            bar.update(1)
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and ckpt is not None and rank == 0:
                epoch_c, row_c = (epoch, row_next) if row_next < src.n_rows else (epoch + 1, 0)
                save_checkpoint(ckpt, runs, {"step": step, "epoch": epoch_c, "row": row_c, "rows": rows,
                                              "fingerprint": fp})
            for cb in callbacks:
                cb(info)
    finally:
        bar.close()
        logger.close()
    log.info("trained %d SAE(s): %d steps, %d rows, %.0f rows/s", len(runs), step, rows,
             (rows - rows0) / max(time.perf_counter() - t0, 1e-9))
    prov = _source_provenance(next(iter(src.sources.values()))) if rank == 0 else {}
    result = []
    for r in runs:
        sae = r.sae.folded(r.mean, r.scale)
        sae.normalization = {"kind": r.cfg.normalize, "folded": True,
                             "mean": r.mean.reshape(-1).tolist(), "scale": r.scale.reshape(-1).tolist()}
        hook = r.cfg.hook or (r.hook if len(src.hooks) > 1 else prov.get("hook_name"))
        sae.provenance = {**prov, "hook_name": hook, "rows": rows, "steps": step}
        sae.training_state = {"fired_count": r.fired_count.cpu(), "steps": step, "rows": rows}
        sae.eval()
        result.append(sae)
    if evaluators:
        for sae in result:
            _evaluate(sae, evaluators)
    return result


def train(
    source: Any, saes: Sequence[SAEConfig], trainer: TrainerConfig, out_dir: str | os.PathLike, *,
    callbacks: Sequence[Callable[[StepInfo], None]] = (), evaluators: Mapping[str, DownstreamEval] | None = None,
) -> list[Path]:
    """Train several SAEs in one pass over ``source``; write one SAE directory per config.

    Parameters
    ----------
    source
        A :class:`sciinterp.sources.RowSource`, an array/tensor ``(N, d_in)`` or a ``.npy`` path.
    saes
        One :class:`SAEConfig` per SAE; all see the same batches.
    trainer
        Batch size, schedule, checkpoints, devices.
    out_dir
        Gets ``<name>/`` per SAE (cfg.json + sae_weights.safetensors), ``logs/<name>.csv``
        and, while running, ``checkpoint.pt`` (a killed run resumes from it).
    callbacks
        Called with a :class:`StepInfo` after every step (on every rank).
    evaluators
        Downstream evaluations (:class:`DownstreamEval`) run on each final SAE; results in ``eval.json``.

    Returns
    -------
    list[Path]
        The SAE directories, in the order of ``saes``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = fit(source, saes, trainer, out, callbacks=callbacks)
    rank, world = get_dist()
    paths = []
    for sae, name in zip(result, _names(saes)):
        path = out / name
        if rank == 0:
            sae.save(path)  # before the evaluators: one that fails loses no training
        paths.append(path)
    if evaluators and rank == 0:
        for sae, path in zip(result, paths):
            if _evaluate(sae, evaluators):
                tmp = path / ".eval.json.tmp"
                tmp.write_text(json.dumps(sae.evaluations, indent=2))
                os.replace(tmp, path / "eval.json")
    if rank == 0 and (out / CHECKPOINT).exists():
        (out / CHECKPOINT).unlink()
    if world > 1:  # other ranks return once rank 0 has written the directories
        import torch.distributed as dist

        dist.barrier()
    return paths
