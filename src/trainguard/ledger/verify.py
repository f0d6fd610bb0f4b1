"""Verify a ledger: recompute every leaf, check the signed heads, name what changed.

Verification trusts nothing stored except signatures made with the given public key:

1. Every signed head (stored in the ledger, and the one given from safekeeping) must
   verify with the key; a bad one is ``ledger.bad_head_signature``.
2. Every entry's leaf hash is recomputed from its columns and compared with the one
   its writer stored; the Merkle root is rebuilt over the recomputed leaves in one
   streaming pass (O(log n) memory), and read off at each signed head's size.
3. A root that differs from a signed head is ``ledger.root_mismatch``; a head that
   covers more entries than exist is ``ledger.truncated``.
4. Entries whose stored leaf does not match are classified: content that hashes
   correctly one position earlier or later means an entry was inserted or deleted
   before it (``ledger.entry_inserted`` / ``ledger.entry_deleted``), content that
   hashes correctly at another mismatching position was moved
   (``ledger.reordered``), and anything else was edited (``ledger.entry_modified``).
   A gap in the sequence numbers is ``ledger.entry_deleted``.

An editor who also rewrites the stored leaf hashes passes step 4 but not step 3, as
long as a head signed before the edit survives; a head kept outside the ledger
(``trainguard ledger export``) also survives deletion of the stored heads.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.errors import LedgerError, SignatureError
from trainguard.core.findings import Finding, Severity
from trainguard.core.keys import key_id
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.ledger.events import ENTRY_VERSION, entry_bytes
from trainguard.ledger.merkle import EMPTY_ROOT, leaf_hash
from trainguard.ledger.store import open_store
from trainguard.ledger.store.interface import LedgerStore, Row
from trainguard.ledger.tree_head import SignedTreeHead

_logger = logging.getLogger(__name__)

RULE_MODIFIED: Final = "ledger.entry_modified"
RULE_DELETED: Final = "ledger.entry_deleted"
RULE_INSERTED: Final = "ledger.entry_inserted"
RULE_REORDERED: Final = "ledger.reordered"
RULE_TRUNCATED: Final = "ledger.truncated"
RULE_BAD_HEAD: Final = "ledger.bad_head_signature"
RULE_ROOT_MISMATCH: Final = "ledger.root_mismatch"
RULE_UNSIGNED: Final = "ledger.unsigned"
RULE_UNSIGNED_TAIL: Final = "ledger.unsigned_tail"

MAX_PER_RULE: Final = 50
"""Findings listed per rule; the rest are summarised in one more finding."""
MAX_KEPT_MISMATCHES: Final = 100_000
"""Mismatching rows kept in memory for classification (a rewrite of every row stops here)."""
MAX_PAIRWISE: Final = 200
"""Unexplained mismatches compared pairwise to find moved entries (quadratic)."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What verification found; ``findings`` empty means every check passed."""

    url: str
    """The ledger verified (password removed)."""
    size: int
    """Entries read."""
    root_hex: str
    """Merkle root recomputed over all entries read."""
    heads_checked: int
    """Signed heads whose signature verified (stored and given)."""
    covered: int
    """Entries covered by a valid signed head whose root matched (1..covered)."""
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    """Problems, one per tampered entry (capped per rule), each with evidence."""

    @property
    def ok(self) -> bool:
        """True when there is no finding at all."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``trainguard ledger verify --format json``."""
        return {
            "url": self.url,
            "size": self.size,
            "root": self.root_hex,
            "heads_checked": self.heads_checked,
            "covered": self.covered,
            "findings": [f.to_dict() for f in self.findings],
        }


def verify_ledger(
    url: str | Path,
    public_key: ed25519.Ed25519PublicKey,
    *,
    head: SignedTreeHead | None = None,
    progress: Progress = NULL_PROGRESS,
) -> VerifyReport:
    """Verify the ledger at ``url`` against ``public_key`` (and a head kept elsewhere).

    Returns:
        The report; tampering is reported as findings, never raised.

    Raises:
        LedgerError: the ledger cannot be opened or read, or none of its heads is
            signed by ``public_key`` (a wrong key is a usage error, not tampering).
    """
    store = open_store(url, create=False, readonly=True)
    try:
        return _verify(store, public_key, head, progress)
    finally:
        store.close()


