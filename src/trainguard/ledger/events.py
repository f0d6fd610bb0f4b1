"""Ledger events and the exact bytes each one contributes to the Merkle tree.

An entry's bytes are ``canonical_json([1, seq, time, run, rank, host, pid, kind,
payload])``: a JSON array whose first element is the format version. The sequence
number is inside the hashed bytes, so an entry moved to another position (reordered,
or shifted by an insertion or deletion) no longer matches its own leaf hash.

The payload is canonicalised once, at append time, and stored verbatim; the entry
bytes are then assembled by concatenation (``header[:-1] + "," + payload + "]"``),
which is byte-for-byte what ``canonical_json`` of the whole array produces. That lets
verification of a million entries rehash the stored columns without re-parsing every
payload, and still catches an edit of any column.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NotRequired, TypedDict

from trainguard.core.canonical import canonical_json
from trainguard.core.errors import LedgerError
from trainguard.ledger.merkle import leaf_hash

_logger = logging.getLogger(__name__)

ENTRY_VERSION: Final = 1
"""First element of every entry's JSON array; bumped if the entry format changes."""

MAX_KIND_LENGTH: Final = 200
"""Event kinds are short dotted names; longer ones are refused as misuse."""


class EventInput(TypedDict):
    """One event handed to :meth:`Ledger.append_many` (same fields as ``append``)."""

    kind: str
    payload: Mapping[str, Any]
    run: NotRequired[str]
    rank: NotRequired[int | None]
    host: NotRequired[str | None]
    pid: NotRequired[int | None]
    time: NotRequired[float | None]


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One entry of the ledger as read back."""

    seq: int
    """Position in the ledger's single total order, starting at 1."""
    time: float
    """Unix time the writer gave (its clock; not trusted for ordering, ``seq`` is)."""
    run: str
    """Run identifier shared by the ranks of one job ("" when not tied to a run)."""
    rank: int | None
    """Distributed rank of the writer, where it has one."""
    host: str | None
    """Host name of the writer."""
    pid: int | None
    """Process id of the writer."""
    kind: str
    """``finding`` (payload = ``Finding.to_dict()``) or a telemetry kind (``step``...)."""
    payload: dict[str, Any]
    """The event's data, as canonical JSON stored it."""

    def entry_bytes(self) -> bytes:
        """The exact bytes hashed into this entry's Merkle leaf."""
        return entry_bytes(
            self.seq,
            self.time,
            self.run,
            self.rank,
            self.host,
            self.pid,
            self.kind,
            canonical_payload(self.payload),
        )

    def leaf_hash(self) -> bytes:
        """RFC 6962 leaf hash of :meth:`entry_bytes`."""
        return leaf_hash(self.entry_bytes())


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event validated and canonicalised outside the write lock; only ``seq`` is missing."""

    time: float
    run: str
    rank: int | None
    host: str | None
    pid: int | None
    kind: str
    payload: bytes
    """Canonical JSON of the payload."""


def _sanitize(value: Any) -> Any:
    """Make ``value`` JSON-representable without dropping it.

    A security log must not lose a finding because its evidence holds a NaN loss or a
    numpy scalar: non-finite floats become the strings ``NaN``/``Infinity``/``-Infinity``,
    keys become strings, and unknown objects their ``str()``.
    """
    if isinstance(value, str):
        return _valid_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {_valid_text(str(k)): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_sanitize(v) for v in items]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _sanitize(item())
        except (TypeError, ValueError, RuntimeError, AttributeError):
            _logger.debug("item() failed on %s; stored as text", type(value).__name__)
    return str(value)


def _valid_text(text: str) -> str:
    """``text`` with unencodable code points (lone surrogates) escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _check_text(value: str, name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LedgerError(f"ledger event {name} is not valid Unicode text: {value!r}") from exc


def canonical_payload(payload: Mapping[str, Any]) -> bytes:
    """Canonical JSON of an event payload (sanitised when plain JSON cannot hold it)."""
    if not isinstance(payload, Mapping):
        raise LedgerError(
            f"ledger event payload must be a mapping, got {type(payload).__name__}; "
            "wrap the value in a dict"
        )
    try:
        return canonical_json(payload)
    except (TypeError, ValueError):
        return canonical_json(_sanitize(payload))


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"ledger event {name} must be an int or None, got {value!r}")
    return int(value)


