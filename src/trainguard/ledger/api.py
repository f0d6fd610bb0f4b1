"""The ledger object that writers and readers use: ``open_ledger(url)``.

Every rank of a job appends its own events (findings and telemetry) to one shared,
append-only ledger. Entries are numbered in one total order by the store, and each
entry is a leaf of an RFC 6962 Merkle tree; a ledger opened with a signing key signs
a tree head every ``head_interval`` entries, so an edit of an old entry shows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from trainguard.core.errors import LedgerError, TrainguardError
from trainguard.core.keys import SigningKey, load_signing_key
from trainguard.ledger.events import (
    EventInput,
    LedgerEvent,
    event_from_row,
    prepare,
    prepare_input,
)
from trainguard.ledger.store import open_store
from trainguard.ledger.store.interface import HeadSigner, LedgerStore
from trainguard.ledger.tree_head import SignedTreeHead, sign_tree_head

_logger = logging.getLogger(__name__)

DEFAULT_HEAD_INTERVAL = 1000


class Ledger:
    """An open ledger: append events, read them back, sign tree heads.

    Thread-safe. A ledger object may be inherited across ``fork``: the SQLite store
    opens a fresh connection in the child.
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        signing_key: SigningKey | None = None,
        head_interval: int = DEFAULT_HEAD_INTERVAL,
    ) -> None:
        """Wrap an open store (use :func:`open_ledger`)."""
        if head_interval < 1:
            raise LedgerError(f"head_interval must be at least 1, got {head_interval}")
        self.store = store
        self.signing_key = signing_key
        self.head_interval = head_interval
        self._closed = False

    @property
    def url(self) -> str:
        """The ledger's URL (without a password)."""
        return self.store.url

    def _signer(self) -> HeadSigner | None:
        key = self.signing_key
        if key is None:
            return None

        def sign(size: int, root: bytes) -> SignedTreeHead:
            return sign_tree_head(key, size, root)

        return sign

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{self.url}: ledger is closed")

    def append(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        run: str = "",
        rank: int | None = None,
        host: str | None = None,
        pid: int | None = None,
        time: float | None = None,
    ) -> int:
        """Append one event; it is durable when this returns.

        ``host`` and ``pid`` default to this process, ``time`` to now.

        Returns:
            The event's sequence number.

        Raises:
            LedgerError: bad field, or the store cannot be written.
        """
        self._check_open()
        event = prepare(kind, payload, run=run, rank=rank, host=host, pid=pid, time=time)
        return self.store.append([event], self._signer(), self.head_interval)[0]

    def append_many(self, items: Iterable[EventInput | Mapping[str, Any]]) -> list[int]:
        """Append several events in one transaction (the fast path); all or none.

        Each item is a mapping with ``kind`` and ``payload`` and optionally ``run``,
        ``rank``, ``host``, ``pid``, ``time``.

        Returns:
            Their sequence numbers, consecutive, in the order given.
        """
        self._check_open()
        prepared = [prepare_input(item) for item in items]
        return self.store.append(prepared, self._signer(), self.head_interval)

    def events(
        self, *, kind: str | None = None, run: str | None = None, since: int = 0
    ) -> Iterator[LedgerEvent]:
        """Events with sequence number above ``since``, oldest first, filtered."""
        self._check_open()
        for row in self.store.rows(kind=kind, run=run, since=since):
            yield event_from_row(*row[:8])

    def size(self) -> int:
        """Number of entries."""
        self._check_open()
        return self.store.size()

    def heads(self) -> list[SignedTreeHead]:
        """Signed heads stored in the ledger, oldest first."""
        self._check_open()
        return self.store.heads()

    def sign_head(self) -> SignedTreeHead:
        """Sign a head over every entry now in the ledger and store it.

        Raises:
            LedgerError: the ledger was opened without a signing key, or entries are missing.
        """
        self._check_open()
        signer = self._signer()
        if signer is None:
            raise LedgerError(
                f"{self.url}: no signing key; open the ledger with signing_key= (CLI: --key)"
            )
        return self.store.sign_head(signer)

    def close(self) -> None:
        """Close the store (idempotent)."""
        if not self._closed:
            self._closed = True
            self.store.close()

    def __enter__(self) -> Ledger:
        """Use as a context manager."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on leaving the block."""
        self.close()


def open_ledger(
    url: str | Path,
    *,
    signing_key: SigningKey | None = None,
    head_interval: int = DEFAULT_HEAD_INTERVAL,
    create: bool = True,
    readonly: bool = False,
) -> Ledger:
    """Open (creating when needed) the ledger at ``url``.

    A writer given no ``signing_key`` uses the private key file named by
    ``$TRAINGUARD_LEDGER_KEY`` when that is set.

    Args:
        url: ``sqlite:///ABS/PATH.db``, a plain path (SQLite) or
            ``postgresql://USER@HOST:PORT/DB``.
        signing_key: when given, a signed tree head is stored every ``head_interval``
            entries, and :meth:`Ledger.sign_head` works.
        head_interval: entries between automatic signed heads.
        create: create the file / schema when missing (readers pass False).
        readonly: refuse writes (readers of a ledger they must not change).

    Raises:
        LedgerError: the URL is malformed or the ledger cannot be opened (one line
            naming the URL and the fix).
    """
    if signing_key is None and not readonly:
        signing_key = _key_from_environment()
    store = open_store(url, create=create, readonly=readonly)
    return Ledger(store, signing_key=signing_key, head_interval=head_interval)


KEY_ENV = "TRAINGUARD_LEDGER_KEY"
"""Private key file used by writers that were given no key (e.g. every guarded run)."""


def _key_from_environment() -> SigningKey | None:
    """The signing key named by ``$TRAINGUARD_LEDGER_KEY``, so operators can turn on
    signed heads for every guarded run without touching training code."""
    path = os.environ.get(KEY_ENV)
    if not path:
        return None
    try:
        return load_signing_key(Path(path))
    except TrainguardError as exc:
        raise LedgerError(f"${KEY_ENV}: {exc.diagnostics()}") from exc
