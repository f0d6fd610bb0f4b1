"""What a ledger back end provides. SQLite and PostgreSQL implement it; nothing inherits.

A store assigns sequence numbers inside its write transaction, so that concurrent
writers (ranks, jobs) get one total order with no gaps, and it stores each entry's
leaf hash beside its columns. Verification never trusts the stored leaf hashes: it
recomputes them from the columns and compares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from trainguard.ledger.events import PreparedEvent
from trainguard.ledger.tree_head import SignedTreeHead

Row = tuple[int, float, str, int | None, str | None, int | None, str, str, bytes]
"""``(seq, time, run, rank, host, pid, kind, payload_json, leaf_hash)`` as stored."""

HeadSigner = Callable[[int, bytes], SignedTreeHead]
"""Signs ``(size, root)``; the ledger passes one when it holds a signing key."""

EVENT_COLUMNS = "seq, time, run, rank, host, pid, kind, payload, leaf"
EVENTS_TABLE = "ledger_events"
HEADS_TABLE = "ledger_heads"
SCHEMA_VERSION = 1


class LedgerStore(Protocol):
    """A durable, append-only home for ledger entries and signed heads."""

    url: str
    """Where the store lives (password removed), for messages."""

    def append(
        self, events: Sequence[PreparedEvent], signer: HeadSigner | None, head_interval: int
    ) -> list[int]:
        """Insert ``events`` in one transaction; durable on return.

        Sequence numbers continue from the current maximum, inside the transaction.
        When ``signer`` is given and the new size crosses a multiple of
        ``head_interval``, a signed head over the new size is written in the same
        transaction.
        """

    def sign_head(self, signer: HeadSigner) -> SignedTreeHead:
        """Sign and store a head over the current size (in a write transaction)."""

    def size(self) -> int:
        """Number of entries (the highest sequence number)."""

    def rows(
        self,
        *,
        kind: str | None = None,
        run: str | None = None,
        since: int = 0,
        until: int | None = None,
    ) -> Iterator[Row]:
        """Stored rows with ``since < seq <= until``, in sequence order, read in pages."""

    def scan(self) -> Iterator[Sequence[Row]]:
        """Every row in sequence order, in large batches, from one consistent snapshot."""

    def leaves(self, first: int, last: int) -> list[bytes]:
        """Stored leaf hashes of entries ``first..last`` (inclusive), in order."""

    def heads(self) -> list[SignedTreeHead]:
        """Every signed head stored in the ledger, oldest first."""

    def close(self) -> None:
        """Release connections (idempotent)."""
