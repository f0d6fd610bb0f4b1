"""Ledger back ends, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from trainguard.core.errors import LedgerError
from trainguard.ledger.store.interface import LedgerStore


def open_store(url: str | Path, *, create: bool = True, readonly: bool = False) -> LedgerStore:
    """The store behind ``url``: ``postgresql://...``, ``sqlite:///path`` or a plain path.

    Raises:
        LedgerError: the URL is malformed, the back end is missing or unreachable.
    """
    text = str(url)
    if not text.strip():
        raise LedgerError("empty ledger URL; give sqlite:///PATH.db, a path or postgresql://...")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        from trainguard.ledger.store.postgres import PostgresStore

        return PostgresStore(text, create=create, readonly=readonly)
    if scheme and scheme != "sqlite":
        raise LedgerError(
            f"{text}: unknown ledger URL scheme {scheme!r}; use sqlite:///PATH.db, "
            "a path or postgresql://USER@HOST:PORT/DB"
        )
    from trainguard.ledger.store.sqlite import SqliteStore

    return SqliteStore(text, create=create, readonly=readonly)


__all__ = ["LedgerStore", "open_store"]
