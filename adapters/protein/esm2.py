"""The ESM-2 adapter: named hook points, token-budget batching, long-sequence windows.

>>> adapter = ESM2Adapter(model="demo")                                   # doctest: +SKIP
>>> adapter = ESM2Adapter(model="esm2_t33_650M_UR50D", device="cuda")     # doctest: +SKIP
>>> harvest_to_store(adapter, "proteins.fasta", ["layer4"], "acts.zarr")  # doctest: +SKIP

Hook points (``L`` = number of blocks, blocks numbered 1..L as fair-esm's ``repr_layers``)

=============  ==================================================  ======================
name           activation                                          module (output index)
=============  ==================================================  ======================
``embed``      token embedding ``embed_tokens(x)``                  ``embed_tokens``
``attn{i}``    attention block output (after ``out_proj``),        ``layers[i-1].self_attn`` (0)
               the term added to the residual stream
``mlp{i}``     feed-forward output (``fc2``), added to the stream   ``layers[i-1].fc2``
``layer{i}``   residual stream after block ``i``                    ``layers[i-1]`` (0)
               (``= repr_layers[i]`` of fair-esm for ``i < L``)
``final``      ``emb_layer_norm_after`` of ``layer{L}``             ``emb_layer_norm_after``
               (``= repr_layers[L]``, the LM head's input)
=============  ==================================================  ======================

``embed`` is the raw lookup; with token dropout ESM-2 feeds ``0.88 * embed`` (no masked tokens)
to block 1.  Every module except ``embed_tokens`` runs in fair-esm's **(T, B, E)** layout
(sequence first); ``embed`` is (B, T, E).  ``channel_dim`` is -1 for all, so splicing works on
either.  BOS, EOS and padding tokens are never stored.

Long sequences (more than ``max_len`` residues, at most 1,022 for ESM-2): ``long_policy="window"``
runs overlapping windows of ``max_len`` residues (``window_overlap`` shared between neighbours,
the last window aligned to the end), each with its own BOS/EOS, and stores every residue exactly
once, from the window where it is most central (furthest from a window edge; ties go to the
earlier window); ``"crop"`` keeps residues 1..``max_len``; ``"error"`` refuses (before anything
runs).  ``position`` always counts residues in the full sequence.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from sciinterp.adapter import HookPoint, TokenBatch
from sciinterp.provenance import state_dict_checksum
from sciinterp_adapters.protein.esm2_load import LoadedESM2, load_esm2
from sciinterp_adapters.protein.fasta import ProteinRecord, as_records

__all__ = ["ESM2Adapter", "ESM2Options", "Segment", "plan_segments"]

log = logging.getLogger(__name__)

MAX_RESIDUES = 1022
"""ESM-2's context: 1,024 positions including BOS and EOS."""


