"""Per-parameter squared norms of a DDP bucket, read in sampled rows.

The gradient monitor needs each rank's per-layer local gradient norm on its
fingerprinted steps. Reading the whole bucket for it was the guard's largest cost on
the training thread (a full memory pass over every gradient, 40 % of the steps). Large
parameters are instead read in rows of ``ROW`` elements, one row in every ``stride`` of
the bucket: the rows form a strided view of the bucket buffer (no copy, no gather),
reduced by one ``vector_norm`` call, and each parameter's sum is scaled by its rows over
its sampled rows. Which row of every ``stride`` is read is drawn per step from the
run's secret (:meth:`GradientMonitor.scheduled`'s draw), equal on every rank so the
ranks are compared on the same coordinates.

Read exactly, every step: small parameters (biases, norms), the partial rows at the
ends of each large parameter, and the rows past the last whole group of ``stride``
rows. So a corrupted layer is seen at once whatever its size; what sampling gives up
is a corruption confined to a few rows inside a large matrix, which is seen on the
fingerprinted steps whose draw lands on one of them (probability ``1/stride`` per row
per step) instead of every fingerprinted step.

The estimate's own noise (a few percent for a 256x256 matrix at stride 8) is far below
the inter-rank spread of honest gradients that the thresholds are calibrated on.
"""

from __future__ import annotations

import torch

ROW = 128
"""Elements per sampled row (512 bytes of float32: whole cache lines, and long enough
for the hardware prefetcher; shorter rows read fewer bytes but no faster)."""

MIN_ROWS = 16
"""Whole rows a parameter needs (per ``stride``) before it is sampled, not read fully."""


class BucketNormPlan:
    """How to estimate per-parameter squared norms from one bucket's flat buffer."""

    def __init__(
        self,
        slots: list[int],
        offsets: list[int],
        numels: list[int],
        total: int,
        stride: int,
        device: torch.device,
    ) -> None:
        """Plan for parameters ``slots[i]`` at element ``offsets[i]`` of a buffer of ``total``.

        ``stride`` 1 reads every element exactly.
        """
        self.stride = max(1, stride)
        self.groups = total // (ROW * self.stride) if self.stride > 1 else 0
        sampled_end = self.groups * self.stride * ROW
        exact_idx: list[torch.Tensor] = []
        exact_seg: list[torch.Tensor] = []
        # Per phase r0: which strided rows q belong to a sampled parameter, its slot, scale.
        rows_q: list[list[torch.Tensor]] = [[] for _ in range(self.stride)]
        rows_slot: list[list[torch.Tensor]] = [[] for _ in range(self.stride)]
        rows_scale: list[list[torch.Tensor]] = [[] for _ in range(self.stride)]

        def exact(start: int, end: int, slot: int) -> None:
            if end > start:
                exact_idx.append(torch.arange(start, end))
                exact_seg.append(torch.full((end - start,), slot, dtype=torch.long))

        for slot, off, n in zip(slots, offsets, numels, strict=True):
            end = off + n
            first = -(-off // ROW)  # first whole row inside the parameter
            last = min(end, sampled_end) // ROW  # one past the last whole row (sampled part)
            phase_rows = [
                range(first + ((r0 - first) % self.stride), last, self.stride)
                for r0 in range(self.stride)
            ]
            counts = [len(rows) for rows in phase_rows]
            if self.stride == 1 or min(counts) < MIN_ROWS:
                exact(off, end, slot)
                continue
            exact(off, first * ROW, slot)
            exact(last * ROW, end, slot)
            whole = last - first
            for r0, phase in enumerate(phase_rows):
                rows = torch.arange(phase.start, phase.stop, phase.step)
                rows_q[r0].append(rows // self.stride)
                rows_slot[r0].append(torch.full((rows.numel(),), slot, dtype=torch.long))
                rows_scale[r0].append(
                    torch.full((rows.numel(),), whole / counts[r0], dtype=torch.float64)
                )

        def cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return (torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)).to(device)

        self.exact_idx = cat(exact_idx, torch.long)
        self.exact_seg = cat(exact_seg, torch.long)
        self.rows_q = [cat(parts, torch.long) for parts in rows_q]
        self.rows_slot = [cat(parts, torch.long) for parts in rows_slot]
        self.rows_scale = [cat(parts, torch.float64) for parts in rows_scale]

    @property
    def sampled(self) -> bool:
        """Whether any parameter is read in sampled rows (rather than fully)."""
        return any(q.numel() for q in self.rows_q)

    def accumulate(self, buffer: torch.Tensor, phase: int, out: torch.Tensor) -> None:
        """Add this bucket's estimated squared norms into ``out`` (float64, per slot)."""
        flat = buffer.reshape(-1)
        if self.exact_idx.numel():
            vals = flat.index_select(0, self.exact_idx).to(torch.float64)
            out.index_add_(0, self.exact_seg, vals * vals)
        r0 = phase % self.stride
        q = self.rows_q[r0]
        if q.numel() == 0:
            return
        view = flat[: self.groups * self.stride * ROW].view(self.groups, self.stride, ROW)
        # Half-precision buffers are reduced in float32; float32/float64 in their own.
        wide = torch.float32 if flat.element_size() < 4 else None
        norms = torch.linalg.vector_norm(view[:, r0, :], dim=1, dtype=wide)
        picked = norms.index_select(0, q).to(torch.float64)
        out.index_add_(0, self.rows_slot[r0], picked * picked * self.rows_scale[r0])
