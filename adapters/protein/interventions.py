"""Interventions on ESM-2: masked-LM faithfulness of a spliced SAE, feature edits at residues.

Both go through :func:`sciinterp.splice.splice` at ``adapter.hook_point(hook)``; this module
only knows ESM-2's token layout:

* token ``0`` is BOS, residue ``p`` (1-based) is token ``p``, then EOS and padding;
* ``embed`` runs in (B, T, E), every other hook in fair-esm's (T, B, E) layout
  (see :mod:`sciinterp_adapters.protein.esm2`).

The SAE is spliced in at residue tokens only (BOS, EOS and padding keep their activations:
the SAE never saw them); masked residues count as residue tokens.

>>> faith = masked_lm_faithfulness(adapter, {"p1": "MKV..."}, "layer4", sae)       # doctest: +SKIP
>>> effect = edit_residues(adapter, "MKV...", "layer4", sae, [FeatureEdit([7], "clamp", 5.0)],
...                        residues=(10, 20))                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr

from sciinterp.splice import FeatureEdit, loss_recovered, splice
from sciinterp_adapters.protein.fasta import as_records

__all__ = [
    "AMINO_ACIDS", "MaskedLMFaithfulness", "ProteinLossRecovered", "edit_residues", "hook_mean",
    "loss_recovered_eval", "mask_tokens", "masked_lm_faithfulness",
]

log = logging.getLogger(__name__)

AMINO_ACIDS = tuple("ACDEFGHIKLMNPQRSTVWY")
"""The 20 standard residues: the ``amino_acid`` axis of :func:`edit_residues`."""
MAX_RESIDUES = 1022


class MaskedLMFaithfulness(NamedTuple):
    """Masked-LM cross-entropy (nats per masked residue) with the model clean, spliced and ablated."""

    ce_clean: float
    """The model alone."""
    ce_sae: float
    """The hook replaced by the SAE's reconstruction."""
    ce_sae_error: float
    """Reconstruction plus the error term (equals ``ce_clean`` up to float rounding: a sanity check)."""
    ce_zero: float
    """The hook zero-ablated."""
    ce_mean: float
    """The hook mean-ablated."""
    kl_sae: float
    """Mean KL(clean ‖ spliced) of the token distributions at masked residues (nats)."""
    kl_zero: float
    """Mean KL(clean ‖ zero-ablated)."""
    kl_mean: float
    """Mean KL(clean ‖ mean-ablated)."""
    recovered_zero: float
    """Loss recovered against zero-ablation, ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``."""
    recovered_mean: float
    """Loss recovered against mean-ablation."""
    fve: float
    """Variance of the hooked residue activations explained by the SAE (during the spliced pass)."""
    n_masked: int
    """Masked residues scored."""


def _layout(hook: str, mask_bt: torch.Tensor) -> torch.Tensor:
    """A (B, T) token mask in the hook's own layout ((T, B) for everything but ``embed``)."""
    return mask_bt if hook == "embed" else mask_bt.t()


def _residue_tokens(adapter: Any, tokens: torch.Tensor) -> torch.Tensor:
    a = adapter.alphabet
    return (tokens != a.cls_idx) & (tokens != a.eos_idx) & (tokens != a.padding_idx)


def _sequences(data: Any) -> list[tuple[str, str]]:
    if isinstance(data, str) and data.isalpha() and data.isupper():  # a bare sequence, not a path
        data = {"protein": data}
    recs = as_records(data)
    long = [(r.id, len(r.sequence)) for r in recs if len(r.sequence) > MAX_RESIDUES]
    if long:
        raise ValueError(f"protein {long[0][0]!r} has {long[0][1]} residues; interventions take at most {MAX_RESIDUES} (crop it)")
    return [(r.id, r.sequence) for r in recs]


