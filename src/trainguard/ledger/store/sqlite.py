"""SQLite back end: the embedded default, one file per run.

Safety with several writer processes on one host (the ranks of a job): WAL mode,
``BEGIN IMMEDIATE`` (the write lock is taken before the sequence number is read, so
two writers never pick the same one), a long busy timeout, and
``synchronous=FULL`` so that an entry is on disk when ``append`` returns - the
process may be SIGKILLed the next instant. Triggers refuse UPDATE and DELETE; they
stop accidents and casual edits, not someone who can rewrite the file (that is what
the signed heads are for).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from trainguard.core.errors import LedgerError
from trainguard.ledger.events import PreparedEvent
from trainguard.ledger.merkle import Frontier
from trainguard.ledger.store.common import (
    PAGE,
    build_rows,
    crossed,
    head_at,
    paged_rows,
    periodic_head,
    rows_query,
)
from trainguard.ledger.store.interface import SCHEMA_VERSION, HeadSigner, Row
from trainguard.ledger.tree_head import SignedTreeHead

_logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 120_000
SCAN_BATCH: Final = 20_000

_INHERITED: list[sqlite3.Connection] = []
"""Connections inherited across fork, kept alive (unused) until the child exits."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_events (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    run TEXT NOT NULL,
    rank INTEGER,
    host TEXT,
    pid INTEGER,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    leaf BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_events_kind ON ledger_events (kind, seq);
