"""What the report knows about a run, gathered from its ledger in one pass.

Everything here came from the ledger, which the job's code could write to: every
string is untrusted and is escaped when rendered (:mod:`trainguard.report.page`),
and every number is checked before it is plotted (:func:`as_number`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.findings import Finding
from trainguard.ledger.events import LedgerEvent


def as_number(value: Any) -> float | None:
    """A plottable float, or None for anything else (a forged payload is not plotted).

    The ledger stores non-finite floats as the strings ``NaN``/``Infinity``; those
    come back as ``math.nan``/``math.inf`` so that the plots mark them.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return None


def as_int(value: Any) -> int | None:
    """An int field of a payload (bools and floats are not steps or ranks)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


@dataclass(slots=True)
class Series:
    """One line of a plot: ``(step, value)`` points of one rank, in ledger order."""

    label: str
    """Legend text (``rank 3``)."""
    points: list[tuple[float, float]] = field(default_factory=list)

    def finite(self) -> list[tuple[float, float]]:
        """The points that can be drawn as a line."""
        return [(x, y) for x, y in self.points if math.isfinite(x) and math.isfinite(y)]


@dataclass(frozen=True, slots=True)
class FindingRow:
    """A finding with where the ledger holds it."""

    finding: Finding
    seq: int
    run: str
    writer_rank: int | None
    time: float


EventRow = LedgerEvent
"""A non-finding event shown in a table (signals, exits, checkpoints): the ledger's own
event, its payload guaranteed to be a dict (see ``collect``)."""


@dataclass(frozen=True, slots=True)
class ReplicaCheck:
    """One cross-rank agreement check (``replica.check``)."""

    step: int
    agree: bool
    world_size: int | None
    outliers: tuple[int, ...]


@dataclass(slots=True)
class RunData:
    """The run as the report shows it."""

    ledger_url: str
    runs: list[str] = field(default_factory=list)
    """Run ids seen, in order of first appearance."""
    events: int = 0
    """Events read (after the ``--run`` filter)."""
    kinds: dict[str, int] = field(default_factory=dict)
    """Events per kind."""
    ranks: set[int] = field(default_factory=set)
    """Ranks that wrote events."""
    first_time: float | None = None
    last_time: float | None = None
    findings: list[FindingRow] = field(default_factory=list)
    malformed: list[EventRow] = field(default_factory=list)
    """Finding events whose payload is not a finding (shown, never dropped)."""
    step_seconds: dict[str, Series] = field(default_factory=dict)
    step_source: str = ""
    """``step`` (per-step telemetry) or ``timing.window`` (window averages) or ""."""
    loss: dict[str, Series] = field(default_factory=dict)
    grad_norm: dict[str, Series] = field(default_factory=dict)
    replica: list[ReplicaCheck] = field(default_factory=list)
    process: list[EventRow] = field(default_factory=list)
    """Signals, exits, kills, starts of processes and the supervisor."""
    checkpoints: list[EventRow] = field(default_factory=list)
    env: dict[str, Any] | None = None
    """The ``env.summary`` payload (first one)."""
    starts: list[EventRow] = field(default_factory=list)
    """``run.start`` events (world size, monitors, torch version)."""
    closes: list[EventRow] = field(default_factory=list)
