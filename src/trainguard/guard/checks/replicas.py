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
majority are named. Assumes homogeneous replicas (same hardware and kernels); a job
mixing GPU models may legitimately differ in the last bit -- set
``data_parallel="off"`` for it.

Without a majority (two ranks that disagree) the tie is broken by each rank's own
record (``replica_self_check``): right after its optimizer step (post-step hook) a rank
notes every parameter's version counter and the sampled coordinates, and at its next
pre-step it compares them. Between those two points nothing legitimate writes a
parameter in ordinary data-parallel training (forward, backward, ``zero_grad``, LR
schedulers, gradient clipping, EMA of a *copy* all leave the parameters alone). A
change there is "outside the optimizer"; it stays on record until an exchange finds
the replicas in agreement (then every rank made the same change: a checkpoint load,
pruning, an evaluation swap that was undone). When the ranks outside the largest group
are exactly those with such a record, they are named. Comparisons are sync-free (the
counts accumulate on the device and travel with the exchange). Limits: a write through
``.data`` or raw memory that misses every sampled coordinate leaves no record (the
divergence is then reported without a rank); a legitimate one-rank-only write (code
that edits weights on rank 0 only) is named like sabotage -- it is one.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import blake3
import torch

from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import (
    flat_view,
    is_replicated,
    trainable_parameters,
)
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import Throttle

_logger = logging.getLogger(__name__)

