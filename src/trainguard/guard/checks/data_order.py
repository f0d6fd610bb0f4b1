"""``data.order_changed``: the data a resumed run sees differs from what was recorded.

``trainguard.watch_dataloader(loader)`` returns a wrapper that fingerprints every
batch it yields, keyed by ``(epoch, batch index)``, on each rank:

- ``fingerprint="content"`` (default): SHA-256 over the batch's structure and, for
  every tensor or array in it, dtype, shape and the first ``data_order.bytes``
  (default 4096) bytes of its data. Catches a changed sampler, shuffle seed, dataset
  or transform. A loader with *random* augmentation that is not reseeded on resume
  changes content legitimately: use ``fingerprint="indices"``.
- ``fingerprint="indices"``: SHA-256 of the sample indices the loader's batch sampler
  produced for the batch (the sampler runs in the main process, so this is exact
  even with worker processes). Catches a changed sampler or shuffle seed only.

The epoch is the sampler's ``epoch`` (``DistributedSampler.set_epoch``) when it has
one, else a counter of ``iter(loader)`` calls starting at ``start_epoch``.

Fingerprints go to the ledger (``data.order`` events, 32 batches per event) and to a
mirror file ``run_dir/data_order/rank-N.jsonl``. When a run resumes in the same run
directory, the recorded order is read back (from the ledger when there is one, which
the job cannot rewrite unnoticed) and every batch is compared with it: the first
differing batch of each epoch is a ``data.order_changed`` finding naming the epoch,
the batch index, the optimizer step and both digests. Batches never recorded are
recorded; the same order passes silently.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trainguard.core.errors import GuardError
from trainguard.core.hashing import sha256_bytes
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.ledger_view import recorded
from trainguard.guard.findingutil import make_finding

_logger = logging.getLogger(__name__)

CHUNK = 32
"""Fingerprints per ``data.order`` ledger event."""
MODES = ("content", "indices")


def fingerprint_batch(batch: Any, limit: int = 4096) -> str:
    """Digest of a batch's structure and the leading bytes of each tensor/array."""
    parts: list[bytes] = []
    _walk(batch, parts, limit, 0)
    return sha256_bytes(b"\x00".join(parts))[:32]


