"""Severity/Verdict ordering and the Finding wire format other tools rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainguard.core.findings import (
    FINDING_KINDS,
    FileReport,
    Finding,
    Severity,
    Verdict,
    any_at_least,
    scan_summary,
    worst_severity,
)


def test_severity_order_is_low_to_critical() -> None:
    ordered = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    assert [s.level for s in ordered] == sorted(s.level for s in ordered)
    assert Severity.HIGH.at_least(Severity.MEDIUM)
    assert not Severity.LOW.at_least(Severity.MEDIUM)


@pytest.mark.parametrize(
    ("verdict", "fail_on", "fails"),
    [
        (Verdict.SAFE, Verdict.UNKNOWN, False),
        (Verdict.UNKNOWN, Verdict.UNKNOWN, True),
        (Verdict.UNKNOWN, Verdict.MALICIOUS, False),
        (Verdict.MALICIOUS, Verdict.MALICIOUS, True),
        (Verdict.ERROR, Verdict.MALICIOUS, True),  # unscannable always fails
        (Verdict.ERROR, Verdict.UNKNOWN, True),
    ],
)
def test_verdict_fail_threshold(verdict: Verdict, fail_on: Verdict, fails: bool) -> None:
    assert verdict.fails(fail_on) is fails


def test_worst_verdict_combines_parts() -> None:
    assert Verdict.worst([]) is Verdict.SAFE
    assert Verdict.worst([Verdict.SAFE, Verdict.UNKNOWN]) is Verdict.UNKNOWN
    assert Verdict.worst([Verdict.MALICIOUS, Verdict.UNKNOWN, Verdict.SAFE]) is Verdict.MALICIOUS


def test_scan_dict_matches_design_contract() -> None:
    finding = Finding(
        rule="pickle.dangerous_global",
        severity=Severity.CRITICAL,
        message="os.system is reachable",
        member="archive/data.pkl",
        global_name="os.system",
        offset=17,
    )
    report = FileReport(
        path="m.pt", format="torch-zip", verdict=Verdict.MALICIOUS, findings=(finding,)
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data == {
        "path": "m.pt",
        "format": "torch-zip",
        "verdict": "malicious",
        "findings": [
            {
                "rule": "pickle.dangerous_global",
                "severity": "critical",
                "message": "os.system is reachable",
                "member": "archive/data.pkl",
                "global": "os.system",
                "offset": 17,
            }
        ],
    }
    assert scan_summary([report]) == {"safe": 0, "unknown": 0, "malicious": 1, "error": 0}


def test_runtime_finding_round_trips_through_dict() -> None:
    finding = Finding(
        rule="rank.straggler",
        severity=Severity.HIGH,
        message="rank 3 is 2.1x slower",
        rank=3,
        step=40,
        time=1.5,
        location="train.py:88",
        actor={"pid": 10, "uid": 1000},
        evidence={"ratio": 2.1},
    )
    assert Finding.from_dict(json.loads(json.dumps(finding.to_dict()))) == finding


def test_threshold_helpers() -> None:
    low = Finding(rule="x", severity=Severity.LOW, message="m")
    high = Finding(rule="y", severity=Severity.HIGH, message="m")
    assert worst_severity([]) is None
    assert worst_severity([low, high]) is Severity.HIGH
    assert any_at_least([low, high], Severity.MEDIUM)
    assert not any_at_least([low], Severity.MEDIUM)


def test_design_kinds_are_documented() -> None:
    """Every kind DESIGN.md names is in the table, and the docs page lists every kind."""
    design_kinds = {
        "step.slowdown",
        "rank.straggler",
        "delay.injected",
        "replica.divergence",
        "grad.rank_outlier",
        "grad.anomaly",
        "loss.anomaly",
        "code.tampered",
        "seed.tampered",
        "data.order_changed",
        "step.rollback",
        "weights.tampered",
        "load.unsafe_global",
        "process.signal",
        "process.killed",
        "rank.hang",
        "env.modified_file",
        "env.startup_injection",
        "host.new_entry",
        "guard.disabled",
    }
    assert design_kinds <= set(FINDING_KINDS)
    doc = (Path(__file__).parents[2] / "docs" / "finding-kinds.md").read_text(encoding="utf-8")
    missing = [kind for kind in FINDING_KINDS if f"`{kind}`" not in doc]
    assert not missing, f"docs/finding-kinds.md lacks {missing}"