CREATE TABLE IF NOT EXISTS ledger_heads (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    time REAL NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    frontier BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_heads_size ON ledger_heads (size);
CREATE TRIGGER IF NOT EXISTS ledger_events_no_update BEFORE UPDATE ON ledger_events
BEGIN SELECT RAISE(ABORT, 'trainguard ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_events_no_delete BEFORE DELETE ON ledger_events
BEGIN SELECT RAISE(ABORT, 'trainguard ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_heads_no_update BEFORE UPDATE ON ledger_heads
BEGIN SELECT RAISE(ABORT, 'trainguard ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_heads_no_delete BEFORE DELETE ON ledger_heads
BEGIN SELECT RAISE(ABORT, 'trainguard ledger is append-only'); END;
INSERT OR IGNORE INTO ledger_meta (key, value) VALUES ('schema_version', '1');
"""


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///abs/path`` URL or a bare path.

    ``sqlite:///abs`` and ``sqlite:////abs`` both name ``/abs`` (the second is what
    ``f"sqlite:///{absolute_path}"`` produces).
    """
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if not rest.startswith("//"):
            raise LedgerError(f"{url}: a SQLite ledger URL is sqlite:///ABSOLUTE/PATH.db")
        rest = rest[2:]
        if not rest.startswith("/"):
            raise LedgerError(
                f"{url}: SQLite URLs take no host; use sqlite:///ABSOLUTE/PATH.db or a plain path"
            )
        return Path("/" + rest.lstrip("/"))
    return Path(url)


class SqliteStore:
    """A ledger in one SQLite file (thread-safe; reopens itself after ``fork``)."""

    def __init__(self, url: str, *, create: bool = True, readonly: bool = False) -> None:
        """Open (and with ``create``, initialise) the file behind ``url``.

        Raises:
            LedgerError: the path is unusable, or (without ``create``) not a ledger.
        """
        self.url = url
        self.path = sqlite_path(url)
        self.readonly = readonly
        self._lock = threading.RLock()
        if not create or readonly:
            if not self.path.is_file():
                raise LedgerError(f"{self.path}: no such ledger file; check the path or URL")
        else:
            parent = self.path.parent
            if not parent.is_dir():
                raise LedgerError(
                    f"{self.path}: directory {parent} does not exist; create it first"
                )
        self._pid = os.getpid()
        self._conn = self._connect()
        if create and not readonly:
            self._init_schema()
        else:
            self._check_schema()

    # -- connection management -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=120
                )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self.readonly:
                mode = _set_wal(conn)
                if str(mode).lower() != "wal":
                    _logger.warning("%s: journal mode is %s, not WAL", self.path, mode)
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open SQLite ledger: {exc}") from exc
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own)."""
        if os.getpid() != self._pid:
            # A connection must never cross fork(); the parent keeps using its own.
            # The inherited one is kept, never closed: closing it here could run
            # SQLite's last-connection cleanup on a file the parent still has open.
            _INHERITED.append(self._conn)
            self._pid = os.getpid()
            self._conn = self._connect()
        return self._conn

    def _init_schema(self) -> None:
        try:
            with self._lock:
                conn = self.conn
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split(_SCHEMA):
                    conn.execute(statement)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise LedgerError(f"{self.path}: cannot initialise the ledger: {exc}") from exc
        self._check_schema()

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute(
                "SELECT value FROM ledger_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a trainguard ledger ({exc})") from exc
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise LedgerError(
                f"{self.path}: ledger schema version {row[0] if row else None!r} is not "
                f"{SCHEMA_VERSION}; upgrade trainguard"
            )

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            _logger.debug("rollback failed", exc_info=True)

    def _error(self, action: str, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(f"{self.path}: cannot {action}: {exc}")

    # -- writes ---------------------------------------------------------------------------

    def _checkpoint(self, size: int) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            "SELECT size, frontier FROM ledger_heads WHERE size <= ? "
            "ORDER BY size DESC, id DESC LIMIT 1",
            (size,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _leaves_between(self, after: int, upto: int) -> list[bytes]:
        cur = self.conn.execute(
            "SELECT leaf FROM ledger_events WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, upto),
        )
        return [bytes(r[0]) for r in cur]

    def _insert_head(self, head: SignedTreeHead, frontier: Frontier) -> None:
        self.conn.execute(
            "INSERT INTO ledger_heads (size, root, time, key_id, signature, frontier) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                head.size,
                head.root,
                head.time,
                head.key_id,
                head.signature_b64,
                frontier.to_bytes(),
            ),
        )

    def append(
        self, events: Sequence[PreparedEvent], signer: HeadSigner | None, head_interval: int
    ) -> list[int]:
        """Insert ``events`` in one ``BEGIN IMMEDIATE`` transaction (see the Protocol)."""
        if not events:
            return []
        if self.readonly:
            raise LedgerError(f"{self.path}: ledger was opened read-only")
        with self._lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                last = int(
                    conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()[0]
                )
                rows = build_rows(last + 1, events)
                conn.executemany(
                    "INSERT INTO ledger_events (seq, time, run, rank, host, pid, kind, payload, "
                    "leaf) VALUES (?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                size = last + len(rows)
                if signer is not None and crossed(last, size, head_interval):
                    signed = periodic_head(
                        size,
                        self._checkpoint(size),
                        lambda after: self._leaves_between(after, size),
                        signer,
                    )
                    if signed is not None:
                        self._insert_head(*signed)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error("append to the ledger", exc) from exc
            except BaseException:
                self._rollback()
                raise
        return list(range(last + 1, size + 1))

    def sign_head(self, signer: HeadSigner) -> SignedTreeHead:
        """Sign the current size in a write transaction and store the head."""
        if self.readonly:
            raise LedgerError(f"{self.path}: ledger was opened read-only")
        with self._lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                size = int(
                    conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()[0]
                )
                head, frontier = head_at(
                    size,
                    self._checkpoint(size),
                    lambda after: self._leaves_between(after, size),
                    signer,
                )
                self._insert_head(head, frontier)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error("sign a tree head", exc) from exc
            except BaseException:
                self._rollback()
                raise
        return head

    # -- reads -----------------------------------------------------------------------------

    def size(self) -> int:
        """Highest sequence number (0 when empty)."""
        with self._lock:
            try:
                row = self.conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM ledger_events"
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._error("read the ledger size", exc) from exc
        return int(row[0])

    def rows(
        self,
        *,
        kind: str | None = None,
        run: str | None = None,
        since: int = 0,
        until: int | None = None,
    ) -> Iterator[Row]:
        """Rows in pages of :data:`PAGE`, so a reader never holds a long transaction."""
        sql, params = rows_query("?", kind=kind, run=run, until=until)

        def fetch(last: int) -> list[Any]:
            with self._lock:
                try:
                    return self.conn.execute(sql, (last, *params, PAGE)).fetchall()
                except sqlite3.Error as exc:
                    raise self._error("read the ledger", exc) from exc

        return paged_rows(fetch, since)

    def scan(self) -> Iterator[Sequence[Row]]:
        """All rows from one read transaction, in batches (used by the verifier)."""
        # A separate connection: the snapshot lasts as long as the scan, and
        # writers on this object's connection are not blocked meanwhile.
        conn = _readonly_connection(self.path)
        try:
            conn.execute("BEGIN")
            cur = conn.execute(
                "SELECT seq, time, run, rank, host, pid, kind, payload, leaf "
                "FROM ledger_events ORDER BY seq"
            )
            while True:
                batch = cur.fetchmany(SCAN_BATCH)
                if not batch:
                    break
                yield batch
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error("read the ledger", exc) from exc
        finally:
            conn.close()

    def leaves(self, first: int, last: int) -> list[bytes]:
        """Stored leaf hashes of entries ``first..last``."""
        with self._lock:
            try:
                return self._leaves_between(first - 1, last)
            except sqlite3.Error as exc:
                raise self._error("read leaf hashes", exc) from exc

    def heads(self) -> list[SignedTreeHead]:
        """Stored signed heads, oldest first."""
        with self._lock:
            try:
                rows = self.conn.execute(
                    "SELECT size, root, time, key_id, signature FROM ledger_heads ORDER BY id"
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error("read signed heads", exc) from exc
        return [
            SignedTreeHead(int(s), bytes(r).hex(), float(t), str(k), str(sig))
            for s, r, t, k, sig in rows
        ]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                _logger.debug("close failed", exc_info=True)


def _readonly_connection(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open SQLite ledger: {exc}") from exc
    return conn


def _split(script: str) -> list[str]:
    """Statements of :data:`_SCHEMA` (triggers contain ``;`` inside BEGIN...END)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if current and "\n".join(current).strip():
        statements.append("\n".join(current))
    return statements


def _set_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL, retrying while another process creates the same fresh database.

    SQLite does not invoke the busy handler for the journal-mode change, so two ranks
    opening a new ledger at the same moment can see "database is locked" at once;
    the retry is bounded (about 30 s).
    """
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
