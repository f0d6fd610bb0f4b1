"""Read back what this run's ledger recorded (data order, checkpoints) for the checks.

The guard writes through :class:`trainguard.guard.sink.LedgerSink`; checks that
compare with the past (data order on resume, checkpoint lineage) read the same
append-only ledger, which the job cannot rewrite unnoticed, rather than a file in
the run directory. With an in-memory sink (tests, notebooks) there is no ledger and
the checks fall back to their mirror files, which they say in their evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from trainguard.guard.base import GuardContext

_logger = logging.getLogger(__name__)


def ledger_of(ctx: GuardContext) -> Any:
    """The ledger object behind ``ctx.sink`` (None with a sink that has no ledger)."""
    sink: Any = ctx.sink
    for _ in range(4):
        if sink is None:
            return None
        ledger = getattr(sink, "ledger", None) or getattr(sink, "_ledger", None)
        if ledger is not None and hasattr(ledger, "events"):
            return ledger
        sink = getattr(sink, "inner", None)
    return None


def event_fields(event: Any) -> dict[str, Any]:
    """``{kind, payload, run, rank, seq, time}`` of a ledger event (object or mapping)."""
    if isinstance(event, Mapping):
        get = event.get
    else:

        def get(name: str, default: Any = None) -> Any:
            return getattr(event, name, default)

    payload = get("payload", None)
    return {
        "kind": get("kind", None),
        "payload": dict(payload) if isinstance(payload, Mapping) else {},
        "run": get("run", None),
        "rank": get("rank", None),
        "seq": get("seq", None),
        "time": get("time", None),
    }


def recorded(ctx: GuardContext, kind: str) -> list[dict[str, Any]] | None:
    """Every event of ``kind`` in this run's ledger (all runs), oldest first.

    Returns None when no ledger is reachable (the caller uses its mirror file).
    """
    ledger = ledger_of(ctx)
    if ledger is None:
        return None
    flush = getattr(ctx.sink, "flush", None)
    if callable(flush):
        flush()
    try:
        return [event_fields(e) for e in ledger.events(kind=kind)]
    except Exception:  # an unreadable ledger is reported by the caller as unverifiable
        _logger.exception("cannot read %s events from the ledger", kind)
        return None
