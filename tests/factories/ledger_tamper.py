"""Tamper with a ledger behind trainguard's back, as a saboteur with database access would.

Each function opens the database directly (sqlite3 on the file, or psycopg as the
PostgreSQL superuser), removes the append-only guard (drops the SQLite triggers,
disables the PostgreSQL ones) and edits rows. Nothing here uses trainguard's API,
except :func:`forge_leaf`, which the smarter saboteur uses to rewrite the stored hash
too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trainguard.ledger.events import entry_bytes
from trainguard.ledger.merkle import leaf_hash
from trainguard.ledger.store.sqlite import sqlite_path

COLUMNS = "seq, time, run, rank, host, pid, kind, payload, leaf"


class Raw:
    """A raw connection with the placeholder style of its back end."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres

    def q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, params)
        try:
            return list(cur.fetchall())
        except Exception:
            return []


@contextmanager
def raw(url: str) -> Iterator[Raw]:
    """Open the ledger database directly with its append-only guard switched off."""
    if url.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        for table in ("ledger_events", "ledger_heads"):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        try:
            yield Raw(conn, True)
        finally:
            for table in ("ledger_events", "ledger_heads"):
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            conn.close()
        return
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    for name in ("no_update", "no_delete"):
        for table in ("ledger_events", "ledger_heads"):
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_{name}")
    try:
        yield Raw(conn, False)
    finally:
        conn.close()


def forge_leaf(row: tuple[Any, ...], seq: int) -> bytes:
    """The leaf hash a saboteur would compute for ``row`` placed at ``seq``."""
    _, t, run, rank, host, pid, kind, payload = row[:8]
    return leaf_hash(entry_bytes(seq, t, run, rank, host, pid, kind, payload.encode()))


def edit_payload(url: str, seq: int, payload: dict[str, Any], *, rehash: bool = False) -> None:
    """Change one entry's payload; with ``rehash`` also rewrite its stored leaf hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    with raw(url) as db:
        db.q("UPDATE ledger_events SET payload = ? WHERE seq = ?", (text, seq))
        if rehash:
            (row,) = db.q(f"SELECT {COLUMNS} FROM ledger_events WHERE seq = ?", (seq,))
            db.q("UPDATE ledger_events SET leaf = ? WHERE seq = ?", (forge_leaf(row, seq), seq))


def _renumber(db: Raw, first: int, delta: int) -> None:
    """Add ``delta`` to every seq >= first, in two steps so the primary key never clashes."""
    db.q("UPDATE ledger_events SET seq = -seq WHERE seq >= ?", (first,))
    db.q("UPDATE ledger_events SET seq = -seq + ? WHERE seq < 0", (delta,))


def delete(url: str, seq: int, *, renumber: bool = False) -> None:
    """Delete one entry; with ``renumber`` close the gap by shifting later entries down."""
    with raw(url) as db:
        db.q("DELETE FROM ledger_events WHERE seq = ?", (seq,))
        if renumber:
            _renumber(db, seq + 1, -1)


def insert(url: str, seq: int, kind: str, payload: dict[str, Any]) -> None:
    """Insert a forged entry at ``seq`` (later entries shifted up), with a correct leaf hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    row = (seq, 1.0, "run", 0, "host", 1, kind, text)
    with raw(url) as db:
        _renumber(db, seq, 1)
        db.q(
            f"INSERT INTO ledger_events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (*row, forge_leaf(row, seq)),
        )


def swap(url: str, a: int, b: int) -> None:
    """Exchange the positions of entries ``a`` and ``b`` (rows keep their stored hashes)."""
    with raw(url) as db:
        db.q("UPDATE ledger_events SET seq = -1 WHERE seq = ?", (a,))
        db.q("UPDATE ledger_events SET seq = ? WHERE seq = ?", (a, b))
        db.q("UPDATE ledger_events SET seq = ? WHERE seq = -1", (b,))


def move(url: str, src: int, dst: int) -> None:
    """Move entry ``src`` to position ``dst`` < ``src``, shifting the ones between up."""
    with raw(url) as db:
        db.q("UPDATE ledger_events SET seq = -1 WHERE seq = ?", (src,))
        db.q("UPDATE ledger_events SET seq = -seq WHERE seq >= ? AND seq < ?", (dst, src))
        db.q("UPDATE ledger_events SET seq = -seq + 1 WHERE seq < -1")
        db.q("UPDATE ledger_events SET seq = ? WHERE seq = -1", (dst,))


def truncate(url: str, keep: int, *, drop_heads: bool = True) -> None:
    """Remove every entry after ``keep`` (and, by default, the heads that covered them)."""
    with raw(url) as db:
        db.q("DELETE FROM ledger_events WHERE seq > ?", (keep,))
        if drop_heads:
            db.q("DELETE FROM ledger_heads WHERE size > ?", (keep,))


def corrupt_head_signatures(url: str) -> None:
    """Replace the root of every stored head (the signature no longer matches)."""
    with raw(url) as db:
        db.q("UPDATE ledger_heads SET root = ?", (b"\x11" * 32,))
