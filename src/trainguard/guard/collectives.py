"""Cross-rank exchange for the guard: tensor collectives on the job's own group.

Only fixed-size float64 tensors cross rank boundaries, through
``all_gather_single`` / ``all_gather_into_tensor`` (or ``all_gather`` of a tensor
list where the backend lacks them). Never ``all_gather_object`` /
``broadcast_object_list``: those unpickle what other ranks send, and a compromised
rank would get code execution on every peer. With NCCL the tensors live on the
rank's current CUDA device; with gloo on the CPU.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


def distributed_ready() -> bool:
    """True when torch.distributed is available and a default group exists."""
    return bool(dist.is_available() and dist.is_initialized())


def group_device(group: Any) -> torch.device:
    """The device a collective on ``group`` must use (CUDA for NCCL, else CPU)."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Exchanger:
    """Gathers one float64 vector from every rank of a process group."""

    def __init__(self, group: Any | None):
        """Bind to ``group`` (None = the default group), or a single process."""
        self.group = group
        if group is not None or distributed_ready():
            self.world_size = dist.get_world_size(group)
            self.rank = dist.get_rank(group)
            self.device = group_device(group)
        else:
            self.world_size = 1
            self.rank = 0
            self.device = torch.device("cpu")
        self.calls = 0

    def all_gather(self, vector: torch.Tensor) -> torch.Tensor:
        """Every rank's ``vector`` as a CPU float64 tensor of shape ``[world, n]``.

        All ranks must call this with vectors of the same length, in the same order.
        """
        local = vector.detach().reshape(-1).to(device=self.device, dtype=torch.float64)
        if self.world_size == 1:
            return local.reshape(1, -1).cpu()
        out = torch.empty(self.world_size * local.numel(), dtype=torch.float64, device=self.device)
        # all_gather_single is the current name (torch >= 2.13); all_gather_into_tensor
        # the older one; the list variant works everywhere.
        flat = getattr(dist, "all_gather_single", None)
        flat = flat or getattr(dist, "all_gather_into_tensor", None)
        gathered = False
        if flat is not None:
            try:
                flat(out, local, group=self.group)
                gathered = True
            except RuntimeError:
                # Some backends lack the flat variant; fall back to the list form.
                gathered = False
        if not gathered:
            parts = list(out.chunk(self.world_size))
            dist.all_gather(parts, local, group=self.group)
        self.calls += 1
        return out.reshape(self.world_size, -1).cpu()

    def broadcast_words(self, words: list[int], src: int = 0) -> list[int]:
        """Broadcast a few 52-bit integers from ``src`` (used for the shared run id)."""
        t = torch.tensor([float(w) for w in words], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.broadcast(t, src=src, group=self.group)
        return [int(v) for v in t.cpu().tolist()]
