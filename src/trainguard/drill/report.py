"""Judging a scenario from its run's findings, and the drill's report.

A sabotage is *caught* when a finding of one of its expected kinds was recorded in
the run's ledger at or after the moment the sabotage fired (the job, or the drill
for signals from outside, records that moment), naming the rank it hit (or no rank).
A finding of the expected kind from before the injection, or blaming another rank,
is not a detection. The time and steps to detection come from
the earliest such finding. The control run passes when it holds no finding of
severity medium or above. Everything here is pure: it is tested without running jobs.
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from trainguard.core.findings import Finding, Severity
from trainguard.drill.scenarios import Scenario

FALSE_ALARM_SEVERITY = Severity.MEDIUM
"""A finding at or above this in the clean run is a false alarm."""
CLOCK_SLACK_SECONDS = 1.0
"""Findings this much older than the recorded injection still count (clocks of the
processes on one host agree; the slack covers the record being written just after)."""


class Outcome(enum.StrEnum):
    """What became of one scenario."""

    CAUGHT = "caught"
    MISSED = "missed"
    CLEAN = "clean"
    """The control run raised no alarm."""
    FALSE_ALARM = "false alarm"
    """The control run raised a finding of severity medium or above."""
    ERROR = "error"
    """The scenario could not be carried out (the job failed before the sabotage fired)."""

    @property
    def passed(self) -> bool:
        """True for the outcomes a passing drill needs."""
        return self in (Outcome.CAUGHT, Outcome.CLEAN)


@dataclass(frozen=True, slots=True)
class Injection:
    """When and where a sabotage fired."""

    time: float
    """Unix time."""
    step: int | None
    """The target rank's optimizer step, where known."""
    rank: int | None
    """The rank it hit (None: every rank)."""
    what: str
    """What was done, in words."""


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the drill observed of one scenario's run, besides the ledger."""

    job_code: int | None
    """The job's exit code (None: it had to be killed at the deadline)."""
    seconds: float
    """Wall time of the scenario."""
    injection: Injection | None = None
    """When the sabotage fired (None: it never did)."""
    timed_out: bool = False
    """The job ran past the scenario's deadline and was killed."""
    payload_ran: bool = False
    """The backdoor's marker file exists: its payload executed."""
    log_tail: str = ""
    """The end of the job's logs, for a scenario that could not be carried out."""


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One row of the scorecard."""

    name: str
    move: str
    outcome: Outcome
    expected: tuple[str, ...]
    kind: str | None = None
    """The finding kind that caught it (or, for the control run, the worst false alarm)."""
    steps_to_detection: int | None = None
    seconds_to_detection: float | None = None
    evidence: str = ""
    """One line: where the finding points and what it says."""
    seconds: float = 0.0
    """Wall time of the scenario."""
    kinds_seen: dict[str, int] = field(default_factory=dict)
    """Every finding kind in the run with its count (context, not judged)."""
    run_dir: str | None = None
    """The scenario's directory when kept (``--keep``)."""

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON."""
        return {
            "name": self.name,
            "move": self.move,
            "outcome": self.outcome.value,
            "passed": self.outcome.passed,
            "expected": list(self.expected),
            "kind": self.kind,
            "steps_to_detection": self.steps_to_detection,
            "seconds_to_detection": (
                None if self.seconds_to_detection is None else round(self.seconds_to_detection, 3)
            ),
            "evidence": self.evidence,
            "seconds": round(self.seconds, 2),
            "kinds_seen": dict(self.kinds_seen),
            "run_dir": self.run_dir,
        }


@dataclass(frozen=True, slots=True)
class DrillReport:
    """The whole drill."""

    clean: ScenarioResult
    scenarios: tuple[ScenarioResult, ...]
    seconds: float
    nproc: int
    device: str
    excluded_monitors: tuple[str, ...] = ()
    """Monitors switched off through ``TRAINGUARD_DRILL_EXCLUDE_MONITORS`` (testing)."""
    root: str | None = None
    """Where the scenario directories were kept (``--keep``)."""

    @property
    def passed(self) -> bool:
        """Every sabotage caught and the clean run clean."""
        return self.clean.outcome.passed and all(r.outcome.passed for r in self.scenarios)

    def counts(self) -> dict[str, int]:
        """Scenario outcomes by name, plus the control run's false alarms."""
        tally = Counter(r.outcome.value for r in self.scenarios)
        return {
            "caught": tally[Outcome.CAUGHT.value],
            "missed": tally[Outcome.MISSED.value],
            "error": tally[Outcome.ERROR.value],
            "false_alarm": int(self.clean.outcome is Outcome.FALSE_ALARM),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON (``trainguard drill --format json``)."""
        return {
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
            "nproc": self.nproc,
            "device": self.device,
            "excluded_monitors": list(self.excluded_monitors),
            "clean": self.clean.to_dict(),
            "scenarios": [r.to_dict() for r in self.scenarios],
            "summary": self.counts(),
            "root": self.root,
        }


def judge(
    scenario: Scenario, findings: Sequence[Finding], facts: RunFacts, *, strip: str | None = None
) -> ScenarioResult:
    """Decide the outcome of one scenario from its run's findings.

    ``strip`` is a directory prefix (the drill's root) removed from the evidence text,
    so the scorecard shows ``rollback/run/ckpt-15.pt`` rather than a temporary path.
    """
    kinds_seen = dict(Counter(f.rule for f in findings))
    base: dict[str, Any] = {
        "name": scenario.name,
        "move": scenario.move,
        "expected": scenario.expected,
        "seconds": facts.seconds,
        "kinds_seen": kinds_seen,
    }
    if scenario.is_control:
        return _judge_control(findings, facts, base, strip)
    if facts.payload_ran:
        return ScenarioResult(
            outcome=Outcome.MISSED,
            evidence="the backdoor's payload ran: its marker file was written",
            **base,
        )
    hits = _detections(scenario, findings, facts.injection)
    if hits:
        first = hits[0]
        return ScenarioResult(
            outcome=Outcome.CAUGHT,
            kind=first.rule,
            steps_to_detection=_steps(first, facts.injection),
            seconds_to_detection=_seconds(first, facts.injection),
            evidence=evidence_line(first, strip=strip),
            **base,
        )
    if facts.injection is None:
        reason = "the sabotage never fired: " + (
            "the job ran past its deadline" if facts.timed_out else f"job exit {facts.job_code}"
        )
        tail = _last_line(facts.log_tail)
        return ScenarioResult(
            outcome=Outcome.ERROR, evidence=reason + (f" ({tail})" if tail else ""), **base
        )
    seen = ", ".join(sorted(kinds_seen)) or "no findings"
    return ScenarioResult(
        outcome=Outcome.MISSED,
        evidence=f"no {' / '.join(scenario.expected)} finding after the injection ({seen})",
        **base,
    )


def _judge_control(
    findings: Sequence[Finding], facts: RunFacts, base: dict[str, Any], strip: str | None
) -> ScenarioResult:
    alarms = [f for f in findings if f.severity.at_least(FALSE_ALARM_SEVERITY)]
    if alarms:
        worst = max(alarms, key=lambda f: f.severity.level)
        return ScenarioResult(
            outcome=Outcome.FALSE_ALARM,
            kind=worst.rule,
            evidence=f"{len(alarms)} finding(s) at or above medium; first: "
            + evidence_line(alarms[0], strip=strip),
            **base,
        )
    if facts.job_code != 0:
        what = "ran past its deadline" if facts.timed_out else f"exited with {facts.job_code}"
        tail = _last_line(facts.log_tail)
        return ScenarioResult(
            outcome=Outcome.ERROR,
            evidence=f"the clean job {what}" + (f" ({tail})" if tail else ""),
            **base,
        )
    low = len(findings)
    return ScenarioResult(
        outcome=Outcome.CLEAN,
        evidence=f"no finding at or above medium ({low} low)" if low else "no findings",
        **base,
    )


def _detections(
    scenario: Scenario, findings: Iterable[Finding], injection: Injection | None
) -> list[Finding]:
    """Expected findings made at or after the injection, earliest first.

    A finding that names another rank than the one the sabotage hit is not a
    detection (a hung rank's waiting peer named as the hung one, for example).
    """
    hits = []
    for finding in findings:
        if finding.rule not in scenario.expected:
            continue
        if (
            injection is not None
            and injection.rank is not None
            and finding.rank is not None
            and finding.rank != injection.rank
        ):
            continue
        if (
            injection is not None
            and finding.time is not None
            and finding.time < injection.time - CLOCK_SLACK_SECONDS
        ):
            continue
        hits.append(finding)
    return sorted(hits, key=lambda f: (f.time is None, f.time or 0.0))


def _steps(finding: Finding, injection: Injection | None) -> int | None:
    if injection is None or injection.step is None or finding.step is None:
        return None
    return max(finding.step - injection.step, 0)


def _seconds(finding: Finding, injection: Injection | None) -> float | None:
    if injection is None or finding.time is None:
        return None
    return max(finding.time - injection.time, 0.0)


def evidence_line(finding: Finding, limit: int = 110, *, strip: str | None = None) -> str:
    """One line for the scorecard: where the finding points, and its message."""
    where = _short_location(finding.location)
    actor = finding.actor or {}
    parts = []
    if where:
        parts.append(where)
    if finding.rule == "process.signal" and actor.get("pid") is not None:
        parts.append(f"sender pid {actor.get('pid')}")
    message = " ".join(finding.message.split())
    if strip:
        message = message.replace(strip.rstrip(os.sep) + os.sep, "")
    parts.append(message)
    text = ": ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_location(location: str | None) -> str:
    if not location:
        return ""
    path, sep, line = location.rpartition(":")
    if not sep or not line.isdigit():
        return PurePath(location).name
    return f"{PurePath(path).name}:{line}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""
