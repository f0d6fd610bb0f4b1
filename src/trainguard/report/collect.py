"""Read a run's ledger once and sort its events into what the report shows.

A run may have a million ``step`` events; they are read in ledger order, kept as
plain ``(step, value)`` tuples per rank and reduced only when plotted, so memory
stays linear in the points and nothing the page marks is lost before then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

from trainguard.core.findings import Finding
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.ledger.events import LedgerEvent
from trainguard.report.model import (
    EventRow,
    FindingRow,
    ReplicaCheck,
    RunData,
    Series,
    as_int,
    as_number,
)

PROCESS_KINDS: Final = frozenset(
    {
        "process.start",
        "process.exit",
        "process.leftover",
        "supervisor.start",
        "supervisor.exit",
        "supervisor.signal",
        "supervisor.kill",
        "signals.coverage",
    }
)
"""Telemetry kinds listed under "signals and exits"."""

CHECKPOINT_KINDS: Final = frozenset({"checkpoint.save", "checkpoint.load"})

PROGRESS_EVERY: Final = 5000
"""Events between progress updates (a progress call per event would dominate)."""


def _row(event: LedgerEvent) -> EventRow:
    if isinstance(event.payload, dict):
        return event
    return dataclasses.replace(event, payload={})


def well_formed(finding: Finding) -> bool:
    """Fields have the types :class:`Finding` promises (``from_dict`` does not check them;
    a forged event with a list for a path must be shown as malformed, not crash the page)."""
    texts = (finding.path, finding.location, finding.member, finding.global_name)
    numbers = (finding.rank, finding.step, finding.offset)
    return (
        all(t is None or isinstance(t, str) for t in texts)
        and all(n is None or as_int(n) is not None for n in numbers)
        and (finding.time is None or type(finding.time) in (int, float))
        and (finding.actor is None or isinstance(finding.actor, Mapping))
        and isinstance(finding.evidence, Mapping)
    )


class _Collector:
    """Sorts events into a :class:`RunData`; one instance per report."""

    def __init__(self, data: RunData) -> None:
        self.data = data
        self.points: dict[str, dict[tuple[str, int | None], list[tuple[float, float]]]] = {
            name: {} for name in ("seconds", "loss", "grad_norm", "window")
        }
        self.step_targets = [(name, self.points[name]) for name in ("seconds", "loss", "grad_norm")]

    def label(self, run: str, rank: int | None) -> str:
        """Series label: ``rank 3``, or ``abcd1234 rank 3`` when the ledger holds several runs."""
        who = "rank ?" if rank is None else f"rank {rank}"
        return f"{run[:8] or '-'} {who}" if len(self.data.runs) > 1 else who

    def series(self, name: str) -> dict[str, Series]:
        """The points of one metric as labelled series, ordered by run and rank."""
        found = self.points[name]
        runs = {run: i for i, run in enumerate(self.data.runs)}
        keys = sorted(found, key=lambda k: (runs.get(k[0], 0), -1 if k[1] is None else k[1]))
        return {self.label(*k): Series(self.label(*k), found[k]) for k in keys}

    def add(self, event: LedgerEvent) -> None:
        data = self.data
        data.events += 1
        data.kinds[event.kind] = data.kinds.get(event.kind, 0) + 1
        if event.rank is not None:
            data.ranks.add(event.rank)
        if event.run not in data.runs:
            data.runs.append(event.run)
        if data.first_time is None or event.time < data.first_time:
            data.first_time = event.time
        if data.last_time is None or event.time > data.last_time:
            data.last_time = event.time
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)
        elif event.kind in PROCESS_KINDS:
            data.process.append(_row(event))
        elif event.kind in CHECKPOINT_KINDS:
            data.checkpoints.append(_row(event))

    def finding(self, event: LedgerEvent) -> None:
        try:
            finding = Finding.from_dict(event.payload)
        except (KeyError, ValueError, TypeError, AttributeError):
            finding = None
        if finding is None or not well_formed(finding):
            self.data.malformed.append(_row(event))
            return
        self.data.findings.append(FindingRow(finding, event.seq, event.run, event.rank, event.time))

    def step(self, event: LedgerEvent) -> None:
        # The hot path (one call per rank per step): plain type checks, no helpers.
        payload = event.payload
        step = payload.get("step")
        if type(step) is not int:
            return
        key = (event.run, event.rank)
        x = float(step)
        for name, series in self.step_targets:
            value = payload.get(name)
            if value is None:
                continue
            if type(value) is not float:
                value = as_number(value)
                if value is None:
                    continue
            points = series.get(key)
            if points is None:
                points = series[key] = []
            points.append((x, value))

    def timing_window(self, event: LedgerEvent) -> None:
        step = as_int(event.payload.get("step"))
        ms = as_number(event.payload.get("wall_ms_per_step"))
        if step is None or ms is None:
            return
        key = (event.run, event.rank)
        self.points["window"].setdefault(key, []).append((float(step), ms / 1000.0))

    def replica_check(self, event: LedgerEvent) -> None:
        payload = event.payload
        step = as_int(payload.get("step"))
        agree = payload.get("agree")
        if step is None or not isinstance(agree, bool):
            return
        outliers = payload.get("outliers")
        ranks: tuple[int, ...] = ()
        if isinstance(outliers, list):
            ranks = tuple(r for r in outliers if as_int(r) is not None)
        self.data.replica.append(
            ReplicaCheck(step, agree, as_int(payload.get("world_size")), ranks)
        )

    def env_summary(self, event: LedgerEvent) -> None:
        if self.data.env is None:
            self.data.env = dict(event.payload)

    def run_start(self, event: LedgerEvent) -> None:
        self.data.starts.append(_row(event))

    def run_close(self, event: LedgerEvent) -> None:
        self.data.closes.append(_row(event))

    def finish(self) -> RunData:
        data = self.data
        data.loss = self.series("loss")
        data.grad_norm = self.series("grad_norm")
        if self.points["seconds"]:
            data.step_seconds = self.series("seconds")
            data.step_source = "step"
        elif self.points["window"]:
            data.step_seconds = self.series("window")
            data.step_source = "timing.window"
        return data


_HANDLERS: Final[dict[str, Any]] = {
    "finding": _Collector.finding,
    "step": _Collector.step,
    "timing.window": _Collector.timing_window,
    "replica.check": _Collector.replica_check,
    "env.summary": _Collector.env_summary,
    "run.start": _Collector.run_start,
    "run.close": _Collector.run_close,
}


def collect(
    events: Iterable[LedgerEvent],
    *,
    ledger_url: str,
    total: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> RunData:
    """Sort ``events`` (one run's, oldest first) into a :class:`RunData`.

    Args:
        events: ledger events, e.g. ``ledger.events(run=RUN_ID)``.
        ledger_url: shown on the page.
        total: events expected, for the progress bar.
        progress: told about every :data:`PROGRESS_EVERY` events.
    """
    collector = _Collector(RunData(ledger_url=ledger_url))
    progress.start("reading ledger", None if total is None else float(total))
    pending = 0
    try:
        for event in events:
            collector.add(event)
            pending += 1
            if pending >= PROGRESS_EVERY:
                progress.advance(pending)
                pending = 0
        progress.advance(pending)
    finally:
        progress.finish()
    return collector.finish()
