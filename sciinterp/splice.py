"""Interventions: splice an SAE into a model's own forward pass, ablate or steer features.

One mechanism serves every adapter.  An adapter that fits
:class:`~sciinterp.adapter.Spliceable` says where a hook lives
(:class:`~sciinterp.adapter.HookPoint`: module, channel axis, tuple index);
:func:`splice` registers a forward hook there that rewrites the module's output:

* ``replace="sae"``: the activation becomes the SAE's reconstruction
  (``keep_error=True`` adds back the reconstruction error, so only the edits change
  the model's computation);
* ``replace="zero"`` / ``"mean"``: zero- or mean-ablation baselines for "loss recovered";
* ``edits``: :class:`FeatureEdit` s (zero, clamp to a value, scale by α) applied to the
  SAE's codes, only at the tokens selected by ``tokens``.

>>> with splice(adapter.hook_point("layer3"), sae, edits=[FeatureEdit([12], "scale", 4.0)]):  # doctest: +SKIP
...     logits = adapter.logits(batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sciinterp.adapter import HookPoint
from sciinterp.sae.shape import d_in_of, d_sae_of

__all__ = ["FeatureEdit", "SpliceStats", "loss_recovered", "splice"]

TokenMask = torch.Tensor | Callable[[tuple[int, ...]], torch.Tensor] | None


@dataclass(frozen=True)
class FeatureEdit:
    """An edit of SAE features.

    Attributes
    ----------
    features
        Feature (latent) indices, each in ``[0, d_sae)``.
    op
        ``"zero"`` ablates, ``"clamp"`` sets the activation to ``value`` (firing or not),
        ``"scale"`` multiplies it by ``value`` (α).
    value
        The clamp value or the scale factor α.
    """

    features: Sequence[int]
    op: Literal["zero", "clamp", "scale"] = "zero"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in ("zero", "clamp", "scale"):
            raise ValueError(f"FeatureEdit.op={self.op!r}: use 'zero', 'clamp' or 'scale'")
        if not len(self.features):
            raise ValueError("FeatureEdit.features is empty: name at least one feature index")


@dataclass
class SpliceStats:
    """What a splice saw while active: forward calls, tokens edited, reconstruction error."""

    calls: int = 0
    tokens: int = 0
    edited_tokens: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    per_call: list[dict[str, float]] = field(default_factory=list)

    @property
    def fve(self) -> float:
        """Fraction of the hooked activations' squared norm explained by the SAE."""
        return 1.0 - self.sq_err / self.sq_norm if self.sq_norm else float("nan")


def _decode_dense(sae: Any, z: torch.Tensor) -> torch.Tensor:
    if hasattr(sae, "decode_dense"):
        return sae.decode_dense(z)
    return z @ sae.W_dec + sae.b_dec


def _apply_edits(z: torch.Tensor, edits: Sequence[FeatureEdit]) -> torch.Tensor:
    z = z.clone()
    for e in edits:
        idx = torch.as_tensor(list(e.features), device=z.device)
        if e.op == "zero":
            z[:, idx] = 0
        elif e.op == "clamp":
            z[:, idx] = e.value
        else:
            z[:, idx] = z[:, idx] * e.value
    return z