_MASK52 = (1 << 52) - 1
_SPREAD = "spread"
_PROBE = "probe"
_PROBE_RUN = 16
"""Consecutive coordinates per parameter the self-check compares (64 bytes of float32)."""
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplicaMonitor:
    """Compares parameter fingerprints of the replicas across ranks."""

    name = "replicas"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.enabled = False
        self.names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._layouts: dict[str, list[tuple[int, int, int]]] = {_SPREAD: [], _PROBE: []}
        """Per sample set and parameter: first coordinate, stride, count (shared seed)."""
        self._views: dict[str, list[torch.Tensor]] = {}
        """Views of each sample set; rebuilt when a parameter's storage moves
        (``p.data = ...``)."""
        self._ptrs: list[int] = []
        self._cacheable = True
        self._round = 0
        self._slices = 16
        self._weights: dict[tuple[torch.device, int], torch.Tensor] = {}
        """Cached index tensors per device."""
        self._throttle = Throttle(100)
        self.checks = 0
        self._self_check = True
        self._post_versions: list[int] | None = None
        self._post_samples: torch.Tensor | None = None
        self._changed: torch.Tensor | None = None
        """Per sampled coordinate: pre-steps at which it differed from the last post-step."""
        self._version_changed: set[int] = set()
        self.changed_at: int | None = None
        """First step whose pre-step found a parameter written outside the optimizer."""

    def start(self, ctx: GuardContext) -> None:
        """Draw the sampled coordinates (shared seed, identical on every rank)."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        self._slices = int(s["replica_slices"])
        named = trainable_parameters(ctx)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        # Keyed like the gradient sketch: the per-run secret every rank shares makes the
        # sampled coordinates and probes unknowable from trainguard's source.
        secret = int(s.get("_secret", 0))
        gen = torch.Generator().manual_seed((int(s["sketch_seed"]) + 1 + secret) % (1 << 62))
        k = int(s["replica_sample"])
        self._layouts = {
            _SPREAD: [_strided_sample(p.numel(), k, gen) for p in self._params],
            _PROBE: [_probe_run(p.numel(), _PROBE_RUN, gen) for p in self._params],
        }
        self._cacheable = bool(self._params) and all(
            p.is_contiguous() and p.device == self._params[0].device for p in self._params
        )
        self.enabled = ctx.world_size > 1 and is_replicated(ctx) and bool(self._params)
        self._self_check = bool(s.get("replica_self_check", True))

    def _samples(self, kind: str = _SPREAD) -> torch.Tensor:
        """One sample set of every parameter, as one float64 vector.

        ``spread`` (the exchange fingerprint): ``replica_sample`` coordinates spread
        over each tensor from a seeded start. ``probe`` (the self-check, twice a step):
        one run of ``_PROBE_RUN`` consecutive coordinates per tensor at a seeded
        offset -- a few cache lines and pages per tensor, where spread coordinates cost
        the training thread 0.4 ms a step on a 78-tensor GPT (a page per coordinate).
        Views are built once and read with one ``torch.cat``; they are rebuilt when a
        parameter's storage moved (``p.data = ...``, itself a write the comparison sees).
        """
        with torch.no_grad():
            if not self._cacheable:
                views = self._make_views(kind)
                device = views[0].device
                return torch.cat([v.to(device) for v in views]).to(torch.float64)
            ptrs = [p.data_ptr() for p in self._params]
            if ptrs != self._ptrs:
                self._views.clear()
                self._ptrs = ptrs
            cached = self._views.get(kind)
            if cached is None:
                cached = self._views[kind] = self._make_views(kind)
            return torch.cat(cached).to(torch.float64)

    def _make_views(self, kind: str) -> list[torch.Tensor]:
        return [
            flat_view(p)[start : start + stride * count : stride]
            for p, (start, stride, count) in zip(self._params, self._layouts[kind], strict=True)
        ]

    def before_step(self, ctx: GuardContext) -> None:
        """Did anything write the parameters since this rank's last post-step?"""
        if not (self.enabled and self._self_check) or self._post_versions is None:
            return
        versions = [p._version for p in self._params]
        if versions != self._post_versions:
            for j, (now_v, post_v) in enumerate(zip(versions, self._post_versions, strict=True)):
                if now_v != post_v:
                    self._version_changed.add(j)
            if self.changed_at is None:
                self.changed_at = ctx.step + 1
        post = self._post_samples
        if post is not None:
            now = self._samples(_PROBE)
            # Bitwise: a NaN left as it was is no change (NaN != NaN as floats).
            differ = now.view(torch.int64) != post.view(torch.int64)
            if self._changed is None:
                self._changed = torch.zeros_like(now)
            self._changed.add_(differ)

    def after_step(self, ctx: GuardContext) -> None:
        """Note the parameters as the optimizer left them (versions and samples)."""
        if not (self.enabled and self._self_check):
            return
        self._post_versions = [p._version for p in self._params]
        self._post_samples = self._samples(_PROBE)

    def close(self, ctx: GuardContext) -> None:
        """Nothing to remove."""

    def exchange_size(self, ctx: GuardContext) -> int:
        """Per parameter: sample sum, sample sum of squares, slice hash; then per
        parameter the outside-the-optimizer record (1: sampled values, 2: version)."""
        return 4 * len(self._params)

    def _outside_record(self, device: torch.device) -> torch.Tensor:
        """Per parameter: 1 if sampled values changed outside the optimizer, +2 if its
        version counter did (no host sync: the value part stays on the device)."""
        n = len(self._params)
        flags = torch.zeros(n, dtype=torch.float64, device=device)
        if self._changed is not None:
            flags.index_add_(0, self._sample_seg(device, _PROBE), self._changed.to(device))
            flags = (flags > 0).to(torch.float64)
        if self._version_changed:
            idx = torch.tensor(sorted(self._version_changed), dtype=torch.long, device=device)
            flags.index_add_(
                0, idx, torch.full((idx.numel(),), 2.0, dtype=torch.float64, device=device)
            )
        return flags

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
        samples = self._samples()
        with torch.no_grad():
            device = samples.device
            seg = self._sample_seg(device, _SPREAD)
            n = len(self._params)
            sums = torch.zeros(2, n, dtype=torch.float64, device=device)
            sums[0].index_add_(0, seg, samples)
            sums[1].index_add_(0, seg, samples * samples)
            hashes = self._hash_slices(self._params, piece, device)
            record = self._outside_record(device)
        return torch.cat([torch.stack([sums[0], sums[1], hashes], dim=1).reshape(-1), record])

    def _sample_seg(self, device: torch.device, kind: str) -> torch.Tensor:
        """Parameter number of every coordinate of a sample set (cached per device)."""
        key = (device, -1 if kind == _SPREAD else -2)
        seg = self._weights.get(key)
        if seg is None:
            counts = torch.tensor([c for _, _, c in self._layouts[kind]], dtype=torch.long)
            seg = torch.repeat_interleave(torch.arange(len(counts)), counts).to(device)
            self._weights[key] = seg
        return seg

    def _hash_slices(
        self, params: list[torch.nn.Parameter], piece: int, device: torch.device
    ) -> torch.Tensor:
        """52-bit integer hash of the raw bytes of slice ``piece`` of every parameter.

        Parameters in host memory: BLAKE3 of the slice's bytes (one C call per
        parameter; the tensor arithmetic below cost twice as much on the training
        thread). On a device (no host copy, no sync): each slice is viewed as integers
        of its element size and widened to int64; the hash is the sum of
        ``value * weight(position)`` with a fixed odd-multiplier weight per position
        within the slice. Either way plus the slice number, modulo 2**52. Every rank of
        a job holds its replica on the same kind of device, so all use the same hash.
        """
        if all(p.device.type == "cpu" for p in params):
            return self._hash_slices_host(params, piece).to(device)
        sums: list[torch.Tensor] = []
        for flat in (flat_view(p) for p in params):
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

    def _hash_slices_host(self, params: list[torch.nn.Parameter], piece: int) -> torch.Tensor:
        hashes: list[int] = []
        salt = piece * 0x100000001B3
        for p in params:
            numel = p.numel()
            size = -(-numel // self._slices)
            start = min(piece * size, numel)
            count = min(size, numel - start)
            if p.is_contiguous():
                # Raw memory of the slice, read in place: torch tensors expose no buffer,
                # a ctypes array over their memory is one (``p`` keeps it alive). No
                # torch call per parameter: this loop runs on the training thread.
                nbytes = count * p.element_size()
                address = p.data_ptr() + start * p.element_size()
            else:
                chunk = flat_view(p)[start : start + count].contiguous()
                nbytes, address = chunk.numel() * chunk.element_size(), chunk.data_ptr()
            raw = (
                memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")
                if nbytes
                else b""
            )
            value = int.from_bytes(blake3.blake3(raw).digest(8), "little")
            hashes.append((value + salt) & _MASK52)
        return torch.tensor(hashes, dtype=torch.float64)

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
        n = len(self._params)
        outside = gathered[:, 3 * n :]
        bits = gathered[:, : 3 * n].contiguous().view(torch.int64)
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
            # Every rank agrees: whatever wrote the parameters did so everywhere.
            self._forget_outside_writes()
            return
        piece = (self._round - 1) % self._slices
        if majority is None:
            self._no_majority(ctx, bits, groups, outside)
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

    def _forget_outside_writes(self) -> None:
        self._changed = None
        self._version_changed.clear()
        self.changed_at = None

    def _no_majority(
        self,
        ctx: GuardContext,
        bits: torch.Tensor,
        groups: list[list[int]],
        outside: torch.Tensor,
    ) -> None:
        """No majority: name the ranks that wrote their parameters outside the optimizer,
        when they are exactly the ranks outside one group of untouched ranks."""
        world = bits.shape[0]
        wrote = sorted(r for r in range(world) if bool((outside[r] > 0).any()))
        clean = [g for g in groups if not set(g) & set(wrote)]
        culprits = (
            wrote if wrote and len(clean) == 1 and len(clean[0]) + len(wrote) == world else []
        )
        if not culprits:
            if self._throttle.allow(("replica.divergence", None), ctx.step):
                ctx.report(
                    make_finding(
                        ctx,
                        "replica.divergence",
                        f"Data-parallel replicas disagree with no majority: groups {groups}"
                        + (
                            f"; ranks {wrote} wrote their parameters outside the optimizer"
                            if wrote
                            else "; no rank recorded a write outside its optimizer step"
                        )
                        + ".",
                        rank=None,
                        evidence={
                            "groups": groups,
                            "params": self._diff_params(bits, groups[0][0], groups[1][0]),
                            "wrote_outside_optimizer": wrote,
                        },
                    )
                )
            return
        ref = clean[0][0]
        names = self.names
        for r in culprits:
            if not self._throttle.allow(("replica.divergence", r), ctx.step):
                continue
            touched: list[dict[str, Any]] = [
                {
                    "param": names[j],
                    "sampled_values_changed": bool(int(outside[r, j]) & 1),
                    "version_changed": bool(int(outside[r, j]) & 2),
                }
                for j in range(len(names))
                if float(outside[r, j]) > 0
            ]
            params = self._diff_params(bits, ref, r)
            shown = ", ".join(str(t["param"]) for t in touched[:3])
            ctx.report(
                make_finding(
                    ctx,
                    "replica.divergence",
                    f"Rank {r}'s parameters differ from rank(s) {clean[0]} and rank {r} "
                    f"changed {shown} between its optimizer step and its next one (outside "
                    "the optimizer); no majority was needed.",
                    rank=r,
                    evidence={
                        "groups": groups,
                        "params": params[:20],
                        "written_outside_optimizer": touched[:20],
                        "first_seen_at_pre_step": (self.changed_at if r == ctx.rank else None),
                        "tie_break": "post-step vs next pre-step record",
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


def _strided_sample(numel: int, k: int, generator: torch.Generator) -> tuple[int, int, int]:
    """``(start, stride, count)`` of ``min(k, numel)`` coordinates spread over a tensor.

    The start is drawn from ``generator`` (the shared seed: equal on every rank) within
    the first stride, so the sampled coordinates are not a fixed, known pattern.
    """
    if numel <= k:
        return 0, 1, numel
    stride = numel // k
    start = int(torch.randint(stride, (1,), generator=generator))
    return start, stride, k


def _probe_run(numel: int, run: int, generator: torch.Generator) -> tuple[int, int, int]:
    """``(start, 1, count)``: ``min(run, numel)`` consecutive coordinates at a seeded offset."""
    if numel <= run:
        return 0, 1, numel
    start = int(torch.randint(numel - run + 1, (1,), generator=generator))
    return start, 1, run