@dataclass(frozen=True)
class ESM2Options:
    """How the adapter runs the model."""

    device: str = "cpu"
    """Torch device, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """``auto``: bf16 autocast on CUDA, float32 elsewhere; activations are stored as float32."""
    token_budget: int = 16384
    """Padded tokens per forward pass (rows x longest row incl. BOS/EOS); proteins are length-sorted."""
    max_len: int = MAX_RESIDUES
    """Residues per forward row (at most 1,022)."""
    long_policy: Literal["window", "crop", "error"] = "window"
    """What to do with proteins longer than ``max_len`` (see the module docstring)."""
    window_overlap: int | None = None
    """Residues shared by consecutive windows (``long_policy="window"``), < ``max_len``;
    default ``max_len // 4`` (255 for 1,022)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_len <= MAX_RESIDUES:
            raise ValueError(f"max_len={self.max_len}: ESM-2 takes 1..{MAX_RESIDUES} residues per row")
        if self.long_policy not in ("window", "crop", "error"):
            raise ValueError(f"long_policy={self.long_policy!r}: use 'window', 'crop' or 'error'")
        if self.window_overlap is None:
            object.__setattr__(self, "window_overlap", self.max_len // 4)
        if not 0 <= self.window_overlap < self.max_len:
            raise ValueError(f"window_overlap={self.window_overlap} must be in [0, max_len={self.max_len})")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision={self.precision!r}: use 'auto', 'float32' or 'bfloat16'")
        if self.token_budget < self.max_len + 2:
            raise ValueError(f"token_budget={self.token_budget} must hold one full row (max_len + 2 = {self.max_len + 2})")


class Segment(NamedTuple):
    """One forward row of a protein: residues ``[start, stop)`` run, ``[keep_start, keep_stop)`` stored (0-based)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_segments(n: int, max_len: int, policy: str, overlap: int, rid: str = "?") -> list[Segment]:
    """Split a protein of ``n`` residues into forward rows; the kept ranges tile what is stored once."""
    if n <= max_len:
        return [Segment(0, n, 0, n)]
    if policy == "error":
        raise ValueError(
            f"protein {rid!r} has {n} residues, more than max_len={max_len}; "
            "use long_policy='window' or 'crop'"
        )
    if policy == "crop":
        return [Segment(0, max_len, 0, max_len)]
    stride = max_len - overlap
    starts = list(range(0, n - max_len, stride)) + [n - max_len]
    s = np.array(starts)
    j = np.arange(n)[:, None]
    centrality = np.minimum(j - s, s + max_len - 1 - j)  # distance to the nearest window edge
    centrality[(j < s) | (j >= s + max_len)] = -1
    best = centrality.argmax(axis=1)  # first maximum: ties go to the earlier window
    segs = []
    for w, st in enumerate(starts):
        kept = np.flatnonzero(best == w)
        if len(kept):
            segs.append(Segment(st, st + max_len, int(kept[0]), int(kept[-1]) + 1))
    return segs


class _Batch(NamedTuple):
    tokens: torch.Tensor  # (rows, T)
    rows: np.ndarray  # (n_tokens,) row of each stored token
    cols: np.ndarray  # (n_tokens,) column (token index) of each stored token
    coords: dict[str, np.ndarray]
    items: list[str]


class ESM2Adapter:
    """Harvest any ESM-2 (fair-esm ``.pt``, HF directory, or a cached model name) by hook name.

    Parameters
    ----------
    checkpoint
        A ``.pt`` file, an HF ``EsmModel``/``EsmForMaskedLM`` directory, or a package-relative
        name ``"sciinterp_adapters.protein:data/esm2_demo.pt"``.
    model
        Instead of ``checkpoint``: ``"demo"`` or an ESM-2 name (``"esm2_t33_650M_UR50D"``),
        looked up in ``search_dirs`` and the local torch-hub / HF caches (never downloaded).
    search_dirs
        Extra directories to look for ``<name>.pt`` or ``<name>/`` in.
    trust_checkpoint
        Allow full unpickling of a ``.pt`` that safe loading refuses (explicit opt-in).
    module
        Instead of either: an existing fair-esm ``ESM2`` module (tests, freshly trained models).
    **options
        Fields of :class:`ESM2Options` (``device``, ``precision``, ``token_budget``, ``max_len``,
        ``long_policy``, ``window_overlap``).
    """

    name = "esm2"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model: str | None = None,
        *,
        search_dirs: Sequence[str | os.PathLike] = (),
        trust_checkpoint: bool = False,
        module: torch.nn.Module | None = None,
        model_id: str | None = None,
        **options: Any,
    ):
        self.options = ESM2Options(**options)
        if module is not None:
            if checkpoint is not None or model is not None:
                raise ValueError("give one of checkpoint=, model= or module=")
            self.loaded = LoadedESM2(module.float().eval(), module.alphabet, model_id or "esm2-module", None, "module")
        else:
            self.loaded = load_esm2(checkpoint, model=model, search_dirs=list(search_dirs), trust_checkpoint=trust_checkpoint)
        self.model = self.loaded.model.to(self.options.device).eval()
        self.alphabet = self.loaded.alphabet
        self.model_id = model_id or self.loaded.model_id
        self.n_layers: int = self.model.num_layers
        self.d_model: int = self.model.embed_dim
        self._checksum: str | None = None

    # ------------------------------------------------------------ protocol
    def hook_names(self) -> list[str]:
        names = ["embed"]
        for i in range(1, self.n_layers + 1):
            names += [f"attn{i}", f"mlp{i}", f"layer{i}"]
        return names + ["final"]

    def provenance(self) -> dict[str, str]:
        if self._checksum is None:
            self._checksum = state_dict_checksum(self.model)
        o = self.options
        return {
            "model_id": self.model_id,
            "model_checksum": self._checksum,
            "model_layout": self.loaded.layout,
            "model_source": str(self.loaded.source or ""),
            "model_shape": f"layers={self.n_layers} embed_dim={self.d_model} heads={self.model.attention_heads}",
            "long_policy": f"{o.long_policy} max_len={o.max_len} window_overlap={o.window_overlap}",
        }

    def hook_point(self, hook: str) -> HookPoint:
        """Module whose output is ``hook`` (see the module docstring for layouts)."""
        m = self.model
        if hook == "embed":
            return HookPoint(m.embed_tokens, -1, None)
        if hook == "final":
            return HookPoint(m.emb_layer_norm_after, -1, None)
        for prefix, get, idx in (
            ("layer", lambda b: b, 0), ("attn", lambda b: b.self_attn, 0), ("mlp", lambda b: b.fc2, None),
        ):
            if hook.startswith(prefix) and hook[len(prefix):].isdigit():
                i = int(hook[len(prefix):])
                if 1 <= i <= self.n_layers:
                    return HookPoint(get(m.layers[i - 1]), -1, idx)
        raise KeyError(f"unknown hook {hook!r} for {self.model_id}; hooks are embed, "
                       f"attn/mlp/layer1..{self.n_layers}, final")

    # ------------------------------------------------------------ model access
    @property
    def batch_converter(self) -> Callable:
        """fair-esm's converter: ``[(id, seq), ...] -> (ids, seqs, tokens (B, T))`` with BOS/EOS/padding."""
        return self.alphabet.get_batch_converter()

    def encode(self, sequences: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, max_len + 2)`` with BOS, EOS and right padding, on the adapter's device."""
        _, _, toks = self.batch_converter([(str(i), s) for i, s in enumerate(sequences)])
        return toks.to(self.options.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dev = torch.device(self.options.device)
        p = self.options.precision
        if p == "bfloat16" or (p == "auto" and dev.type == "cuda"):
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits ``(B, T, 33)`` (float32) for token ids ``(B, T)``; hooks set by a splice apply.

        Not wrapped in ``inference_mode``: callers decide (interventions may need gradients).
        """
        with self._autocast():
            return self.model(tokens.to(self.options.device))["logits"].float()

    # ------------------------------------------------------------ harvest
    def _plan(self, records: list[ProteinRecord]) -> list[list[tuple[ProteinRecord, list[Segment]]]]:
        """Length-sorted batches of whole proteins under the token budget."""
        o = self.options
        plans = [(r, plan_segments(len(r), o.max_len, o.long_policy, o.window_overlap, r.id)) for r in records]
        plans.sort(key=lambda p: (-len(p[0]), p[0].id))
        batches, cur, n_rows, longest = [], [], 0, 0
        for rec, segs in plans:
            width = max(s.stop - s.start for s in segs) + 2
            rows, wide = n_rows + len(segs), max(longest, width)
            if cur and rows * wide > o.token_budget:
                batches.append(cur)
                cur, rows, wide = [], len(segs), width
            cur.append((rec, segs))
            n_rows, longest = rows, wide
        if cur:
            batches.append(cur)
        return batches

    def _tensorise(self, batch: list[tuple[ProteinRecord, list[Segment]]]) -> _Batch:
        a = self.alphabet
        rows_tok, r_idx, c_idx, prot, pos, res = [], [], [], [], [], []
        for rec, segs in batch:
            for seg in segs:
                row = len(rows_tok)
                rows_tok.append([a.cls_idx, *(a.get_idx(c) for c in rec.sequence[seg.start:seg.stop]), a.eos_idx])
                keep = np.arange(seg.keep_start, seg.keep_stop)
                r_idx.append(np.full(len(keep), row))
                c_idx.append(keep - seg.start + 1)  # +1: BOS
                prot.append(np.full(len(keep), rec.id, dtype=object))
                pos.append(keep + 1)
                res.append(np.array(list(rec.sequence[seg.keep_start:seg.keep_stop])))
        tokens = torch.full((len(rows_tok), max(map(len, rows_tok))), a.padding_idx, dtype=torch.long)
        for i, t in enumerate(rows_tok):
            tokens[i, : len(t)] = torch.tensor(t)
        coords = {
            "protein": np.concatenate(prot).astype(str),
            "position": np.concatenate(pos).astype(np.int64),
            "residue": np.concatenate(res).astype(str),
        }
        return _Batch(tokens, np.concatenate(r_idx), np.concatenate(c_idx), coords, [r.id for r, _ in batch])

    def harvest(self, data: Any, hooks: Sequence[str], *, skip: Collection[str] = ()) -> Iterator[TokenBatch]:
        """Yield one :class:`TokenBatch` per forward pass over ``data`` (FASTA path, records, dict).

        The whole input is validated (alphabet, duplicates, lengths under ``long_policy``) before
        the first forward pass.  Batches hold whole proteins, longest first; the windows of a
        protein too long for ``token_budget`` run in several forward passes of one batch.
        """
        records = as_records(data)
        points = {h: self.hook_point(h) for h in hooks}
        todo = [r for r in records if r.id not in skip]
        plan = self._plan(todo)  # raises for long_policy="error" before anything runs
        captured: dict[str, torch.Tensor] = {}

        def recorder(hook: str, idx: int | None) -> Callable:
            def fn(_module, _inputs, output):
                captured[hook] = output[idx] if idx is not None else output

            return fn

        handles = [p.module.register_forward_hook(recorder(h, p.output_index)) for h, p in points.items()]
        try:
            for batch in plan:
                b = self._tensorise(batch)
                # rows per forward: one protein's windows may exceed the budget; run them in chunks
                per = max(1, self.options.token_budget // b.tokens.shape[1])
                parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
                for start in range(0, len(b.tokens), per):
                    captured.clear()
                    with torch.inference_mode(), self._autocast():
                        self.model(b.tokens[start:start + per].to(self.options.device))
                    for h in hooks:
                        parts[h].append(captured[h])
                rows = torch.as_tensor(b.rows, device=self.options.device)
                cols = torch.as_tensor(b.cols, device=self.options.device)
                acts = {}
                for h in hooks:
                    x = torch.cat(parts[h], dim=0 if h == "embed" else 1)  # batch axis: 0 for embed, else 1
                    # embed is (B, T, E); every other hook is (T, B, E)
                    x = x[rows, cols] if h == "embed" else x[cols, rows]
                    acts[h] = x.float().cpu()
                yield TokenBatch(acts=acts, coords=b.coords, items=b.items)
        finally:
            for handle in handles:
                handle.remove()
            captured.clear()