@contextlib.contextmanager
def splice(
    point: HookPoint,
    sae: Any = None,
    *,
    replace: Literal["sae", "zero", "mean"] | None = "sae",
    keep_error: bool = False,
    edits: Sequence[FeatureEdit] = (),
    tokens: TokenMask = None,
    mean: torch.Tensor | None = None,
    steps: Collection[int] | None = None,
) -> Iterator[SpliceStats]:
    """Rewrite the output at ``point`` while the context is active.

    Parameters
    ----------
    point
        Where the hook lives (``adapter.hook_point(name)``).
    sae
        The SAE (``encode_dense(x) -> (N, d_sae)``, ``decode_dense(z)`` or ``W_dec``/``b_dec``);
        needed for ``replace="sae"`` and for ``edits``.
    replace
        ``"sae"``: reconstruction; ``"zero"``/``"mean"``: ablation baselines; ``None``: keep the
        activation and apply only ``edits`` (as a change of the reconstruction, ``x + Δx̂``).
    keep_error
        With ``replace="sae"``: add the reconstruction error back (``x̂_edited + (x − x̂)``).
    edits
        Feature edits applied at the selected tokens.
    tokens
        Which tokens to rewrite: a bool tensor over the output's non-channel axes, or a callable
        taking that shape and returning one; ``None`` selects all tokens.
    mean
        ``(d_in,)`` mean activation for ``replace="mean"``.
    steps
        Forward calls of the hooked module (0-based, counted from entering the context) to
        rewrite; the others pass through unchanged.  In an autoregressive rollout call ``k``
        produces step ``k + 1``, so ``steps={2}`` edits only the third step.  ``None``: every call.

    Yields
    ------
    SpliceStats, filled in as the model runs.
    """
    if replace not in ("sae", "zero", "mean", None):
        raise ValueError(f"replace={replace!r}: use 'sae', 'zero', 'mean' or None")
    if (replace == "sae" or edits) and sae is None:
        raise ValueError("splice needs an SAE for replace='sae' or for feature edits")
    if replace == "mean" and mean is None:
        raise ValueError("replace='mean' needs the mean activation (d_in,), e.g. from the activation store")
    if steps is not None:
        steps = frozenset(int(k) for k in steps)
        if any(k < 0 for k in steps):
            raise ValueError(f"steps={sorted(steps)}: forward-call indices count from 0")
    d_in = d_in_of(sae) if sae is not None else None
    if sae is not None:
        d_sae = d_sae_of(sae)
        bad = [f for e in edits for f in e.features if not 0 <= int(f) < d_sae]
        if bad:
            raise ValueError(f"unknown feature index {bad[0]}: this SAE has {d_sae} features (0..{d_sae - 1})")
    stats = SpliceStats()

    def rewrite(x: torch.Tensor) -> torch.Tensor:
        if steps is not None and stats.calls not in steps:
            stats.calls += 1
            return x
        moved = x.movedim(point.channel_dim, -1)
        shape = moved.shape
        if d_in is not None and shape[-1] != d_in:
            raise ValueError(
                f"the hooked activation has {shape[-1]} channels but the SAE expects d_in={d_in}: "
                "wrong hook or wrong SAE"
            )
        flat = moved.reshape(-1, shape[-1])
        mask = tokens(tuple(shape[:-1])) if callable(tokens) else tokens
        sel = torch.ones(flat.shape[0], dtype=torch.bool, device=x.device) if mask is None else (
            torch.as_tensor(mask, device=x.device).expand(shape[:-1]).reshape(-1)
        )
        xs = flat[sel].float()
        new = xs
        if replace == "zero":
            new = torch.zeros_like(xs)
        elif replace == "mean":
            new = mean.to(xs).expand_as(xs)
        if sae is not None and (replace == "sae" or edits):
            z = sae.encode_dense(xs)
            recon = _decode_dense(sae, z)
            stats.sq_err += float(((recon - xs) ** 2).sum().detach())
            stats.sq_norm += float(((xs - xs.mean(0)) ** 2).sum().detach())
            edited = _decode_dense(sae, _apply_edits(z, edits)) if edits else recon
            if replace == "sae":
                new = edited + (xs - recon) if keep_error else edited
            elif replace is None:
                new = xs + (edited - recon)
        out = flat.clone()
        out[sel] = new.to(out.dtype)
        stats.calls += 1
        stats.tokens += flat.shape[0]
        stats.edited_tokens += int(sel.sum())
        return out.reshape(shape).movedim(-1, point.channel_dim)

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if point.output_index is None:
            return rewrite(output)
        items = list(output)
        items[point.output_index] = rewrite(items[point.output_index])
        return type(output)(items) if isinstance(output, tuple) else items

    handle = point.module.register_forward_hook(hook)
    try:
        yield stats
    finally:
        handle.remove()


def loss_recovered(clean: float, spliced: float, ablated: float) -> float:
    """``(L_ablated − L_spliced) / (L_ablated − L_clean)``: 1 = as good as the model, 0 = as bad as ablation."""
    denom = ablated - clean
    if abs(denom) < 1e-12:
        raise ValueError(f"ablation does not change the loss (clean {clean:.6g}, ablated {ablated:.6g})")
    return (ablated - spliced) / denom