def _walk(obj: Any, parts: list[bytes], limit: int, depth: int) -> None:
    if depth > 8:
        parts.append(b"<deep>")
        return
    kind = type(obj).__name__
    if hasattr(obj, "detach") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        t = obj.detach()
        parts.append(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.device.type == "cpu" and t.numel() > 0:
            flat = t.reshape(-1)
            n = max(1, limit // max(t.element_size(), 1))
            head = flat[:n].contiguous()
            try:
                parts.append(head.numpy().tobytes())
            except (TypeError, RuntimeError):  # bfloat16 and friends: view as bytes
                import torch

                parts.append(head.view(torch.uint8).numpy().tobytes())
        return
    if hasattr(obj, "dtype") and hasattr(obj, "shape") and hasattr(obj, "tobytes"):
        parts.append(f"A{obj.dtype}{tuple(obj.shape)}".encode())
        parts.append(obj.reshape(-1)[: max(1, limit // max(obj.itemsize, 1))].tobytes())
        return
    if isinstance(obj, Mapping):
        parts.append(f"M{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            parts.append(repr(key).encode())
            _walk(obj[key], parts, limit, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        parts.append(f"L{kind}{len(obj)}".encode())
        for item in obj:
            _walk(item, parts, limit, depth + 1)
        return
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        parts.append(repr(obj)[:limit].encode())
        return
    parts.append(f"O{kind}".encode())


class _BatchSamplerTap:
    """Iterates the loader's batch sampler and keeps each batch's indices in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.queue: collections.deque[list[int]] = collections.deque()
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[Any]:
        for indices in self.inner:
            with self.lock:
                self.queue.append([int(i) for i in indices])
            yield indices

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pop(self) -> list[int] | None:
        with self.lock:
            return self.queue.popleft() if self.queue else None

    def clear(self) -> None:
        with self.lock:
            self.queue.clear()


class WatchedLoader:
    """The wrapper returned by ``watch_dataloader``; iterates like the loader it wraps."""

    def __init__(
        self,
        loader: Iterable[Any],
        monitor: DataOrderMonitor,
        ctx: GuardContext,
        *,
        fingerprint: str,
        start_epoch: int,
        start_batch: int,
    ) -> None:
        """Wrap ``loader`` (see :meth:`DataOrderMonitor.watch_dataloader`)."""
        self.loader = loader
        self.monitor = monitor
        self.ctx = ctx
        self.mode = fingerprint
        self.epoch = start_epoch - 1
        self.start_batch = start_batch
        self.tap: _BatchSamplerTap | None = None
        if fingerprint == "indices":
            self.tap = _install_tap(loader)

    def __len__(self) -> int:
        """Length of the wrapped loader."""
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        """Everything else comes from the wrapped loader (dataset, sampler...)."""
        return getattr(self.loader, name)

    def _current_epoch(self) -> int:
        sampler = getattr(self.loader, "sampler", None)
        epoch = getattr(sampler, "epoch", None)
        if isinstance(epoch, int):
            self.epoch = epoch
        else:
            self.epoch += 1
        return self.epoch

    def __iter__(self) -> Iterator[Any]:
        """Yield the loader's batches, fingerprinting each one."""
        epoch = self._current_epoch()
        if self.tap is not None:
            self.tap.clear()
        index = self.start_batch
        for batch in self.loader:
            if self.tap is not None:
                indices = self.tap.pop()
                digest = sha256_bytes(json.dumps(indices).encode())[:32]
            else:
                digest = fingerprint_batch(batch, self.monitor.limit)
            self.monitor.observe_batch(self.ctx, epoch, index, digest, self.mode)
            index += 1
            yield batch
        self.monitor.flush(self.ctx)


def _install_tap(loader: Any) -> _BatchSamplerTap:
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is None:
        raise GuardError(
            "watch_dataloader(fingerprint='indices'): the loader has no batch sampler "
            "(IterableDataset or batch_size=None); use fingerprint='content'"
        )
    tap = _BatchSamplerTap(batch_sampler)
    # DataLoader refuses attribute changes after __init__; the tap is transparent.
    object.__setattr__(loader, "batch_sampler", tap)
    return tap


class DataOrderMonitor:
    """Records and compares per-batch fingerprints (see the module docstring)."""

    name = "data_order"

    def __init__(self) -> None:
        """Create an idle monitor."""
        self.limit = 4096
        self.recorded: dict[tuple[int, int], tuple[str, str | None]] | None = None
        self.source = "none"
        self.pending: list[tuple[int, int, str, str]] = []
        self.reported_epochs: set[int] = set()
        self.batches = 0
        self.compared = 0
        self.mismatches = 0
        self._lock = threading.Lock()
        self._mirror: Path | None = None

    def start(self, ctx: GuardContext) -> None:
        """Read the settings; the recorded order is loaded on first use."""
        self.limit = int(ctx.settings.get("data_order.bytes", 4096))
        self._mirror = ctx.run_dir / "data_order" / f"rank-{ctx.rank}.jsonl"

    def watch_dataloader(
        self,
        ctx: GuardContext,
        loader: Iterable[Any],
        *,
        fingerprint: str = "content",
        start_epoch: int = 0,
        start_batch: int = 0,
    ) -> WatchedLoader:
        """Wrap ``loader``; see the module docstring.

        Args:
            ctx: the guard context.
            loader: a DataLoader or any re-iterable of batches.
            fingerprint: ``content`` (default) or ``indices``.
            start_epoch: epoch number of the first ``iter()`` (when the sampler has none).
            start_batch: index of the first batch the loader yields in each epoch.

        Raises:
            GuardError: unknown fingerprint mode, or ``indices`` without a batch sampler.
        """
        if fingerprint not in MODES:
            raise GuardError(f"watch_dataloader: fingerprint must be one of {', '.join(MODES)}")
        self._load(ctx)
        return WatchedLoader(
            loader,
            self,
            ctx,
            fingerprint=fingerprint,
            start_epoch=start_epoch,
            start_batch=start_batch,
        )

    def _load(self, ctx: GuardContext) -> None:
        if self.recorded is not None:
            return
        table: dict[tuple[int, int], tuple[str, str | None]] = {}
        events = recorded(ctx, "data.order")
        if events is not None:
            self.source = "ledger"
            for event in events:
                payload = event["payload"]
                if payload.get("rank", event.get("rank")) != ctx.rank:
                    continue
                _add(table, payload, event.get("run"))
        elif self._mirror is not None and self._mirror.exists():
            self.source = "mirror file"
            for line in self._mirror.read_text(encoding="utf-8").splitlines():
                try:
                    payload = json.loads(line)
                except ValueError:
                    continue
                _add(table, payload, payload.get("run"))
        self.recorded = table

    def observe_batch(
        self, ctx: GuardContext, epoch: int, index: int, digest: str, mode: str
    ) -> None:
        """Compare one batch with the recorded order, or record it."""
        self.batches += 1
        table = self.recorded if self.recorded is not None else {}
        seen = table.get((epoch, index))
        if seen is None:
            with self._lock:
                self.pending.append((epoch, index, digest, mode))
                table[(epoch, index)] = (digest, ctx.run_id)
                full = len(self.pending) >= CHUNK
            if full:
                self.flush(ctx)
            return
        self.compared += 1
        if seen[0] == digest:
            return
        self.mismatches += 1
        if epoch in self.reported_epochs:
            return
        self.reported_epochs.add(epoch)
        ctx.report(
            make_finding(
                ctx,
                "data.order_changed",
                f"Rank {ctx.rank}: epoch {epoch}, batch {index} (step {ctx.step}) differs "
                f"from the order recorded by run {seen[1]} ({mode} fingerprint).",
                evidence={
                    "epoch": epoch,
                    "batch": index,
                    "recorded": seen[0],
                    "observed": digest,
                    "recorded_run": seen[1],
                    "fingerprint": mode,
                    "source": self.source,
                },
            )
        )

    def flush(self, ctx: GuardContext) -> None:
        """Write pending fingerprints (ledger event + mirror line)."""
        with self._lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        epochs: dict[int, list[tuple[int, str, str]]] = {}
        for epoch, index, digest, mode in batch:
            epochs.setdefault(epoch, []).append((index, digest, mode))
        for epoch, rows in epochs.items():
            payload = {
                "rank": ctx.rank,
                "run": ctx.run_id,
                "epoch": epoch,
                "batches": [[i, d] for i, d, _ in rows],
                "fingerprint": rows[0][2],
            }
            ctx.sink.record("data.order", payload)
            if self._mirror is not None:
                try:
                    self._mirror.parent.mkdir(parents=True, exist_ok=True)
                    with open(self._mirror, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(payload) + "\n")
                except OSError:
                    _logger.exception("cannot write %s", self._mirror)

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing per step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Nothing per step: batches are observed as the loader yields them."""

    def close(self, ctx: GuardContext) -> None:
        """Write the fingerprints not yet written."""
        self.flush(ctx)
        ctx.sink.record(
            "data.order.summary",
            {
                "batches": self.batches,
                "compared": self.compared,
                "mismatches": self.mismatches,
                "source": self.source,
                "pid": os.getpid(),
            },
        )


def _add(
    table: dict[tuple[int, int], tuple[str, str | None]],
    payload: Mapping[str, Any],
    run: Any,
) -> None:
    epoch = payload.get("epoch")
    rows = payload.get("batches")
    if not isinstance(epoch, int) or not isinstance(rows, list):
        return
    for row in rows:
        if isinstance(row, list) and len(row) == 2:
            table.setdefault((epoch, int(row[0])), (str(row[1]), str(run) if run else None))
