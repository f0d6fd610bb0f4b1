"""The state one file's scan shares across its formats: findings, verdicts, limits, budget.

Format modules never build :class:`~trainguard.core.findings.FileReport` objects
themselves; they report into a :class:`ScanContext`. Nested containers get a
child context (:meth:`ScanContext.nested`) that shares the finding list and the
decompression budget, adds the member to the ``a.zip!b.pt!data.pkl`` path and
counts the nesting depth, so a zip bomb or an endless nest is bounded once per
file and not once per level.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import LimitExceeded
from trainguard.core.findings import Finding, Severity, Verdict
from trainguard.core.record import Record

if TYPE_CHECKING:
    from trainguard.core.limits import Limits
    from trainguard.scan.memo import ScanMemo
    from trainguard.scan.picklevm import PickleResult, StreamResult
    from trainguard.scan.policy import Policy


def limit(limits: object, name: str, default: int) -> int:
    """A numeric limit by name, with the scanner's default where ``Limits`` has none."""
    value = getattr(limits, name, None)
    if type(value) is int:
        return value if value > 0 else default
    return int(value) if isinstance(value, int | float) and value > 0 else default


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Worst verdict of a file's parts; ``malicious`` outranks ``error``.

    A file that is partly malicious and partly unparseable is reported as malicious
    (what the rules proved), and both fail the scan anyway.
    """
    seen = set(verdicts)
    for verdict in (Verdict.MALICIOUS, Verdict.ERROR, Verdict.UNKNOWN):
        if verdict in seen:
            return verdict
    return Verdict.SAFE


def exempted(
    findings: Iterable[Finding], verdict: Verdict, exempt: frozenset[str]
) -> tuple[list[Finding], Verdict]:
    """Drop findings about ``exempt`` globals and recompute the verdict from the rest.

    A format module exempts the record classes of its own container (DCP metadata
    records, joblib's array wrapper) after it has checked how they are used. The
    policy denies their whole module (``torch.distributed``, ``joblib``) because the
    module also holds loaders; exact names only, never a module.
    """
    kept = list(findings)
    if not exempt:
        return kept, verdict
    from trainguard.scan.picklevm import RULES

    kept = [f for f in kept if f.global_name not in exempt]
    verdicts = []
    for finding in kept:
        rule = RULES.get(finding.rule)
        verdicts.append(rule[0] if rule is not None else Verdict.ERROR)
    return kept, combine(verdicts)


class Budget(Record):
    """Decompressed bytes produced so far for one top-level file (``unpacked``)."""

    __slots__ = ("unpacked",)

    def __init__(self, unpacked: int = 0) -> None:
        """Nothing unpacked yet."""
        self.unpacked = unpacked


class ScanContext(Record):
    """Where findings of one top-level file go, plus its limits and deadline.

    ``prefix`` is the member path of the enclosing containers, ending in ``!`` when
    nested; ``formats`` the formats recognised inside this file, outermost first (for
    the report); ``memo`` the results reused across the files of one run
    (:mod:`trainguard.scan.memo`).
    """

    __slots__ = (
        "budget",
        "deadline",
        "depth",
        "findings",
        "formats",
        "limits",
        "memo",
        "path",
        "policy",
        "prefix",
        "verdicts",
    )

    def __init__(
        self,
        path: str,
        limits: Limits,
        policy: Policy | None = None,
        deadline: float | None = None,
        depth: int = 0,
        prefix: str = "",
        findings: list[Finding] | None = None,
        verdicts: list[Verdict] | None = None,
        budget: Budget | None = None,
        formats: list[str] | None = None,
        memo: ScanMemo | None = None,
    ) -> None:
        """A context with nothing reported yet (unless the lists are given)."""
        self.path = path
        self.limits = limits
        self.policy = policy
        self.deadline = deadline
        self.depth = depth
        self.prefix = prefix
        self.findings: list[Finding] = [] if findings is None else findings
        self.verdicts: list[Verdict] = [] if verdicts is None else verdicts
        self.budget = Budget() if budget is None else budget
        self.formats: list[str] = [] if formats is None else formats
        self.memo = memo

    # -- reporting -----------------------------------------------------------------------
    def member(self, name: str | None) -> str | None:
        """The nested member path for ``name`` (or the enclosing member when None)."""
        if name is None:
            return self.prefix[:-1] if self.prefix else None
        return f"{self.prefix}{name}"

    def report(
        self,
        rule: str,
        severity: Severity,
        verdict: Verdict,
        message: str,
        *,
        member: str | None = None,
        offset: int | None = None,
        global_name: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Add one finding and the verdict it implies."""
        self.findings.append(
            Finding(
                rule=rule,
                severity=severity,
                message=message,
                path=self.path,
                member=self.member(member),
                global_name=global_name,
                offset=offset,
                evidence=evidence or {},
            )
        )
        self.verdicts.append(verdict)

    def verdict(self, verdict: Verdict) -> None:
        """Record a part's verdict that comes without a finding of its own."""
        self.verdicts.append(verdict)

    def adopt(self, findings: Iterable[Finding], verdict: Verdict) -> None:
        """Take over findings of the pickle machine (already named by member) for this file."""
        for finding in findings:
            member = finding.member if finding.member is not None else self.member(None)
            self.findings.append(finding.replace(path=self.path, member=member))
        self.verdicts.append(verdict)

    def nested(self, name: str) -> ScanContext:
        """A child context for a container member; raises when nesting is too deep."""
        max_depth = limit(self.limits, "max_archive_depth", 5)
        if self.depth + 1 > max_depth:
            raise LimitExceeded(f"{self.prefix}{name}: archives nested deeper than {max_depth}")
        return ScanContext(
            path=self.path,
            limits=self.limits,
            policy=self.policy,
            deadline=self.deadline,
            depth=self.depth + 1,
            prefix=f"{self.prefix}{name}!",
            findings=self.findings,
            verdicts=self.verdicts,
            budget=self.budget,
            formats=self.formats,
            memo=self.memo,
        )

    def usable_memo(self) -> ScanMemo | None:
        """The run's memo when it was made under this scan's policy and limits."""
        memo = self.memo
        return memo if memo is not None and memo.serves(self.policy, self.limits) else None

    def check_deadline(self) -> None:
        """Raise :class:`LimitExceeded` once the per-file time budget is spent."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LimitExceeded(f"{self.path}: per-file time budget exhausted")

    def charge(self, delta: int, produced: int, compressed: int, what: str) -> None:
        """Account ``delta`` more decompressed bytes (``produced`` so far from ``compressed``).

        Enforces the per-file total and the compression-ratio limit while inflating, so
        a bomb is stopped after one chunk, not after it filled memory.
        """
        self.budget.unpacked += delta
        total = limit(self.limits, "max_unpacked_bytes", 8 << 30)
        if self.budget.unpacked > total:
            raise LimitExceeded(f"{what}: more than {total} bytes decompressed in total")
        ratio = limit(self.limits, "max_decompression_ratio", 200)
        if compressed > 0 and produced > 1 << 20 and produced / compressed > ratio:
            raise LimitExceeded(
                f"{what}: compression ratio {produced // compressed}:1 exceeds {ratio}:1"
            )

    def inflate_cap(self, compressed: int) -> int:
        """Most bytes one member of ``compressed`` size may inflate to under the limits."""
        ratio = limit(self.limits, "max_decompression_ratio", 200)
        member = limit(self.limits, "max_member_size", 1 << 40)
        total = limit(self.limits, "max_unpacked_bytes", 8 << 30) - self.budget.unpacked
        return max(0, min(member, total, max(compressed * ratio, 1 << 20)))

    # -- the pickle machine --------------------------------------------------------------
    def pickle(
        self,
        data: bytes | memoryview,
        *,
        member: str | None,
        start: int = 0,
        base_offset: int = 0,
        exempt: frozenset[str] = frozenset(),
        adopt: bool = True,
    ) -> PickleResult:
        """Analyse one pickle at ``start``; its findings and verdict join the file's."""
        from trainguard.scan.picklevm import analyze_pickle

        self.check_deadline()
        result = analyze_pickle(
            data,
            start=start,
            member=self.member(member),
            policy=self.policy,
            limits=self.limits,
            base_offset=base_offset,
            deadline=self.deadline,
        )
        if adopt:
            self.adopt(*exempted(result.findings, result.verdict, exempt))
        return result

    def pickle_stream(
        self,
        data: bytes | memoryview,
        *,
        member: str | None,
        base_offset: int = 0,
        exempt: frozenset[str] = frozenset(),
        allow_trailing: bool = False,
    ) -> StreamResult:
        """Analyse every pickle stacked in ``data``; findings and verdict join the file's."""
        from trainguard.scan.picklevm import analyze_pickle_stream

        self.check_deadline()
        result = analyze_pickle_stream(
            data,
            member=self.member(member),
            policy=self.policy,
            limits=self.limits,
            base_offset=base_offset,
            deadline=self.deadline,
            allow_trailing=allow_trailing,
        )
        self.adopt(*exempted(result.findings, result.verdict, exempt))
        return result