def mask_tokens(adapter: Any, sequences: Sequence[str], *, mask_frac: float = 0.15, seed: int = 0,
                per_position: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked copies of ``sequences`` for scoring.

    Returns
    -------
    tokens (N, T), masked (N, T) bool, targets (N, T) long
        With ``per_position`` one copy per residue masking only that residue; otherwise one
        copy per sequence with ``round(mask_frac * L)`` (at least one) residues masked, drawn
        with ``seed``.  ``targets`` holds the original token ids.
    """
    if not 0 < mask_frac <= 1:
        raise ValueError(f"mask_frac={mask_frac} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    clean = adapter.encode(list(sequences)).cpu()
    rows, masks = [], []
    for i, seq in enumerate(sequences):
        n = len(seq)
        picks = [[p] for p in range(1, n + 1)] if per_position else [
            1 + rng.choice(n, size=max(1, int(round(mask_frac * n))), replace=False)]
        for pick in picks:
            m = torch.zeros(clean.shape[1], dtype=torch.bool)
            m[torch.as_tensor(np.asarray(pick))] = True
            rows.append(clean[i])
            masks.append(m)
    targets = torch.stack(rows)
    masked = torch.stack(masks)
    return targets.masked_fill(masked, adapter.alphabet.mask_idx), masked, targets


def hook_mean(adapter: Any, hook: str, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Mean ``(d,)`` activation at ``hook`` over the residue tokens of ``tokens (N, T)`` (clean model)."""
    point = adapter.hook_point(hook)
    total, count = None, 0
    for start in range(0, tokens.shape[0], batch_size):
        tok = tokens[start:start + batch_size]
        seen: list[torch.Tensor] = []

        def grab(_m, _i, out, seen=seen):
            seen.append(out if point.output_index is None else out[point.output_index])

        h = point.module.register_forward_hook(grab)
        try:
            with torch.no_grad():
                adapter.forward_logits(tok)
        finally:
            h.remove()
        sel = _layout(hook, _residue_tokens(adapter, tok).to(seen[0].device))
        x = seen[0][sel].float()
        total = x.sum(0) if total is None else total + x.sum(0)
        count += x.shape[0]
    return (total / count).cpu()


def _scores(adapter, hook, sae, tokens, masked, targets, batch_size, **splice_kw) -> tuple[torch.Tensor, float]:
    """Log-probabilities (n_masked, vocab) at masked residues and the splice's FVE."""
    out, sq_err, sq_norm = [], 0.0, 0.0
    for start in range(0, tokens.shape[0], batch_size):
        tok = tokens[start:start + batch_size]
        sel = _layout(hook, _residue_tokens(adapter, tok))
        with torch.no_grad():
            if splice_kw:
                with splice(adapter.hook_point(hook), sae, tokens=sel.to(adapter.options.device), **splice_kw) as st:
                    logits = adapter.forward_logits(tok)
                sq_err, sq_norm = sq_err + st.sq_err, sq_norm + st.sq_norm
            else:
                logits = adapter.forward_logits(tok)
        out.append(logits.log_softmax(-1)[masked[start:start + batch_size].to(logits.device)].cpu())
    return torch.cat(out), (1 - sq_err / sq_norm if sq_norm else float("nan"))


def masked_lm_faithfulness(
    adapter: Any, data: Any, hook: str, sae: Any, *, mean: torch.Tensor | None = None,
    mask_frac: float = 0.15, seed: int = 0, per_position: bool = False, batch_size: int = 16,
) -> MaskedLMFaithfulness:
    """Masked-LM cross-entropy and KL with the SAE spliced in at ``hook``, against ablations.

    Parameters
    ----------
    adapter
        An :class:`~sciinterp_adapters.protein.ESM2Adapter`.
    data
        Proteins: FASTA path, ``{id: sequence}``, records, or one sequence string.
    hook
        Hook name (``"layer4"``); the SAE's ``d_in`` must match its width.
    sae
        The SAE in raw-activation space (``SparseAutoencoder.load(dir)``).
    mean
        ``(d,)`` mean activation for mean-ablation (e.g. from the activation store); default:
        the mean over these proteins' residue tokens in the clean, unmasked model.
    mask_frac, seed, per_position
        Masking (see :func:`mask_tokens`).
    batch_size
        Masked copies per forward pass.
    """
    seqs = [s for _, s in _sequences(data)]
    tokens, masked, targets = mask_tokens(adapter, seqs, mask_frac=mask_frac, seed=seed, per_position=per_position)
    if mean is None:
        mean = hook_mean(adapter, hook, adapter.encode(seqs).cpu(), batch_size)
    truth = targets[masked]
    args = (adapter, hook, sae, tokens, masked, targets, batch_size)
    clean, _ = _scores(*args)
    runs = {
        "sae": _scores(*args, replace="sae"),
        "sae_error": _scores(*args, replace="sae", keep_error=True),
        "zero": _scores(*args, replace="zero"),
        "mean": _scores(*args, replace="mean", mean=torch.as_tensor(mean).float()),
    }

    def ce(lp):
        return float(-lp.gather(1, truth[:, None]).mean())

    def kl(lp):
        return float((clean.exp() * (clean - lp)).sum(1).mean())

    c = ce(clean)
    ces = {k: ce(lp) for k, (lp, _) in runs.items()}
    res = MaskedLMFaithfulness(
        ce_clean=c, ce_sae=ces["sae"], ce_sae_error=ces["sae_error"], ce_zero=ces["zero"], ce_mean=ces["mean"],
        kl_sae=kl(runs["sae"][0]), kl_zero=kl(runs["zero"][0]), kl_mean=kl(runs["mean"][0]),
        recovered_zero=_recovered(c, ces["sae"], ces["zero"]), recovered_mean=_recovered(c, ces["sae"], ces["mean"]),
        fve=runs["sae"][1], n_masked=int(truth.numel()),
    )
    log.info("masked-LM faithfulness at %s: CE clean %.4f, SAE %.4f, zero %.4f, mean %.4f; KL %.4f",
             hook, c, ces["sae"], ces["zero"], ces["mean"], res.kl_sae)
    return res


def _recovered(clean: float, spliced: float, ablated: float) -> float:
    try:
        return loss_recovered(clean, spliced, ablated)
    except ValueError:
        return float("nan")


class ProteinLossRecovered:
    """The trainer's :class:`~sciinterp.sae.DownstreamEval` for ESM-2: masked-LM loss recovered.

    ``train(..., evaluators={"masked_lm": ProteinLossRecovered(adapter, "layer4", proteins)})``
    writes every field of :class:`MaskedLMFaithfulness` to the SAE's ``eval.json``, plus
    ``loss_recovered`` (= ``recovered_zero``, the usual zero-ablation convention).  An SAE whose
    provenance names another hook is not scored (``{}``).
    """

    name = "masked_lm"
    """Key of these numbers in ``eval.json``."""

    def __init__(self, adapter: Any, hook: str, data: Any, *, mean: torch.Tensor | None = None, **kw: Any):
        adapter.hook_point(hook)  # unknown hook or proteins too long: fail now, not after training
        self.adapter, self.hook, self.data, self.mean, self.kw = adapter, hook, dict(_sequences(data)), mean, kw

    def __call__(self, sae: Any) -> Mapping[str, float]:
        trained_on = (getattr(sae, "provenance", None) or {}).get("hook_name")
        if trained_on not in (None, self.hook):  # one pass may train SAEs on several hooks
            log.info("masked-LM loss recovered at %s: skipping an SAE trained on %r", self.hook, trained_on)
            return {}
        res = masked_lm_faithfulness(self.adapter, self.data, self.hook, sae, mean=self.mean, **self.kw)
        return {"loss_recovered": float(res.recovered_zero), **{k: float(v) for k, v in res._asdict().items()}}

    def __repr__(self) -> str:  # stable across runs: it keys the pipeline's train stage
        kw = "".join(f", {k}={v!r}" for k, v in sorted(self.kw.items()))
        return (f"ProteinLossRecovered(hook={self.hook!r}, proteins={len(self.data)}, first={next(iter(self.data), None)!r}"
                f"{kw}{', mean=given' if self.mean is not None else ''})")


def loss_recovered_eval(adapter: Any, hook: str, data: Any, *, max_items: int | None = 16) -> ProteinLossRecovered:
    """:class:`ProteinLossRecovered` on the first ``max_items`` proteins of ``data`` of at most 1,022 residues.

    What :func:`sciinterp.intervene.loss_recovered_eval` (the CLI's ``train.loss_recovered``) builds for ESM-2.
    """
    recs = [(r.id, r.sequence) for r in as_records(data) if len(r.sequence) <= MAX_RESIDUES]
    if not recs:
        raise ValueError(f"no protein of at most {MAX_RESIDUES} residues in the data to score the masked-LM loss")
    return ProteinLossRecovered(adapter, hook, dict(recs[:max_items] if max_items else recs))


def edit_residues(
    adapter: Any, sequence: str, hook: str, sae: Any, edits: Sequence[FeatureEdit], *,
    residues: tuple[int, int] | None = None, keep_error: bool = True, protein: str = "protein",
) -> xr.Dataset:
    """Edit SAE features at a residue range and measure the change of the masked-LM output.

    Parameters
    ----------
    sequence
        One protein (at most 1,022 residues).
    edits
        :class:`~sciinterp.splice.FeatureEdit` s (zero, clamp, scale).
    residues
        ``(start, stop)``, 1-based and inclusive; ``None``: the whole protein.
    keep_error
        Keep the SAE's reconstruction error, so only the edit changes the computation
        (``x + x̂_edited − x̂``); ``False`` replaces the edited tokens by ``x̂_edited``.

    Returns
    -------
    xarray.Dataset
        Dims ``(position, amino_acid)``: ``logit_clean``, ``logit_edited``, ``dlogit``,
        ``prob_clean``, ``prob_edited``, ``dprob`` (probability of predicting each of the 20
        residues, softmax over the full vocabulary); per position: ``kl`` (nats,
        KL(clean ‖ edited)), ``p_residue_clean``/``p_residue_edited`` (probability of the actual
        residue), ``pred_clean``/``pred_edited`` (most likely residue); dims
        ``(position, feature)``: ``activation`` (clean SAE activation of each edited feature).
        Coords ``residue`` and ``edited`` (bool) along ``position``.
    """
    (pid, seq), = _sequences({protein: sequence})
    n = len(seq)
    start, stop = (1, n) if residues is None else (int(residues[0]), int(residues[1]))
    if not 1 <= start <= stop <= n:
        raise ValueError(f"residue range {start}-{stop} is outside protein {pid!r} (length {n}: positions 1..{n})")
    if not edits:
        raise ValueError("edit_residues needs at least one FeatureEdit")
    tokens = adapter.encode([seq])
    sel = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    sel[0, start:stop + 1] = True  # token p = residue p (BOS at 0)
    point = adapter.hook_point(hook)
    seen: list[torch.Tensor] = []
    h = point.module.register_forward_hook(
        lambda _m, _i, out: seen.append(out if point.output_index is None else out[point.output_index]))
    try:
        with torch.no_grad():
            clean = adapter.forward_logits(tokens)[0, 1:n + 1].cpu()
    finally:
        h.remove()
    with torch.no_grad():
        with splice(point, sae, replace="sae" if not keep_error else None, keep_error=keep_error,
                    edits=list(edits), tokens=_layout(hook, sel)) as st:
            edited = adapter.forward_logits(tokens)[0, 1:n + 1].cpu()
    feats = sorted({int(f) for e in edits for f in e.features})
    x = (seen[0][0] if hook == "embed" else seen[0][:, 0])[1:n + 1].float()  # (n, d) clean residues
    with torch.no_grad():
        act = sae.encode_dense(x)[:, feats].cpu()
    aa = [adapter.alphabet.get_idx(c) for c in AMINO_ACIDS]
    lp_c, lp_e = clean.log_softmax(-1), edited.log_softmax(-1)
    own = torch.tensor([adapter.alphabet.get_idx(c) for c in seq])
    pos = np.arange(1, n + 1)
    dims, dims_f = ("position", "amino_acid"), ("position", "feature")
    out = xr.Dataset(
        {
            "logit_clean": (dims, clean[:, aa].numpy()),
            "logit_edited": (dims, edited[:, aa].numpy()),
            "dlogit": (dims, (edited - clean)[:, aa].numpy()),
            "prob_clean": (dims, lp_c.exp()[:, aa].numpy()),
            "prob_edited": (dims, lp_e.exp()[:, aa].numpy()),
            "dprob": (dims, (lp_e.exp() - lp_c.exp())[:, aa].numpy()),
            "kl": ("position", (lp_c.exp() * (lp_c - lp_e)).sum(-1).numpy(), {"units": "nats"}),
            "p_residue_clean": ("position", lp_c.exp().gather(1, own[:, None])[:, 0].numpy()),
            "p_residue_edited": ("position", lp_e.exp().gather(1, own[:, None])[:, 0].numpy()),
            "pred_clean": ("position", np.array(AMINO_ACIDS)[clean[:, aa].argmax(1).numpy()]),
            "pred_edited": ("position", np.array(AMINO_ACIDS)[edited[:, aa].argmax(1).numpy()]),
            "activation": (dims_f, act.numpy()),
        },
        coords={"position": pos, "amino_acid": list(AMINO_ACIDS), "feature": feats,
                "residue": ("position", np.array(list(seq))), "edited": ("position", (pos >= start) & (pos <= stop))},
        attrs={"protein": pid, "hook": hook, "residues": f"{start}-{stop}", "keep_error": int(keep_error),
               "edits": "; ".join(f"{e.op}({list(map(int, e.features))}, {e.value:g})" for e in edits),
               "edited_tokens": st.edited_tokens},
    )
    return out


def run_interventions(adapter: Any, sae: Any, data: Any, cfg: Any, mean: torch.Tensor | None = None) -> xr.Dataset:
    """What :func:`sciinterp.intervene.intervene` runs for ESM-2: faithfulness and one residue edit.

    ``cfg`` is an :class:`~sciinterp.intervene.InterveneConfig`.  Faithfulness variables are
    prefixed ``faith_``; the edit (when ``cfg.features``) adds :func:`edit_residues`' variables.
    """
    recs = _sequences(data)
    if cfg.max_items:
        recs = recs[: cfg.max_items]
    out = xr.Dataset(attrs={"domain": "protein", "hook": cfg.hook})
    if cfg.faithfulness:
        f = masked_lm_faithfulness(adapter, dict(recs), cfg.hook, sae, mean=mean, mask_frac=cfg.mask_frac,
                                   seed=cfg.seed, per_position=cfg.per_position)
        out = out.assign({f"faith_{k}": ((), float(v)) for k, v in f._asdict().items()})
    if cfg.features:
        by_id = dict(_sequences(data))
        pid = cfg.protein or recs[0][0]
        if pid not in by_id:
            raise ValueError(f"protein {pid!r} is not in the data (first ids: {list(by_id)[:5]})")
        edit = edit_residues(adapter, by_id[pid], cfg.hook, sae, [FeatureEdit(list(cfg.features), cfg.op, cfg.value)],
                             residues=tuple(cfg.residues) if cfg.residues else None, keep_error=cfg.keep_error, protein=pid)
        out = out.merge(edit, combine_attrs="no_conflicts")
        out.attrs.update(edit.attrs)
    return out
