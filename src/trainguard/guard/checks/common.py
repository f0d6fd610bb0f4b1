"""Helpers shared by the parameter-level checks: which parameters, which coordinates."""

from __future__ import annotations

from typing import Any

import torch

from trainguard.guard.base import GuardContext


def watched_module(ctx: GuardContext) -> Any:
    """The inner (DDP-unwrapped) module."""
    return ctx.settings.get("_module") or ctx.model


def trainable_parameters(ctx: GuardContext) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every trainable parameter, in module order (same on every rank)."""
    module = watched_module(ctx)
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def is_replicated(ctx: GuardContext) -> bool:
    """Whether ranks hold replicas of the same parameters (data parallel).

    ``data_parallel="auto"``: a DDP model is replicated; FSDP modules and DTensor
    parameters are sharded (not replicated); a plain module in a multi-rank job is
    assumed to be a manual data-parallel loop. Pipeline or tensor parallel jobs set
    ``data_parallel="off"`` or pass the data-parallel group as ``process_group``.
    """
    mode = ctx.settings.get("data_parallel", "auto")
    if mode == "on":
        return True
    if mode == "off":
        return False
    if ctx.settings.get("_ddp") is not None:
        return True
    module = watched_module(ctx)
    for m in module.modules():
        if "FullyShardedDataParallel" in type(m).__name__ or type(m).__name__.startswith("FSDP"):
            return False
    for p in module.parameters():
        if type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor":
            return False
        break
    return ctx.world_size > 1


def sample_indices(
    numel: int, k: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``min(k, numel)`` distinct flat indices (sorted), drawn from ``generator``."""
    if numel <= k:
        idx = torch.arange(numel)
    elif numel <= 4_000_000:
        idx = torch.randperm(numel, generator=generator)[:k]
    else:
        idx = torch.randint(numel, (k,), generator=generator)
    return idx.sort().values.to(device)


def flat_view(t: torch.Tensor) -> torch.Tensor:
    """A flat view of ``t`` (a copy only when it is not contiguous)."""
    return t.detach().reshape(-1)
