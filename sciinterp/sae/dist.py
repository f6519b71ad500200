"""DDP helpers of the trainer: rank/world from torchrun's environment, sums and gathers over ranks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["Dist", "all_gather_fn", "all_sum_fn", "get_dist", "pick_device"]


class Dist(NamedTuple):
    """This process's rank and the world size."""

    rank: int
    world: int


def get_dist() -> Dist:
    """Rank and world; initialises the process group (NCCL on GPU, else gloo) under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist(0, 1)


def all_sum_fn(world: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function summing a tensor over ranks (identity for one process)."""
    if world == 1:
        return lambda t: t
    import torch.distributed as dist

    def f(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    return f


def all_gather_fn(world: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Concatenate 1-D tensors of possibly different lengths over ranks, in rank order."""
    if world == 1:
        return lambda t: t
    import torch.distributed as dist

    def f(t: torch.Tensor) -> torch.Tensor:
        n = torch.tensor([t.numel()], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        top = int(max(s.item() for s in sizes))
        padded = torch.cat([t, t.new_zeros(top - t.numel())])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    return f


def pick_device(name: str, rank: int) -> torch.device:
    """``auto``: this rank's CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)
