"""`trainguard findings RUN_DIR`: formats, --fail-on, and input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import trainguard.guard.supervisor as sup
from tests.guard.harness import ledger_backend
from trainguard.cli import main
from trainguard.core.findings import Finding, Severity


def make_run(tmp_path: Path, monkeypatch: Any) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with ledger_backend(monkeypatch):
        ledger = sup.open_run_ledger(sup.default_ledger(run_dir))
        for rule, severity, rank in (
            ("seed.tampered", Severity.HIGH, 1),
            ("process.signal", Severity.MEDIUM, 0),
        ):
            finding = Finding(
                rule=rule,
                severity=severity,
                message=f"{rule} here",
                rank=rank,
                step=3,
                location="train.py:7",
            )
            ledger.append(
                "finding", finding.to_dict(), run="r1", rank=rank, host="h", pid=1, time=1.0
            )
        ledger.append("heartbeat", {"step": 3}, run="r1", rank=0, host="h", pid=1, time=1.0)
        close = getattr(ledger, "close", None)
        if callable(close):
            close()
    return run_dir


def test_text_json_sarif_and_fail_on(
    tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path, monkeypatch)
    with ledger_backend(monkeypatch):
        assert main(["findings", str(run_dir)]) == 1  # default --fail-on high
        text = capsys.readouterr().out
        assert "seed.tampered" in text and "train.py:7" in text and "2 finding(s)" in text
        assert main(["findings", str(run_dir), "--fail-on", "critical"]) == 0
        capsys.readouterr()
        assert main(["findings", str(run_dir), "--format", "json", "--kind", "seed.tampered"]) == 1
        body = json.loads(capsys.readouterr().out)
        assert [f["kind"] for f in body["findings"]] == ["seed.tampered"]
        assert body["findings"][0]["ledger"]["run"] == "r1"
        assert body["summary"]["high"] == 1
        assert main(["findings", str(run_dir), "--format", "sarif", "--fail-on", "medium"]) == 1
        sarif = json.loads(capsys.readouterr().out)
        assert len(sarif["runs"][0]["results"]) == 2
        assert main(["findings", str(run_dir), "--run", "other"]) == 0


def test_missing_run_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["findings", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run directory" in err[0]


def test_run_dir_without_ledger_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["findings", str(tmp_path)]) == 2
    assert "no ledger.sqlite" in capsys.readouterr().err
