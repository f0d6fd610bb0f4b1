"""Helpers both back ends share (functions, not a base class)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from trainguard.core.errors import LedgerError
from trainguard.ledger.events import PreparedEvent, entry_bytes
from trainguard.ledger.merkle import Frontier, leaf_hash
from trainguard.ledger.store.interface import HeadSigner, Row
from trainguard.ledger.tree_head import SignedTreeHead

_logger = logging.getLogger(__name__)

PAGE: Final = 1000
"""Rows a reader fetches per query, so it never holds a long transaction."""

_COLUMNS: Final = "seq, time, run, rank, host, pid, kind, payload, leaf"


def rows_query(
    mark: str, *, kind: str | None, run: str | None, until: int | None
) -> tuple[str, list[Any]]:
    """The paged SELECT of ``rows()`` with ``mark`` as the driver's placeholder.

    Its first parameter is the last sequence number already read and its last one is
    the page size; the filter values in between are returned.
    """
    where = [f"seq > {mark}"]
    params: list[Any] = []
    for column, value in (("kind", kind), ("run", run)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if until is not None:
        where.append(f"seq <= {mark}")
        params.append(until)
    # Only fixed fragments are joined here; every value is a bound parameter.
    sql = f"SELECT {_COLUMNS} FROM ledger_events WHERE {' AND '.join(where)} "  # noqa: S608
    return sql + f"ORDER BY seq LIMIT {mark}", params


def paged_rows(fetch: Callable[[int], Sequence[Sequence[Any]]], since: int) -> Iterator[Row]:
    """Rows after ``since``, one ``fetch(last_seq)`` page of :data:`PAGE` at a time."""
    last = since
    while True:
        page = fetch(last)
        for row in page:
            yield to_row(row)
        if len(page) < PAGE:
            return
        last = int(page[-1][0])


def to_row(row: Sequence[Any]) -> Row:
    """A driver's row as a :data:`Row` (plain ints, floats and bytes)."""
    return (
        int(row[0]),
        float(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        bytes(row[8]),
    )


def build_rows(first_seq: int, events: Sequence[PreparedEvent]) -> list[Row]:
    """Rows for ``events`` numbered from ``first_seq``, each with its leaf hash."""
    rows: list[Row] = []
    seq = first_seq
    for e in events:
        leaf = leaf_hash(entry_bytes(seq, e.time, e.run, e.rank, e.host, e.pid, e.kind, e.payload))
        rows.append(
            (seq, e.time, e.run, e.rank, e.host, e.pid, e.kind, e.payload.decode("utf-8"), leaf)
        )
        seq += 1
    return rows


def crossed(old_size: int, new_size: int, interval: int) -> bool:
    """Whether growing from ``old_size`` to ``new_size`` passes a multiple of ``interval``."""
    return interval > 0 and old_size // interval != new_size // interval


def head_at(
    size: int,
    checkpoint: tuple[int, bytes] | None,
    leaves_after: Callable[[int], Sequence[bytes]],
    signer: HeadSigner,
) -> tuple[SignedTreeHead, Frontier]:
    """Sign the root over ``size`` entries, resuming from the newest stored frontier.

    The root is built from the leaf hashes the writers stored at insert time, so a
    later edit of an entry's columns is not blessed by a new head: the verifier
    recomputes leaves from the columns and the mismatch shows.

    Raises:
        LedgerError: entries are missing (the count of leaves does not match ``size``).
    """
    frontier = Frontier() if checkpoint is None else Frontier.from_bytes(*checkpoint)
    leaves = leaves_after(frontier.size)
    if frontier.size + len(leaves) != size:
        raise LedgerError(
            f"ledger has {frontier.size + len(leaves)} entries where {size} were expected "
            "(entries were deleted); run 'trainguard ledger verify'"
        )
    frontier.extend(leaves)
    return signer(size, frontier.root()), frontier


def periodic_head(
    size: int,
    checkpoint: tuple[int, bytes] | None,
    leaves_after: Callable[[int], Sequence[bytes]],
    signer: HeadSigner,
) -> tuple[SignedTreeHead, Frontier] | None:
    """:func:`head_at` for the automatic heads written by ``append``.

    A damaged ledger must not stop appends (that would let a saboteur silence the
    guard by deleting one row), so a failure is logged and no head is written.
    """
    try:
        return head_at(size, checkpoint, leaves_after, signer)
    except LedgerError as exc:
        _logger.error("no signed head at size %d: %s", size, exc)
        return None


def redact(url: str) -> str:
    """``url`` without a password, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"
