"""Helpers for tests and for adapter authors: a tiny fake adapter that fits the protocol."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch

from sciinterp.adapter import HookPoint, TokenBatch

__all__ = ["FakeAdapter"]


class FakeAdapter:
    """A deterministic two-layer MLP over random "sequences", for tests.

    ``data`` is a list of sequence lengths; item ``i`` is named ``"seq{i}"`` and
    yields ``length`` tokens with coordinates ``seq`` and ``position`` (1-based).
    """

    name = "fake"

    def __init__(self, d_in: int = 8, d_hidden: int = 16, seed: int = 0, items_per_batch: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(1000, d_in, generator=g)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(d_in, d_hidden), torch.nn.GELU(), torch.nn.Linear(d_hidden, d_in)
        )
        for p in self.model.parameters():
            torch.nn.init.normal_(p, generator=g)
        self.items_per_batch = items_per_batch
        self.seed = seed

    def hook_names(self) -> list[str]:
        return ["hidden", "out"]

    def provenance(self) -> dict[str, str]:
        return {"model_id": f"fake-mlp-seed{self.seed}", "model_checksum": f"seed{self.seed}"}

    def hook_point(self, hook: str) -> HookPoint:
        return HookPoint(module={"hidden": self.model[1], "out": self.model[2]}[hook])

    @torch.inference_mode()
    def harvest(
        self, data: Sequence[int], hooks: Sequence[str], *, skip: Collection[str] = ()
    ) -> Iterator[TokenBatch]:
        todo = [(f"seq{i}", n) for i, n in enumerate(data) if f"seq{i}" not in skip]
        for start in range(0, len(todo), self.items_per_batch):
            chunk = todo[start : start + self.items_per_batch]
            tokens = torch.cat([torch.arange(n) * 7 + int(name[3:]) for name, n in chunk]) % 1000
            h = self.model[1](self.model[0](self.embed[tokens]))
            out = self.model[2](h)
            acts = {"hidden": h, "out": out}
            yield TokenBatch(
                acts={k: acts[k] for k in hooks},
                coords={
                    "seq": np.concatenate([[name] * n for name, n in chunk]).astype(str),
                    "position": np.concatenate([np.arange(1, n + 1) for _, n in chunk]),
                },
                items=[name for name, _ in chunk],
            )
