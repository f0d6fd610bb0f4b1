"""Finding, Severity and Verdict: the vocabulary every capability reports in.

A :class:`Finding` is the one result type of trainguard. The scanner fills the
file-oriented fields (``member``, ``global_name``, ``offset``); the runtime side
(guard, manifest, env, host, lint) fills ``rank``, ``step``, ``time``,
``location``, ``actor`` and ``evidence``. ``rule`` is the stable dotted id: a
scanner rule id, or one of the runtime finding kinds of :data:`FINDING_KINDS`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from trainguard.core.record import FrozenRecord


class Severity(enum.StrEnum):
    """How bad a finding is; ordered LOW < MEDIUM < HIGH < CRITICAL."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def level(self) -> int:
        """Numeric order, for threshold comparisons."""
        return _SEVERITY_ORDER[self]

    def at_least(self, other: Severity) -> bool:
        """True when this severity is ``other`` or worse."""
        return self.level >= other.level


_SEVERITY_ORDER = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Verdict(enum.StrEnum):
    """The scanner's verdict on one file (DESIGN.md contract).

    ``error`` means the file could not be scanned; it fails like ``malicious`` does,
    because an unscannable file is exactly what an attacker would hand us.
    """

    SAFE = "safe"
    UNKNOWN = "unknown"
    MALICIOUS = "malicious"
    ERROR = "error"

    @property
    def level(self) -> int:
        """Order used to combine verdicts: the worst one wins."""
        return _VERDICT_ORDER[self]

    @staticmethod
    def worst(verdicts: Iterable[Verdict]) -> Verdict:
        """Combine verdicts of parts (archive members, pickles) into one."""
        result = Verdict.SAFE
        for verdict in verdicts:
            if verdict.level > result.level:
                result = verdict
        return result

    def fails(self, fail_on: Verdict) -> bool:
        """True when this verdict is at or above ``fail_on`` (``unknown`` or ``malicious``).

        ``error`` always fails: what cannot be scanned is never passed as clean.
        """
        if self is Verdict.ERROR:
            return True
        return self.level >= fail_on.level


# error ranks above malicious when combining: a file that is both partly malicious and
# partly unparseable is reported as malicious by the rules; the combination rule
# lives in the scanner. Here error is simply the worst.
_VERDICT_ORDER = {Verdict.SAFE: 0, Verdict.UNKNOWN: 1, Verdict.MALICIOUS: 2, Verdict.ERROR: 3}


