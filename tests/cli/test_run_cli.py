"""`trainguard run`: exit codes, the job's environment, and exits recorded in the ledger."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.guard.harness import ledger_backend
from trainguard.cli import main

pytestmark = pytest.mark.timeout(120)


def trainguard_run(run_dir: Path, code: str, monkeypatch: Any, *extra: str) -> int:
    with ledger_backend(monkeypatch):
        return main(["run", "--run-dir", str(run_dir), *extra, "--", sys.executable, "-c", code])


def test_clean_job_exits_0_and_sees_the_run(tmp_path: Path, monkeypatch: Any) -> None:
    run_dir = tmp_path / "run"
    seen = tmp_path / "env.json"
    code = (
        "import json, os; keys = ('TRAINGUARD_RUN_DIR', 'TRAINGUARD_RUN_ID'); "
        f"json.dump({{k: os.environ.get(k) for k in keys}}, open({str(seen)!r}, 'w'))"
    )
    assert trainguard_run(run_dir, code, monkeypatch) == 0
    env = json.loads(seen.read_text())
    assert env["TRAINGUARD_RUN_DIR"] == str(run_dir.resolve())
    assert env["TRAINGUARD_RUN_ID"]
    with ledger_backend(monkeypatch):
        assert main(["findings", str(run_dir)]) == 0


def test_failing_job_keeps_its_exit_code(tmp_path: Path, monkeypatch: Any) -> None:
    assert trainguard_run(tmp_path / "run", "raise SystemExit(3)", monkeypatch) == 3


def test_sigkilled_job_is_process_killed(
    tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert trainguard_run(run_dir, code, monkeypatch) == 128 + 9
    assert "1 finding(s)" in capsys.readouterr().err
    with ledger_backend(monkeypatch):
        assert main(["findings", str(run_dir), "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    [finding] = body["findings"]
    assert finding["kind"] == "process.killed"
    assert finding["evidence"]["signal"] == "SIGKILL"
    assert finding["evidence"]["observed_by"] == "supervisor"


def test_missing_command_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give the job's command after --" in err[0]


def test_unstartable_command_is_a_usage_error(
    tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with ledger_backend(monkeypatch):
        rc = main(["run", "--run-dir", str(tmp_path / "run"), "--", str(tmp_path / "nope")])
    assert rc == 2
    assert "cannot start" in capsys.readouterr().err
