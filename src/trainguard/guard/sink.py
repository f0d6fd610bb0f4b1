"""Where the guard's events go: this rank's writer to the run's ledger.

Every rank writes its own events (a security finding is never rank-0-only: the rank
that saw it may be the one that survives). Findings are written at once and are
durable when :meth:`LedgerSink.report` returns, because the process may be killed the
next instant; telemetry (``step``, ``timing.window``...) is batched and written with
``append_many`` every ``flush_every`` events, on every finding and at close.

The sink is thread-safe: the sampler and the patch re-check run on background
threads and report from there.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import GuardError, LedgerError
from trainguard.core.findings import Finding

if TYPE_CHECKING:  # pragma: no cover - typing only; the ledger is imported lazily
    from trainguard.ledger.api import Ledger

_logger = logging.getLogger(__name__)


def default_ledger_url(run_dir: Path) -> str:
    """The run's embedded ledger: ``sqlite:///<run_dir>/ledger.sqlite``."""
    return f"sqlite:///{(run_dir / 'ledger.sqlite').resolve()}"


def ledger_opener() -> Any:
    """``trainguard.ledger.open_ledger`` when the ledger package provides it, else None."""
    try:
        module = importlib.import_module("trainguard.ledger")
    except ImportError:
        return None
    return getattr(module, "open_ledger", None)


class MemorySink:
    """An in-memory sink: for embedding, unit tests and single-process notebooks."""

    def __init__(self) -> None:
        """Create an empty sink."""
        self.findings: list[Finding] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def report(self, finding: Finding) -> None:
        """Keep the finding."""
        with self._lock:
            self.findings.append(finding)

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Keep the telemetry event."""
        with self._lock:
            self.events.append((kind, dict(payload)))

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


class LedgerSink:
    """This rank's writer to the run's append-only ledger."""

    def __init__(
        self,
        url: str,
        *,
        run_id: str,
        rank: int,
        flush_every: int = 50,
    ) -> None:
        """Open the ledger at ``url`` (raises GuardError when it cannot be used).

        Args:
            url: ledger URL (``sqlite:///path`` or ``postgresql://...``).
            run_id: identifier shared by every rank of the run.
            rank: this process's rank, stored on every event.
            flush_every: telemetry events buffered before a batch write.
        """
        open_ledger = ledger_opener()
        if open_ledger is None:
            raise GuardError(
                "trainguard.ledger is not available in this installation; reinstall trainguard "
                "or pass sink= to trainguard.watch"
            )
        try:
            self._ledger = open_ledger(url)
        except LedgerError:
            raise
        except Exception as exc:  # foreign errors (sqlite3, psycopg) -> one-line message
            raise GuardError(f"cannot open the guard ledger {url}: {exc}") from exc
        self.url = url
        self.run_id = run_id
        self.rank = rank
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.flush_every = flush_every
        self._pending: list[tuple[str, dict[str, Any], float]] = []
        self._lock = threading.RLock()
        self._closed = False

    @property
    def ledger(self) -> Ledger:
        """The open ledger this sink writes to.

        Read-only (no setter): callers read events back while the run goes on
        (``sink.ledger.events(...)``); writes go through the sink, which adds the run,
        rank, host and pid to every event.
        """
        ledger: Ledger = self._ledger
        return ledger

    def _meta(self, t: float) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "rank": self.rank,
            "host": self.host,
            "pid": self.pid,
            "time": t,
        }

    def report(self, finding: Finding) -> None:
        """Write the finding now (after any pending telemetry, to keep order)."""
        with self._lock:
            self._flush_locked()
            try:
                self._ledger.append(
                    "finding", finding.to_dict(), **self._meta(finding.time or time.time())
                )
            except Exception:  # a lost finding must at least reach the log
                _logger.exception("rank %d: could not write finding %s", self.rank, finding.rule)
                raise

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Buffer a telemetry event; written in batches."""
        with self._lock:
            if self._closed:
                return
            self._pending.append((kind, dict(payload), time.time()))
            if len(self._pending) >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        """Write buffered telemetry."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        events = [{"kind": kind, "payload": payload, **self._meta(t)} for kind, payload, t in batch]
        try:
            self._ledger.append_many(events)
        except Exception:  # telemetry loss is logged, never fatal for training
            _logger.exception(
                "rank %d: could not write %d telemetry events", self.rank, len(events)
            )

    def close(self) -> None:
        """Flush and close the ledger."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._closed = True
            closer = getattr(self._ledger, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # closing must never mask the training outcome
                    _logger.exception("rank %d: closing the ledger failed", self.rank)


class TeeSink:
    """Sends every event to the ledger sink and keeps findings for ``guard.findings``."""

    def __init__(self, inner: Any) -> None:
        """Wrap ``inner`` (an EventSink)."""
        self.inner = inner
        self.findings: list[Finding] = []
        self._lock = threading.Lock()

    def report(self, finding: Finding) -> None:
        """Keep and forward the finding; a write failure is logged, training continues."""
        with self._lock:
            self.findings.append(finding)
        try:
            self.inner.report(finding)
        except Exception:  # logged by the inner sink; the finding is kept in memory
            _logger.exception("finding %s kept in memory only", finding.rule)

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Forward telemetry."""
        try:
            self.inner.record(kind, payload)
        except Exception:  # telemetry is best effort
            _logger.debug("telemetry %s dropped", kind, exc_info=True)

    def flush(self) -> None:
        """Flush the inner sink when it can."""
        flush = getattr(self.inner, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        """Close the inner sink when it can."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