class Finding(FrozenRecord):
    """One thing trainguard found, with the evidence to act on it.

    - ``rule``: stable dotted id, a scanner rule (``pickle.dangerous_global``) or a
      runtime kind.
    - ``severity``: how bad it is; compared against ``--fail-on``.
    - ``message``: one human-readable sentence; names the file, member, tensor or rank
      involved.
    - ``path``: the file the finding is about, where there is one.
    - ``member``: archive member (zip entry, tar member, nested path
      ``a.zip!b.pt!data.pkl``).
    - ``global_name``: ``module.qualname`` of the pickle global involved, for scanner
      findings.
    - ``offset``: byte offset inside ``member`` (or the file) where the construct starts.
    - ``rank``: distributed rank the finding is about (not necessarily the rank that
      saw it).
    - ``step``: training step, where the finding belongs to one.
    - ``time``: Unix time at which the finding was made.
    - ``location``: source location ``file:line`` responsible, where known.
    - ``actor``: process or user responsible (``pid``, ``uid``, ``user``, ``cmdline``,
      ``host``).
    - ``evidence``: measured values that support the finding (JSON-serialisable).

    Immutable; :meth:`replace` gives a changed copy. Not hashable (``evidence`` is a
    mapping), like the frozen dataclass it replaces.
    """

    __slots__ = (
        "actor",
        "evidence",
        "global_name",
        "location",
        "member",
        "message",
        "offset",
        "path",
        "rank",
        "rule",
        "severity",
        "step",
        "time",
    )
    rule: str
    severity: Severity
    message: str
    path: str | None
    member: str | None
    global_name: str | None
    offset: int | None
    rank: int | None
    step: int | None
    time: float | None
    location: str | None
    actor: Mapping[str, Any] | None
    evidence: Mapping[str, Any]

    def __init__(
        self,
        rule: str,
        severity: Severity,
        message: str,
        path: str | None = None,
        member: str | None = None,
        global_name: str | None = None,
        offset: int | None = None,
        rank: int | None = None,
        step: int | None = None,
        time: float | None = None,
        location: str | None = None,
        actor: Mapping[str, Any] | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        """Freeze one finding (``evidence`` defaults to a new empty dict)."""
        _set = object.__setattr__
        _set(self, "rule", rule)
        _set(self, "severity", severity)
        _set(self, "message", message)
        _set(self, "path", path)
        _set(self, "member", member)
        _set(self, "global_name", global_name)
        _set(self, "offset", offset)
        _set(self, "rank", rank)
        _set(self, "step", step)
        _set(self, "time", time)
        _set(self, "location", location)
        _set(self, "actor", actor)
        _set(self, "evidence", {} if evidence is None else evidence)

    def to_scan_dict(self) -> dict[str, Any]:
        """The finding as DESIGN.md's ``scan`` JSON contract spells it."""
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "member": self.member,
            "global": self.global_name,
            "offset": self.offset,
        }

    def to_dict(self) -> dict[str, Any]:
        """The finding with every field, for runtime findings and the ledger."""
        return {
            "kind": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "path": self.path,
            "member": self.member,
            "global": self.global_name,
            "offset": self.offset,
            "rank": self.rank,
            "step": self.step,
            "time": self.time,
            "location": self.location,
            "actor": dict(self.actor) if self.actor is not None else None,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Rebuild a finding written by :meth:`to_dict` (e.g. read back from a ledger)."""
        return cls(
            rule=str(data.get("kind") or data["rule"]),
            severity=Severity(data["severity"]),
            message=str(data["message"]),
            path=data.get("path"),
            member=data.get("member"),
            global_name=data.get("global"),
            offset=data.get("offset"),
            rank=data.get("rank"),
            step=data.get("step"),
            time=data.get("time"),
            location=data.get("location"),
            actor=data.get("actor"),
            evidence=data.get("evidence") or {},
        )


class FindingKind(FrozenRecord):
    """One row of the documented table of runtime finding kinds: the dotted ``kind``
    (stable across releases), its default ``severity``, its ``meaning`` (what
    happened) and the ``action`` to take."""

    __slots__ = ("action", "kind", "meaning", "severity")
    kind: str
    severity: Severity
    meaning: str
    action: str

    def __init__(self, kind: str, severity: Severity, meaning: str, action: str) -> None:
        """Freeze one row."""
        _set = object.__setattr__
        _set(self, "kind", kind)
        _set(self, "severity", severity)
        _set(self, "meaning", meaning)
        _set(self, "action", action)


def _k(kind: str, severity: Severity, meaning: str, action: str) -> tuple[str, FindingKind]:
    return kind, FindingKind(kind, severity, meaning, action)


FINDING_KINDS: Mapping[str, FindingKind] = dict(
    [
        _k(
            "step.slowdown",
            Severity.MEDIUM,
            "Step time rose well above the run's own robust baseline.",
            "Look at the step-time breakdown; compare with the delay.injected evidence.",
        ),
        _k(
            "rank.straggler",
            Severity.HIGH,
            "One rank is consistently slower than its peers before the collective.",
            "Inspect the named rank's host and the code location in delay.injected.",
        ),
        _k(
            "delay.injected",
            Severity.HIGH,
            "Wall time was spent where a training step has no business (sleep, busy wait, "
            "blocking call) at the named source location.",
            "Read the code at the location; check git blame and the env verify report.",
        ),
        _k(
            "replica.divergence",
            Severity.CRITICAL,
            "Data-parallel replicas that must hold identical parameters do not.",
            "Stop the run; the named rank's parameters were altered after the step.",
        ),
        _k(
            "grad.rank_outlier",
            Severity.CRITICAL,
            "One rank's local gradient disagrees with all its peers before the all-reduce.",
            "Stop the run; inspect the named rank for corrupted gradients or hardware SDC.",
        ),
        _k(
            "grad.anomaly",
            Severity.HIGH,
            "Gradient statistics left their robust band, or the optimizer update disagrees "
            "with an independent re-computation.",
            "Check the optimizer code and kernels (env verify); compare with a known-good run.",
        ),
        _k(
            "loss.anomaly",
            Severity.MEDIUM,
            "The loss left its robust band (spike, NaN, plateau where it fell before).",
            "Correlate with grad.anomaly and code.tampered findings at the same step.",
        ),
        _k(
            "code.tampered",
            Severity.CRITICAL,
            "A function the training relies on was replaced at run time (monkeypatch).",
            "Find who patched it (location in evidence); verify the environment.",
        ),
        _k(
            "seed.tampered",
            Severity.HIGH,
            "A random number generator was reseeded or its state replaced after start-up "
            "by code other than the entry point.",
            "Read the caller location in the evidence; remove the reseeding.",
        ),
        _k(
            "data.order_changed",
            Severity.HIGH,
            "The data order differs from the order recorded for the same run and epoch.",
            "Check the sampler, loader and seed code for changes since the recorded run.",
        ),
        _k(
            "step.rollback",
            Severity.CRITICAL,
            "Training resumed from a checkpoint older than the last recorded step.",
            "Find who swapped the checkpoint; resume from the newest verified one.",
        ),
        _k(
            "weights.tampered",
            Severity.CRITICAL,
            "Weights on disk do not match their signed manifest.",
            "Do not use them; restore from a verified copy; the diff names the tensors.",
        ),
        _k(
            "load.unsafe_global",
            Severity.CRITICAL,
            "Deserialisation of a non-allowlisted global was attempted and blocked.",
            "Scan the file with `trainguard scan`; find who produced it.",
        ),
        _k(
            "process.signal",
            Severity.HIGH,
            "A signal was sent to a training process by another process.",
            "The evidence names the sender pid, uid and command line.",
        ),
        _k(
            "process.killed",
            Severity.CRITICAL,
            "A training process died from a signal (SIGKILL included).",
            "Check the supervisor record and host logs for who killed it.",
        ),
        _k(
            "rank.hang",
            Severity.HIGH,
            "A rank stopped making progress while its peers wait for it.",
            "Inspect the hung rank's stack in the evidence.",
        ),
        _k(
            "env.modified_file",
            Severity.HIGH,
            "An installed file differs from its distribution's RECORD, or was added to it.",
            "Reinstall the distribution; find who wrote the file (owner, mtime).",
        ),
        _k(
            "env.startup_injection",
            Severity.HIGH,
            "Code runs at interpreter start-up through .pth, sitecustomize, environment "
            "variables or preload libraries.",
            "Remove the injection point unless it is yours.",
        ),
        _k(
            "host.new_entry",
            Severity.HIGH,
            "A login or persistence point appeared since the baseline.",
            "Confirm the owner added it on purpose; otherwise remove it and rotate keys.",
        ),
        _k(
            "host.changed_entry",
            Severity.HIGH,
            "A login or persistence point changed since the baseline, or can no longer be "
            "read (fail closed).",
            "Compare the entry with the baseline's digest; find who changed it (owner, mtime).",
        ),
        _k(
            "host.removed_entry",
            Severity.LOW,
            "A login or persistence point recorded in the baseline is gone.",
            "Confirm the removal was intended; removed log or key files can hide tracks.",
        ),
        _k(
            "guard.disabled",
            Severity.CRITICAL,
            "The guard was switched off from inside the job (hooks removed, thread stopped, "
            "object replaced) or stopped reporting, or one of its checks failed (high: the "
            "check named in the evidence is off from that step).",
            "Treat the run as compromised from the reported step on; for a failed check, "
            "read its exception in the evidence and the rank's log.",
        ),
        _k(
            "ledger.entry_modified",
            Severity.CRITICAL,
            "A ledger entry's content no longer matches the hash its writer stored.",
            "Treat the entry as forged; compare with a backup or a head kept elsewhere.",
        ),
        _k(
            "ledger.entry_deleted",
            Severity.CRITICAL,
            "A ledger entry was removed (a gap in the sequence, or later entries renumbered).",
            "Find who had write access to the ledger database at that time.",
        ),
        _k(
            "ledger.entry_inserted",
            Severity.CRITICAL,
            "An entry was added into the middle of the ledger after the fact.",
            "Disregard the inserted entry; find who had write access to the database.",
        ),
        _k(
            "ledger.reordered",
            Severity.CRITICAL,
            "A ledger entry holds the event written at another position.",
            "Read the events in their written order (evidence: written_as).",
        ),
        _k(
            "ledger.truncated",
            Severity.CRITICAL,
            "A signed tree head covers more entries than the ledger still holds.",
            "Restore the ledger from a backup; the missing events were removed on purpose.",
        ),
        _k(
            "ledger.root_mismatch",
            Severity.CRITICAL,
            "The entries covered by a signed tree head no longer hash to its root "
            "(rewritten together with their stored hashes).",
            "Restore from a backup; the change lies after the last head that still matches.",
        ),
        _k(
            "ledger.bad_head_signature",
            Severity.CRITICAL,
            "A tree head's signature does not verify with the ledger's public key.",
            "Treat the head as forged; verify against a head kept outside the ledger.",
        ),
        _k(
            "ledger.unsigned",
            Severity.HIGH,
            "No signed tree head covers the ledger, so rewritten hashes would not show.",
            "Open the ledger with a signing key, or run 'trainguard ledger export'.",
        ),
        _k(
            "ledger.unsigned_tail",
            Severity.LOW,
            "The newest entries are not yet covered by a signed tree head.",
            "Run 'trainguard ledger export' at the end of the run and keep the head.",
        ),
    ]
)
"""The documented table of runtime finding kinds (docs/finding-kinds.md mirrors it)."""


def worst_severity(findings: Iterable[Finding]) -> Severity | None:
    """The highest severity among ``findings``, or None when there are none."""
    worst: Severity | None = None
    for finding in findings:
        if worst is None or finding.severity.level > worst.level:
            worst = finding.severity
    return worst


def any_at_least(findings: Iterable[Finding], threshold: Severity) -> bool:
    """True when a finding reaches ``threshold``; decides exit code 1 vs 0."""
    return any(finding.severity.at_least(threshold) for finding in findings)


class FileReport(FrozenRecord):
    """The scanner's result for one file (one entry of ``files`` in scan JSON): the
    ``path`` as the user named it (or found it while walking a directory), the
    detected container ``format`` (``torch-zip``, ``pickle``, ``safetensors``...), the
    ``verdict`` combined over every part of the file, and the ``findings`` that
    support it, in file order."""

    __slots__ = ("findings", "format", "path", "verdict")
    path: str
    format: str
    verdict: Verdict
    findings: tuple[Finding, ...]

    def __init__(
        self,
        path: str,
        format: str,
        verdict: Verdict,
        findings: tuple[Finding, ...] = (),
    ) -> None:
        """Freeze one file's result."""
        _set = object.__setattr__
        _set(self, "path", path)
        _set(self, "format", format)
        _set(self, "verdict", verdict)
        _set(self, "findings", findings)

    def to_dict(self) -> dict[str, Any]:
        """The DESIGN.md JSON shape for one file."""
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict.value,
            "findings": [finding.to_scan_dict() for finding in self.findings],
        }


def scan_summary(reports: Iterable[FileReport]) -> dict[str, int]:
    """Counts per verdict, the ``summary`` object of scan JSON."""
    summary = {verdict.value: 0 for verdict in Verdict}
    for report in reports:
        summary[report.verdict.value] += 1
    return summary