def _when(t: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(t)


class _Findings:
    """Collects findings, capping each rule at :data:`MAX_PER_RULE`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.items: list[Finding] = []
        self.dropped: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def add(
        self, rule: str, message: str, severity: Severity = Severity.CRITICAL, **evidence: Any
    ) -> None:
        n = self.counts.get(rule, 0) + 1
        self.counts[rule] = n
        if n > MAX_PER_RULE:
            self.dropped[rule] = self.dropped.get(rule, 0) + 1
            return
        self.items.append(
            Finding(rule=rule, severity=severity, message=message, path=self.url, evidence=evidence)
        )

    def result(self) -> tuple[Finding, ...]:
        extra = [
            Finding(
                rule=rule,
                severity=Severity.CRITICAL,
                message=f"{n} more {rule} findings not listed",
                path=self.url,
                evidence={"not_listed": n},
            )
            for rule, n in sorted(self.dropped.items())
        ]
        return (*self.items, *extra)


def _check_heads(
    store: LedgerStore,
    public_key: ed25519.Ed25519PublicKey,
    given: SignedTreeHead | None,
    out: _Findings,
) -> list[tuple[SignedTreeHead, str]]:
    """Steps 1: signatures. Returns the heads that verify, with where they came from."""
    heads = [(h, "stored") for h in store.heads()]
    if given is not None:
        heads.append((given, "given"))
    expected = key_id(public_key)
    if heads and all(h.key_id != expected for h, _ in heads):
        others = ", ".join(sorted({h.key_id[:16] for h, _ in heads}))
        raise LedgerError(
            f"{store.url}: its tree heads are signed by key {others}, not the given key "
            f"{expected[:16]}; pass the public key that signs this ledger"
        )
    valid: list[tuple[SignedTreeHead, str]] = []
    for h, origin in heads:
        try:
            h.verify_signature(public_key)
        except SignatureError as exc:
            out.add(
                RULE_BAD_HEAD,
                f"{origin} tree head at size {h.size} dated {_when(h.time)} does not verify: "
                f"{exc.diagnostics()}",
                size=h.size,
                root=h.root_hex,
                key_id=h.key_id,
                origin=origin,
            )
            continue
        valid.append((h, origin))
    return valid


@dataclass(slots=True)
class _Scan:
    count: int = 0
    roots: dict[int, bytes] = field(default_factory=dict)
    root: bytes = EMPTY_ROOT
    gaps: list[tuple[int, int]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    mismatched: dict[int, Row] = field(default_factory=dict)
    mismatch_count: int = 0


def _scan(store: LedgerStore, sizes: Sequence[int], progress: Progress) -> _Scan:
    """Step 2: one streaming pass; recompute leaves and the roots at ``sizes``."""
    sha256 = hashlib.sha256
    dumps = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode
    result = _Scan()
    wanted = sorted(set(sizes))
    wanted_i = 0
    next_size = wanted[0] if wanted else -1
    stack: list[bytes] = []
    count = 0
    prev = 0
    mismatched = result.mismatched
    for batch in store.scan():
        for row in batch:
            seq, t, run, rank, host, pid, kind, payload, stored = row
            text = dumps([ENTRY_VERSION, seq, t, run, rank, host, pid, kind])
            leaf = sha256(b"\x00" + (text[:-1] + "," + payload + "]").encode("utf-8")).digest()
            if leaf != stored:
                result.mismatch_count += 1
                if len(mismatched) < MAX_KEPT_MISMATCHES:
                    mismatched[seq] = row
            if seq != prev + 1:
                if seq > prev + 1:
                    result.gaps.append((prev + 1, seq - 1))
                else:
                    result.duplicates.append(seq)
            prev = seq
            # Frontier append (see merkle.Frontier), inlined: this loop runs a million times.
            n = count
            while n & 1:
                leaf = sha256(b"\x01" + stack.pop() + leaf).digest()
                n >>= 1
            stack.append(leaf)
            count += 1
            if count == next_size:
                result.roots[count] = _fold(stack)
                wanted_i += 1
                next_size = wanted[wanted_i] if wanted_i < len(wanted) else -1
        progress.advance(len(batch))
    result.count = count
    result.root = _fold(stack)
    return result


def _fold(stack: list[bytes]) -> bytes:
    if not stack:
        return EMPTY_ROOT
    acc = stack[-1]
    for left in reversed(stack[:-1]):
        acc = hashlib.sha256(b"\x01" + left + acc).digest()
    return acc


def _leaf_at(row: Row, seq: int) -> bytes:
    _, t, run, rank, host, pid, kind, payload, _ = row
    return leaf_hash(entry_bytes(seq, t, run, rank, host, pid, kind, payload.encode("utf-8")))


def _classify(scan: _Scan, out: _Findings) -> None:
    """Step 4: name what happened to each entry whose stored leaf does not match."""
    for first, last in scan.gaps:
        for seq in range(first, last + 1):
            out.add(
                RULE_DELETED,
                f"entry {seq} is missing (sequence numbers jump over it)",
                seq=seq,
            )
    for seq in scan.duplicates:
        out.add(RULE_INSERTED, f"a second entry numbered {seq} was added", seq=seq)

    shifted: dict[int, int] = {}
    unexplained: list[int] = []
    for seq, row in sorted(scan.mismatched.items()):
        stored = row[8]
        if seq > 1 and stored == _leaf_at(row, seq - 1):
            shifted[seq] = 1
        elif stored == _leaf_at(row, seq + 1):
            shifted[seq] = -1
        else:
            unexplained.append(seq)

    moved: dict[int, int] = {}
    runs = _runs(shifted)
    kept_runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(runs):
        start, end, direction = runs[i]
        after = runs[i + 1] if i + 1 < len(runs) else None
        if direction == -1 and start == end and after == (end + 1, end + 1, 1):
            # Two neighbours swapped: each hashes correctly at the other's position.
            moved[start], moved[start + 1] = start + 1, start
            i += 2
            continue
        kept_runs.append(runs[i])
        i += 1
    candidates = list(scan.mismatched) if len(scan.mismatched) <= MAX_PAIRWISE else unexplained
    if len(unexplained) <= MAX_PAIRWISE:
        for seq in unexplained:
            row = scan.mismatched[seq]
            for other in candidates:
                if other != seq and row[8] == _leaf_at(row, other):
                    moved[seq] = other
                    break
    for seq, origin in sorted(moved.items()):
        out.add(
            RULE_REORDERED,
            f"entry {seq} holds the event written as entry {origin} (entries were reordered)",
            seq=seq,
            written_as=origin,
        )

    explained: set[int] = set(moved)
    for start, end, direction in kept_runs:
        if direction == 1:
            inserted = start - 1
            if inserted in moved:
                continue  # an entry moved earlier shifts the ones it jumped over
            explained.add(inserted)
            out.add(
                RULE_INSERTED,
                f"entry {inserted} was inserted: entries {start}..{end} were renumbered "
                "one position up to make room",
                seq=inserted,
                shifted=[start, end],
            )
        else:
            if end + 1 in moved:
                continue
            out.add(
                RULE_DELETED,
                f"entry {start} was deleted: entries {start + 1}..{end + 1} were renumbered "
                "one position down to close the gap",
                seq=start,
                shifted=[start, end],
            )
    for seq in unexplained:
        if seq in explained:
            continue
        row = scan.mismatched[seq]
        out.add(
            RULE_MODIFIED,
            f"entry {seq} (kind {row[6]!r}, run {row[2]!r}, rank {row[3]}) was modified: "
            "its content no longer matches the hash its writer stored",
            seq=seq,
            kind=row[6],
        )
    hidden = scan.mismatch_count - len(scan.mismatched)
    if hidden > 0:
        out.add(
            RULE_MODIFIED,
            f"{hidden} more entries do not match their stored hashes (not classified)",
            count=hidden,
        )


def _runs(shifted: dict[int, int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive sequence numbers shifted in the same direction."""
    runs: list[tuple[int, int, int]] = []
    for seq in sorted(shifted):
        direction = shifted[seq]
        if runs and runs[-1][1] == seq - 1 and runs[-1][2] == direction:
            runs[-1] = (runs[-1][0], seq, direction)
        else:
            runs.append((seq, seq, direction))
    return runs


def _verify(
    store: LedgerStore,
    public_key: ed25519.Ed25519PublicKey,
    given: SignedTreeHead | None,
    progress: Progress,
) -> VerifyReport:
    out = _Findings(store.url)
    valid = _check_heads(store, public_key, given, out)
    progress.start("verifying ledger", float(store.size()))
    try:
        scan = _scan(store, [h.size for h, _ in valid], progress)
    finally:
        progress.finish()

    # Step 3: roots and truncation against every head that verified.
    covered = 0
    matching = sorted(h.size for h, _ in valid if scan.roots.get(h.size) == h.root)
    for h, origin in sorted(valid, key=lambda item: item[0].size):
        if h.size > scan.count:
            out.add(
                RULE_TRUNCATED,
                f"the ledger has {scan.count} entries but the {origin} head signed "
                f"{_when(h.time)} covers {h.size}: entries were removed from the end",
                size=h.size,
                entries=scan.count,
                origin=origin,
            )
        elif scan.roots.get(h.size) != h.root:
            good_before = max((s for s in matching if s < h.size), default=0)
            out.add(
                RULE_ROOT_MISMATCH,
                f"entries 1..{h.size} no longer hash to the root of the {origin} head signed "
                f"{_when(h.time)}; the change lies after entry {good_before}",
                size=h.size,
                signed_root=h.root_hex,
                computed_root=scan.roots[h.size].hex(),
                last_good_size=good_before,
                origin=origin,
            )
        else:
            covered = max(covered, h.size)

    _classify(scan, out)

    if scan.count and not valid:
        out.add(
            RULE_UNSIGNED,
            f"no tree head signed by key {key_id(public_key)[:16]} covers this ledger's "
            f"{scan.count} entries, so an edit that rewrote the stored hashes would not show; "
            "open the ledger with a signing key or run 'trainguard ledger export'",
            Severity.HIGH,
            entries=scan.count,
        )
    elif valid and scan.count > (signed := max(h.size for h, _ in valid)):
        out.add(
            RULE_UNSIGNED_TAIL,
            f"entries {signed + 1}..{scan.count} are not yet covered by a signed head",
            Severity.LOW,
            first=signed + 1,
            last=scan.count,
        )
    return VerifyReport(
        url=store.url,
        size=scan.count,
        root_hex=scan.root.hex(),
        heads_checked=len(valid),
        covered=covered,
        findings=out.result(),
    )
