"""The contract between the Guard and its monitors.

Every check of the guard (timing, gradients, replicas, seeds, data order, audit
hooks, signals, lineage, ...) is a :class:`Monitor`. The :class:`Guard` (api.py)
owns one :class:`GuardContext` per process, calls the monitors at fixed points of
the training loop, and every finding goes through ``ctx.report`` to this rank's
ledger: a security finding is never rank-0-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainguard.core.findings import Finding


class EventSink(Protocol):
    """Where the guard's events go (the run's ledger)."""

    def report(self, finding: Finding) -> None:
        """Record a finding (ledger event kind ``finding``, payload ``Finding.to_dict()``)."""

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Record telemetry (``step``, ``checkpoint.save``, ``run.start``, ...)."""


@dataclass
class GuardContext:
    """What a monitor may know about the process it runs in."""

    run_id: str
    """Identifier shared by every rank of one run."""
    run_dir: Path
    """Directory holding the run's ledger and state."""
    rank: int
    """This process's rank (0 in a single process)."""
    world_size: int
    """Number of ranks (1 in a single process)."""
    sink: EventSink
    """This rank's event sink."""
    step: int = 0
    """Optimizer steps completed so far in this process."""
    model: Any = None
    """The watched ``torch.nn.Module`` (may be DDP-wrapped)."""
    optimizer: Any = None
    """The watched optimizer."""
    process_group: Any = None
    """The job's own process group for collectives, or None when not distributed."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Tunables (thresholds, intervals), documented in docs/guard.md."""
    observed: dict[str, Any] = field(default_factory=dict)
    """Latest values passed to ``guard.observe()`` (e.g. ``loss``); may be device tensors."""

    def report(self, finding: Finding) -> None:
        """Send a finding to this rank's sink."""
        self.sink.report(finding)


class Monitor(Protocol):
    """One check of the guard. Calls happen on the training thread unless stated."""

    name: str
    """Stable name, used in settings and in guard.disabled evidence."""

    def start(self, ctx: GuardContext) -> None:
        """Install hooks; called once when the guard attaches."""

    def before_step(self, ctx: GuardContext) -> None:
        """Called just before ``optimizer.step()`` runs (gradients are final here)."""

    def after_step(self, ctx: GuardContext) -> None:
        """Called just after ``optimizer.step()`` returned; ``ctx.step`` is already advanced."""

    def close(self, ctx: GuardContext) -> None:
        """Remove hooks and flush; called once, also on interpreter exit."""


class ExchangingMonitor(Monitor, Protocol):
    """A monitor that takes part in the guard's one cross-rank exchange.

    Every ``settings["exchange_every"]`` steps the Guard concatenates the payloads
    of all exchanging monitors into one fixed-size float64 tensor and gathers it
    from every rank with a single tensor collective on the job's process group
    (never a pickle-based object collective). One collective per exchange keeps
    the order identical on every rank, so a monitor can never deadlock the job by
    exchanging on its own schedule. Optional: the Guard checks with ``getattr``.
    """

    def exchange_size(self, ctx: GuardContext) -> int:
        """Number of float64 values this monitor sends; fixed after ``start``."""

    def exchange_payload(self, ctx: GuardContext) -> Any:
        """This rank's values: a 1-D tensor (any device) or a sequence of floats."""

    def on_exchange(self, ctx: GuardContext, gathered: Any) -> None:
        """Every rank's values: a CPU float64 tensor of shape ``[world_size, size]``."""


class ObservingMonitor(Monitor, Protocol):
    """A monitor that wants the values passed to ``guard.observe()`` (optional)."""

    def on_observe(self, ctx: GuardContext, values: Mapping[str, Any]) -> None:
        """Called on the training thread each time ``guard.observe(**values)`` runs."""
