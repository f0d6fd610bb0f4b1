"""Reuse of scan work across the files of one run, keyed by the bytes (or their SHA-256).

Checkpoints written by one training run share their pickles byte for byte: every
``torch.save`` of the same model writes the same ``data.pkl``, and the small
metadata members (``version``, ``.format_version``, ``byteorder``) are the same in
every file. Scanning 1,000 such files means analysing the same few pickles 1,000
times, so one :class:`ScanMemo` per :func:`~trainguard.scan.scan_path` call keeps
what an analysis of those bytes produced and replays it.

What keeps a replay identical to a fresh scan:

- The key is the content itself when it is small (up to 4 KiB: exact, and cheaper
  than hashing it) or its SHA-256, tagged so the two kinds never meet, plus
  everything else the analysis reads (nesting depth for members; CRC and declared
  size for the small stored members replayed before they are even read). An
  attacker who could make two different pickles collide under SHA-256 could hide
  one behind the other; that is not feasible.
- A ``data.pkl`` summary keeps the machine's own findings (before they are given
  the file's path) and is replayed only when it has none, or when the member name
  and byte offset it was made for are the same, so every finding names this
  file's member and offset exactly as a fresh scan would.
- Everything that depends on the rest of the archive (storage members present and
  large enough, CRCs, zip structure, metadata members) is checked for every file
  from that file's own bytes; only the analysis of the identical bytes is reused.
- A member scan is memoised only when it produced no finding, spent no
  decompression budget and raised nothing; its replay adds the same verdicts and
  formats.
- A result cut short by the time budget is never stored (it depends on the clock).

The memo lives in one process and one run; nothing is written to disk, so there
is no cache a later run (or an insider) could poison.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from trainguard.core.findings import Finding, Verdict
from trainguard.core.record import FrozenRecord

if TYPE_CHECKING:
    from trainguard.core.limits import Limits
    from trainguard.scan.policy import Policy
    from trainguard.scan.sniff import Kind

MAX_PICKLE_ENTRIES: Final = 4096
"""Distinct ``data.pkl`` summaries kept (oldest dropped first)."""
MAX_TENSORS: Final = 1_000_000
"""Tensor records kept over all summaries (only summaries whose geometry must be checked
per file keep them), so memory stays bounded (a few hundred MB at worst)."""
MAX_MEMBER_ENTRIES: Final = 16384
"""Distinct small-member results kept."""
MEMBER_MAX_BYTES: Final = 1 << 16
"""Members up to this size are memoised; bigger ones are scanned each time."""

SMALL_MEMBER_KEY_BYTES: Final = 4096
"""Stored members up to this size are looked up by their bytes themselves (no hashing):
exact, and at most ``MAX_MEMBER_ENTRIES`` of them are kept (64 MiB at worst)."""

_PickleKey = bytes | tuple[bytes, str | None, int]

SmallMemberKey = tuple[bytes, int, int, bool, int]
"""``(stored bytes, CRC-32 from the directory, declared size, CRC exempt, depth)`` of a
small stored member: everything its scan depends on besides names and offsets, which
only ever appear in findings."""

StorageInfo = tuple[str, int | None, object, str]
"""``(key, bytes per element or None, numel as recorded, repr of the dtype)`` of a storage."""

TensorGeometry = tuple[str, str, int | None, tuple[int, ...], tuple[int, ...], int]
"""``(name, storage key, storage numel, shape, stride, storage offset)`` of one tensor."""


def digest(data: bytes | memoryview) -> bytes:
    """The memo key of ``data``: the bytes themselves when small, else their SHA-256.

    A small key costs no hashing at all and is exact; a one-byte tag keeps the two
    kinds apart (a 32-byte member could otherwise equal another member's digest).
    hashlib reads a memoryview of an mmap without copying, and is imported only when
    a big member needs it (loading OpenSSL is a measurable part of start-up).
    """
    if len(data) <= SMALL_MEMBER_KEY_BYTES:
        return b"r" + bytes(data)
    import hashlib

    return b"h" + hashlib.sha256(data).digest()


class PickleSummary(FrozenRecord):
    """What the torch zip scan needs from one analysis of a ``data.pkl``.

    ``member``: the member name the findings carry (the scan's full
    ``a.zip!b/data.pkl`` path); ``base_offset``: the pickle's offset in its file, which
    the findings' offsets include; ``complete``: STOP was reached; ``end``: offset
    after STOP, or where parsing stopped; ``findings`` and ``verdict``: the machine's,
    before :meth:`ScanContext.adopt` names the file; ``storages``: distinct storages
    the persistent ids name, in order; ``tensors``: every tensor's geometry when
    ``problems`` is None (else empty: not needed); ``problems``: ``(rule, message)`` of
    every bad tensor view when they do not depend on the archive (every tensor's
    persistent id records its storage size), else None and they are worked out per
    file.
    """

    __slots__ = (
        "base_offset",
        "complete",
        "end",
        "findings",
        "member",
        "problems",
        "storages",
        "tensors",
        "verdict",
    )
    member: str | None
    base_offset: int
    complete: bool
    end: int
    findings: tuple[Finding, ...]
    verdict: Verdict
    storages: tuple[StorageInfo, ...]
    tensors: tuple[TensorGeometry, ...]
    problems: tuple[tuple[str, str], ...] | None

    def __init__(
        self,
        member: str | None,
        base_offset: int,
        complete: bool,
        end: int,
        findings: tuple[Finding, ...],
        verdict: Verdict,
        storages: tuple[StorageInfo, ...],
        tensors: tuple[TensorGeometry, ...],
        problems: tuple[tuple[str, str], ...] | None,
    ) -> None:
        """Freeze one analysis."""
        _set = object.__setattr__
        _set(self, "member", member)
        _set(self, "base_offset", base_offset)
        _set(self, "complete", complete)
        _set(self, "end", end)
        _set(self, "findings", findings)
        _set(self, "verdict", verdict)
        _set(self, "storages", storages)
        _set(self, "tensors", tensors)
        _set(self, "problems", problems)

    def reusable_for(self, member: str | None, base_offset: int) -> bool:
        """True when replaying gives exactly the findings a fresh analysis would."""
        return not self.findings or (member == self.member and base_offset == self.base_offset)


class MemberResult(FrozenRecord):
    """The effect a finding-free member scan had on its file's context."""

    __slots__ = ("formats", "verdicts")
    verdicts: tuple[Verdict, ...]
    formats: tuple[str, ...]

    def __init__(self, verdicts: tuple[Verdict, ...], formats: tuple[str, ...]) -> None:
        """Freeze the member's effect."""
        _set = object.__setattr__
        _set(self, "verdicts", verdicts)
        _set(self, "formats", formats)


class ScanMemo:
    """Per-run store of pickle summaries and member results (see the module docstring)."""

    __slots__ = (
        "_members",
        "_pickles",
        "_small",
        "_tensors",
        "hits",
        "limits",
        "misses",
        "policy",
    )

    def __init__(self, policy: Policy | None, limits: Limits) -> None:
        self.policy = policy
        """The policy every stored result was made under."""
        self.limits = limits
        """The limits every stored result was made under."""
        self._pickles: OrderedDict[_PickleKey, PickleSummary] = OrderedDict()
        self._members: OrderedDict[tuple[bytes, int], MemberResult] = OrderedDict()
        self._small: dict[SmallMemberKey, tuple[Kind, MemberResult]] = {}
        self._tensors = 0
        self.hits = 0
        """Replays served (pickles and members), for tests and profiling."""
        self.misses = 0
        """Lookups that found nothing reusable."""

    def serves(self, policy: Policy | None, limits: Limits) -> bool:
        """True for a scan under the same policy and limits (by identity, never by value)."""
        return policy is self.policy and limits is self.limits

    # -- data.pkl summaries --------------------------------------------------------------
    def pickle(self, key: bytes, member: str | None, base_offset: int) -> PickleSummary | None:
        """The stored summary for ``key`` when it can be replayed for this member."""
        found = self._pickles.get(key) or self._pickles.get((key, member, base_offset))
        if found is None or not found.reusable_for(member, base_offset):
            self.misses += 1
            return None
        self.hits += 1
        return found

    def store_pickle(self, key: bytes, summary: PickleSummary) -> None:
        """Keep ``summary`` unless it depends on the clock; evict the oldest beyond the caps."""
        if any(f.rule == "pickle.timeout" for f in summary.findings):
            return
        if len(summary.tensors) > MAX_TENSORS:
            return
        # A summary with findings is only valid for its own member and offset, so it is
        # filed under them too; a clean one serves every file with the same bytes.
        slot: _PickleKey = (key, summary.member, summary.base_offset) if summary.findings else key
        old = self._pickles.pop(slot, None)
        if old is not None:
            self._tensors -= len(old.tensors)
        self._pickles[slot] = summary
        self._tensors += len(summary.tensors)
        while len(self._pickles) > MAX_PICKLE_ENTRIES or self._tensors > MAX_TENSORS:
            _, dropped = self._pickles.popitem(last=False)
            self._tensors -= len(dropped.tensors)

    # -- small members -------------------------------------------------------------------
    def member(self, key: bytes, depth: int) -> MemberResult | None:
        """The stored result of scanning a member with this content at this depth."""
        found = self._members.get((key, depth))
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def store_member(self, key: bytes, depth: int, result: MemberResult) -> None:
        """Keep a finding-free member result; evict the oldest beyond the cap."""
        self._members[(key, depth)] = result
        if len(self._members) > MAX_MEMBER_ENTRIES:
            self._members.popitem(last=False)

    def small_member(self, key: SmallMemberKey) -> tuple[Kind, MemberResult] | None:
        """What scanning a small stored member with exactly these inputs did, if known."""
        found = self._small.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def store_small_member(self, key: SmallMemberKey, kind: Kind, result: MemberResult) -> None:
        """Keep a finding-free small-member scan (its sniffed kind too); drop the oldest."""
        small = self._small
        small[key] = (kind, result)
        if len(small) > MAX_MEMBER_ENTRIES:
            del small[next(iter(small))]