def prepare(
    kind: str,
    payload: Mapping[str, Any],
    *,
    run: str = "",
    rank: int | None = None,
    host: str | None = None,
    pid: int | None = None,
    time: float | None = None,
) -> PreparedEvent:
    """Validate one event and canonicalise its payload.

    ``host`` and ``pid`` default to the writing process, so every entry names who
    wrote it; ``time`` defaults to now.

    Raises:
        LedgerError: a field has the wrong type (the message names it).
    """
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_LENGTH:
        raise LedgerError(
            f"ledger event kind must be a non-empty string of at most {MAX_KIND_LENGTH} "
            f"characters, got {kind!r}"
        )
    if not isinstance(run, str):
        raise LedgerError(f"ledger event run must be a string, got {run!r}")
    if host is not None and not isinstance(host, str):
        raise LedgerError(f"ledger event host must be a string or None, got {host!r}")
    _check_text(kind, "kind")
    _check_text(run, "run")
    if host is not None:
        _check_text(host, "host")
    when = _time.time() if time is None else time
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise LedgerError(f"ledger event time must be a finite number, got {time!r}")
    return PreparedEvent(
        time=float(when),
        run=run,
        rank=_opt_int(rank, "rank"),
        host=_HOST if host is None else host,
        pid=os.getpid() if pid is None else _opt_int(pid, "pid"),
        kind=kind,
        payload=canonical_payload(payload),
    )


def prepare_input(item: Mapping[str, Any]) -> PreparedEvent:
    """:func:`prepare` for one mapping of :class:`EventInput` fields."""
    if not isinstance(item, Mapping):
        raise LedgerError(f"append_many takes mappings with kind and payload, got {item!r}")
    unknown = set(item) - _INPUT_FIELDS
    if unknown:
        raise LedgerError(f"unknown ledger event field(s) {sorted(unknown)}; use {_FIELD_LIST}")
    if "kind" not in item or "payload" not in item:
        raise LedgerError("every ledger event needs 'kind' and 'payload'")
    return prepare(
        item["kind"],
        item["payload"],
        run=item.get("run", "") or "",
        rank=item.get("rank"),
        host=item.get("host"),
        pid=item.get("pid"),
        time=item.get("time"),
    )


_INPUT_FIELDS: Final = frozenset({"kind", "payload", "run", "rank", "host", "pid", "time"})
_FIELD_LIST: Final = ", ".join(sorted(_INPUT_FIELDS))
_HOST: Final = socket.gethostname()

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def entry_bytes(
    seq: int,
    time: float,
    run: str,
    rank: int | None,
    host: str | None,
    pid: int | None,
    kind: str,
    payload: bytes,
) -> bytes:
    """The bytes of one entry: ``canonical_json([1, seq, time, run, rank, host, pid, kind,
    payload])``, assembled from the already canonical payload bytes."""
    header = _dumps([ENTRY_VERSION, seq, time, run, rank, host, pid, kind])
    return header[:-1].encode("utf-8") + b"," + payload + b"]"


def event_from_row(
    seq: int,
    time: float,
    run: str,
    rank: int | None,
    host: str | None,
    pid: int | None,
    kind: str,
    payload: str | bytes,
) -> LedgerEvent:
    """Build an event from stored columns.

    Raises:
        LedgerError: the stored payload is not JSON (the ledger was damaged).
    """
    try:
        data = json.loads(payload)
    except (ValueError, TypeError) as exc:
        raise LedgerError(
            f"ledger entry {seq}: stored payload is not JSON; run 'trainguard ledger verify'"
        ) from exc
    if not isinstance(data, dict):
        raise LedgerError(f"ledger entry {seq}: stored payload is not a JSON object")
    return LedgerEvent(seq, time, run, rank, host, pid, kind, data)
