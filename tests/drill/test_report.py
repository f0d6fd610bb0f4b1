"""Judging a scenario from its findings (pure: no job runs here)."""

from __future__ import annotations

from trainguard.core.findings import Finding, Severity
from trainguard.drill.report import Injection, Outcome, RunFacts, evidence_line, judge
from trainguard.drill.scenarios import CLEAN, SABOTAGES

REPLICA = next(s for s in SABOTAGES if s.name == "replica-corruption")
BACKDOOR = next(s for s in SABOTAGES if s.name == "backdoored-checkpoint")
INJECTED = Injection(time=1000.0, step=5, rank=1, what="weights scaled")


def finding(kind: str, t: float, step: int | None = 10, **kw: object) -> Finding:
    return Finding(
        rule=kind,
        severity=kw.pop("severity", Severity.CRITICAL),  # type: ignore[arg-type]
        message=str(kw.pop("message", f"{kind} seen")),
        step=step,
        time=t,
        **kw,  # type: ignore[arg-type]
    )


def facts(injection: Injection | None = INJECTED, **kw: object) -> RunFacts:
    return RunFacts(job_code=kw.pop("job_code", 0), seconds=3.0, injection=injection, **kw)  # type: ignore[arg-type]


def test_expected_kind_after_injection_is_caught_with_delays() -> None:
    rows = [
        finding("loss.anomaly", 1001.0, severity=Severity.MEDIUM),
        finding("replica.divergence", 1002.5, step=15, location="/tmp/x/job/team_utils.py:12"),
        finding("replica.divergence", 1003.0, step=20),
    ]
    result = judge(REPLICA, rows, facts())
    assert result.outcome is Outcome.CAUGHT
    assert result.kind == "replica.divergence"
    assert result.steps_to_detection == 10
    assert result.seconds_to_detection == 2.5
    assert result.evidence.startswith("team_utils.py:12: ")
    assert result.kinds_seen == {"loss.anomaly": 1, "replica.divergence": 2}


def test_expected_kind_only_before_injection_is_not_a_detection() -> None:
    rows = [finding("replica.divergence", 990.0), finding("grad.anomaly", 1002.0)]
    result = judge(REPLICA, rows, facts())
    assert result.outcome is Outcome.MISSED
    assert "no replica.divergence finding after the injection" in result.evidence
    assert "grad.anomaly" in result.evidence


def test_no_finding_is_missed_and_no_injection_is_an_error() -> None:
    assert judge(REPLICA, [], facts()).outcome is Outcome.MISSED
    never = judge(REPLICA, [], facts(None, job_code=1, log_tail="boom\nImportError: x\n"))
    assert never.outcome is Outcome.ERROR
    assert "never fired" in never.evidence and "ImportError: x" in never.evidence


def test_backdoor_whose_payload_ran_is_missed_even_with_a_finding() -> None:
    rows = [finding("load.unsafe_global", 1000.1)]
    assert judge(BACKDOOR, rows, facts()).outcome is Outcome.CAUGHT
    ran = judge(BACKDOOR, rows, facts(payload_ran=True))
    assert ran.outcome is Outcome.MISSED
    assert "payload ran" in ran.evidence


def test_control_run_medium_finding_is_a_false_alarm_low_is_not() -> None:
    low = [finding("host.removed_entry", 5.0, severity=Severity.LOW)]
    assert judge(CLEAN, low, facts(None)).outcome is Outcome.CLEAN
    medium = [*low, finding("step.slowdown", 6.0, severity=Severity.MEDIUM)]
    alarm = judge(CLEAN, medium, facts(None))
    assert alarm.outcome is Outcome.FALSE_ALARM
    assert alarm.kind == "step.slowdown"
    assert not alarm.outcome.passed
    failed = judge(CLEAN, [], facts(None, job_code=1))
    assert failed.outcome is Outcome.ERROR


def test_evidence_names_the_sender_and_strips_the_drill_root() -> None:
    row = finding(
        "process.signal",
        1.0,
        message="SIGTERM sent to rank 1 from /tmp/root/sigterm/job/x.py",
        actor={"pid": 4242},
    )
    line = evidence_line(row, strip="/tmp/root")
    assert line == "sender pid 4242: SIGTERM sent to rank 1 from sigterm/job/x.py"
    assert len(evidence_line(finding("a.b", 1.0, message="x" * 500))) == 110


def test_finding_that_blames_another_rank_is_not_a_detection() -> None:
    hung = next(s for s in SABOTAGES if s.name == "hung-rank")
    wrong = finding("rank.hang", 1004.0, rank=0)
    assert judge(hung, [wrong], facts()).outcome is Outcome.MISSED
    right = finding("rank.hang", 1004.5, rank=1, location="/x/team_utils.py:9")
    result = judge(hung, [wrong, right], facts())
    assert result.outcome is Outcome.CAUGHT and result.seconds_to_detection == 4.5
