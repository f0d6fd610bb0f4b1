"""``replica.divergence``: data-parallel replicas that must be identical are not.

After the optimizer step every replica holds bit-identical parameters (same reduced
gradient, same optimizer, same arithmetic). Every ``exchange_every`` steps each rank
sends a fingerprint of its parameters:

- per parameter, the float64 sum and sum of squares of ``replica_sample``
  coordinates (fixed, drawn with the shared seed): catches any edit of a whole
  tensor or of a broad region, every check;
- per parameter, a 52-bit integer hash of the raw bytes of one slice (1 of
  ``replica_slices``, rotating, so every byte is covered every ``replica_slices``
  checks): catches a single flipped bit anywhere, with a bounded delay.

Ranks are grouped by exact equality of the fingerprint; the ranks outside the strict
majority are named. With two ranks that disagree there is no majority: the finding is
reported without a rank. Assumes homogeneous replicas (same hardware and kernels); a
job mixing GPU models may legitimately differ in the last bit -- set
``data_parallel="off"`` for it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import (
    flat_view,
    is_replicated,
    sample_indices,
    trainable_parameters,
)
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import Throttle

_logger = logging.getLogger(__name__)

_MASK52 = (1 << 52) - 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplicaMonitor:
    """Compares parameter fingerprints of the replicas across ranks."""

    name = "replicas"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.enabled = False
        self.names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._idx: list[torch.Tensor] = []
        self._round = 0
        self._slices = 16
        self._weights: dict[tuple[torch.device, int], torch.Tensor] = {}
        """Cached index tensors per device."""
        self._throttle = Throttle(100)
        self.checks = 0

    def start(self, ctx: GuardContext) -> None:
        """Draw the sampled coordinates (shared seed, identical on every rank)."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        self._slices = int(s["replica_slices"])
        named = trainable_parameters(ctx)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        gen = torch.Generator().manual_seed(int(s["sketch_seed"]) + 1)
        k = int(s["replica_sample"])
        self._idx = [sample_indices(p.numel(), k, gen, p.device) for p in self._params]
        self.enabled = ctx.world_size > 1 and is_replicated(ctx) and bool(self._params)

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing before the step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Nothing per step; the check runs at the exchange."""

    def close(self, ctx: GuardContext) -> None:
        """Nothing to remove."""

    def exchange_size(self, ctx: GuardContext) -> int:
        """Three values per parameter: sample sum, sample sum of squares, slice hash."""
        return 3 * len(self._params)

    def exchange_payload(self, ctx: GuardContext) -> torch.Tensor:
        """This rank's parameter fingerprint (after the step).

        Vectorised: one ``index_select`` and one slice per parameter, then every sum,
        square and hash over the concatenation (a handful of ops per exchange, not a
        dozen per parameter).
        """
        if not self._params:
            return torch.zeros(0, dtype=torch.float64)
        piece = self._round % self._slices
        self._round += 1
        with torch.no_grad():
            flats = [flat_view(p) for p in self._params]
            device = flats[0].device
            samples = torch.cat(
                [f.index_select(0, idx).to(device) for f, idx in zip(flats, self._idx, strict=True)]
            ).to(torch.float64)
            seg = self._sample_seg(device)
            n = len(self._params)
            sums = torch.zeros(2, n, dtype=torch.float64, device=device)
            sums[0].index_add_(0, seg, samples)
            sums[1].index_add_(0, seg, samples * samples)
            hashes = self._hash_slices(flats, piece, device)
        return torch.stack([sums[0], sums[1], hashes], dim=1).reshape(-1)

    def _sample_seg(self, device: torch.device) -> torch.Tensor:
        """Parameter number of every sampled coordinate (cached per device)."""
        key = (device, -1)
        seg = self._weights.get(key)
        if seg is None:
            seg = torch.cat(
                [
                    torch.full((idx.numel(),), j, dtype=torch.long, device=device)
                    for j, idx in enumerate(self._idx)
                ]
            )
            self._weights[key] = seg
        return seg

    def _hash_slices(
        self, flats: list[torch.Tensor], piece: int, device: torch.device
    ) -> torch.Tensor:
        """52-bit integer hash of the raw bytes of slice ``piece`` of every parameter.

        Each slice is viewed as integers of its element size and widened to int64; the
        hash is the sum of ``value * weight(position)`` with a fixed odd-multiplier
        weight per position within the slice, plus the slice number, modulo 2**52.
        """
        sums: list[torch.Tensor] = []
        for flat in flats:
            size = -(-flat.numel() // self._slices)
            chunk = flat[piece * size : (piece + 1) * size]
            if chunk.numel() == 0:
                sums.append(torch.zeros((), dtype=torch.int64, device=device))
                continue
            view_dtype = _INT_VIEW.get(chunk.element_size())
            if view_dtype is None or chunk.is_complex():
                bits = chunk.contiguous().view(torch.uint8).to(torch.int64)
            else:
                bits = chunk.contiguous().view(view_dtype).to(torch.int64)
            # Weights depend only on the slice length: a few cached tensors per model.
            sums.append((bits * self._weight(bits.device, bits.numel())).sum().to(device))
        h = torch.stack(sums) + piece * 0x100000001B3
        return (h & _MASK52).to(torch.float64)

    def _weight(self, device: torch.device, n: int) -> torch.Tensor:
        key = (device, n)
        w = self._weights.get(key)
        if w is None:
            w = (
                torch.arange(1, n + 1, dtype=torch.int64, device=device) * 0x9E3779B1 + 0x7F4A7C15
            ) & 0x7FFFFFFF
            if len(self._weights) > 256:
                self._weights.clear()
            self._weights[key] = w
        return w

    def on_exchange(self, ctx: GuardContext, gathered: torch.Tensor) -> None:
        """Group ranks by identical fingerprints; name those outside the majority."""
        world = gathered.shape[0]
        if not self.enabled or world < 2 or gathered.shape[1] == 0:
            return
        self.checks += 1
        bits = gathered.contiguous().view(torch.int64)
        groups: list[list[int]] = []
        for r in range(world):
            for g in groups:
                if torch.equal(bits[g[0]], bits[r]):
                    g.append(r)
                    break
            else:
                groups.append([r])
        groups.sort(key=len, reverse=True)
        majority = groups[0] if len(groups[0]) * 2 > world else None
        if ctx.rank == 0:
            # Telemetry for the run report: one event per exchange, on rank 0 only.
            outliers = sorted(r for g in groups[1:] for r in g) if len(groups) > 1 else []
            ctx.sink.record(
                "replica.check",
                {
                    "step": ctx.step,
                    "agree": len(groups) == 1,
                    "world_size": world,
                    "outliers": outliers,
                },
            )
        if len(groups) == 1:
            return
        piece = (self._round - 1) % self._slices
        if majority is None:
            if self._throttle.allow(("replica.divergence", None), ctx.step):
                ctx.report(
                    make_finding(
                        ctx,
                        "replica.divergence",
                        f"Data-parallel replicas disagree with no majority: groups {groups}.",
                        rank=None,
                        evidence={
                            "groups": groups,
                            "params": self._diff_params(bits, groups[0][0], groups[1][0]),
                        },
                    )
                )
            return
        ref = majority[0]
        for g in groups[1:]:
            for r in g:
                if not self._throttle.allow(("replica.divergence", r), ctx.step):
                    continue
                params = self._diff_params(bits, ref, r)
                ctx.report(
                    make_finding(
                        ctx,
                        "replica.divergence",
                        f"Rank {r}'s parameters differ from the majority of replicas "
                        f"({len(majority)} of {world} ranks agree): "
                        f"{', '.join(p['param'] for p in params[:3])}.",
                        rank=r,
                        evidence={
                            "majority": majority,
                            "params": params[:20],
                            "slice": piece,
                            "slices": self._slices,
                        },
                    )
                )

    def _diff_params(self, bits: torch.Tensor, a: int, b: int) -> list[dict[str, Any]]:
        """Which parameters (and which part of the fingerprint) differ between ranks a and b."""
        out = []
        parts = ("sample_sum", "sample_sumsq", "slice_hash")
        for j, name in enumerate(self.names):
            differ = [
                parts[k] for k in range(3) if int(bits[a, 3 * j + k]) != int(bits[b, 3 * j + k])
            ]
            if differ:
                out.append({"param": name, "differs_in": differ})
        return out
