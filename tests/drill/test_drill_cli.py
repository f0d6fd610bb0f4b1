"""`trainguard drill`: the full drill, `--only` and JSON shape, weakened detection, bad input.

The full drill starts about fourteen 2-process gloo jobs and takes a few minutes on
two CPU cores; every job is bounded by the drill's per-scenario deadline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainguard.cli import main
from trainguard.drill.report import DrillReport, Outcome, ScenarioResult
from trainguard.drill.scenarios import SABOTAGES

RESULT_KEYS = {
    "name",
    "move",
    "outcome",
    "passed",
    "expected",
    "kind",
    "steps_to_detection",
    "seconds_to_detection",
    "evidence",
    "seconds",
    "kinds_seen",
    "run_dir",
}


def drill_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["drill", "--format", "json", "--no-progress", *args])
    return code, json.loads(capsys.readouterr().out)


def test_unknown_only_name_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--only", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trainguard: error: --only nope: no such sabotage; choose from ")


def test_list_names_every_sabotage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["scenarios"]
    assert [r["name"] for r in rows] == ["clean", *(s.name for s in SABOTAGES)]
    assert all(set(r) == {"name", "move", "how", "expected"} for r in rows)
    assert main(["drill", "--list"]) == 0
    assert "weights.tampered" in capsys.readouterr().out


def fake_report(outcome: Outcome) -> DrillReport:
    def row(name: str, result: Outcome, kind: str | None, evidence: str) -> ScenarioResult:
        return ScenarioResult(
            name=name,
            move=name,
            outcome=result,
            expected=(),
            kind=kind,
            steps_to_detection=None if kind is None else 3,
            seconds_to_detection=None if kind is None else 0.25,
            evidence=evidence,
        )

    return DrillReport(
        clean=row("clean", Outcome.CLEAN, None, "no findings"),
        scenarios=(row("rollback", outcome, "step.rollback", "Rank 0 resumes from ckpt-15.pt"),),
        seconds=12.0,
        nproc=2,
        device="cpu",
    )


@pytest.mark.parametrize(("outcome", "code"), [(Outcome.CAUGHT, 0), (Outcome.MISSED, 1)])
def test_text_scorecard_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: Outcome, code: int
) -> None:
    """The scorecard's text form and the exit code, without running jobs."""
    import trainguard.drill

    monkeypatch.setattr(
        trainguard.drill, "run_drill", lambda options, observer: fake_report(outcome)
    )
    out = tmp_path / "card.txt"
    assert main(["drill", "--only", "rollback", "-o", str(out)]) == code
    text = out.read_text()
    rollback = next(line for line in text.splitlines() if "rollback" in line)
    for cell in (outcome.value, "step.rollback", "3", "0.25", "Rank 0 resumes from ckpt-15.pt"):
        assert cell in rollback
    verdict = "PASSED: 1/1" if code == 0 else "FAILED: 0/1 sabotage(s) caught; not caught: rollback"
    assert verdict in text


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_drill_catches_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, body = drill_json(capsys)
    rows = {r["name"]: r for r in body["scenarios"]}
    assert body["clean"]["outcome"] == "clean", body["clean"]
    assert {n: r["outcome"] for n, r in rows.items()} == {s.name: "caught" for s in SABOTAGES}
    for scenario in SABOTAGES:
        row = rows[scenario.name]
        assert row["kind"] in scenario.expected, row
        assert row["seconds_to_detection"] is not None and row["seconds_to_detection"] >= 0
    assert rows["hung-rank"]["evidence"].startswith("team_utils.py:")
    assert body["summary"] == {"caught": 13, "missed": 0, "error": 0, "false_alarm": 0}
    assert body["passed"] is True and code == 0


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_only_runs_the_named_sabotages_and_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = tmp_path / "kept"
    code, body = drill_json(
        capsys, "--only", "rollback", "--only", "reseeding", "--keep", str(keep)
    )
    assert set(body) == {
        "passed", "seconds", "nproc", "device", "excluded_monitors", "clean", "scenarios",
        "summary", "root",
    }  # fmt: skip
    assert [r["name"] for r in body["scenarios"]] == ["reseeding", "rollback"]
    assert all(set(r) == RESULT_KEYS for r in (body["clean"], *body["scenarios"]))
    assert (body["nproc"], body["device"], body["root"]) == (2, "cpu", str(keep.resolve()))
    assert code == 0, body
    rollback = body["scenarios"][1]
    assert rollback["kind"] == "step.rollback" and rollback["outcome"] == "caught"
    # The kept run directory is a real guarded run: `trainguard findings` reads it.
    assert main(["findings", str(keep / "rollback" / "run"), "--kind", "step.rollback"]) == 1


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_weakened_detection_is_reported_missed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRAINGUARD_DRILL_EXCLUDE_MONITORS", "replicas")
    code, body = drill_json(capsys, "--only", "replica-corruption")
    (row,) = body["scenarios"]
    assert row["outcome"] == "missed", row
    assert row["kind"] is None and "no replica.divergence finding" in row["evidence"]
    assert body["excluded_monitors"] == ["replicas"]
    assert body["passed"] is False and code == 1
