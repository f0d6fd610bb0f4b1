"""False alarms: clean runs of each example, five times, give nothing at medium or above."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard.guard.sink import ledger_opener

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUNS = 5


def _sink_args() -> list[str]:
    # The examples write to the run's ledger; without the ledger package they keep
    # findings in memory and report them through --report.
    return [] if ledger_opener() is not None else ["--memory-sink"]


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.timeout(300)
def test_plain_example_clean_five_times(tmp_path: Path) -> None:
    for i in range(RUNS):
        report = tmp_path / f"plain{i}.json"
        cmd = [
            sys.executable,
            str(EXAMPLES / "train_plain.py"),
            "--run-dir",
            str(tmp_path / f"run{i}"),
        ]
        _run([*cmd, "--steps", "80", "--report", str(report), *_sink_args()], tmp_path)
        findings = json.loads(report.read_text())
        serious = [f for f in findings if f["severity"] in ("medium", "high", "critical")]
        assert serious == [], f"run {i}: {[f['message'] for f in serious]}"


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_ddp_example_clean_five_times(tmp_path: Path) -> None:
    for i in range(RUNS):
        report = tmp_path / f"ddp{i}"
        cmd = [
            sys.executable,
            str(EXAMPLES / "train_ddp.py"),
            "--run-dir",
            str(tmp_path / f"run{i}"),
        ]
        _run([*cmd, "--steps", "60", "--report", str(report), *_sink_args()], tmp_path)
        for rank in (0, 1):
            findings = json.loads((report / f"rank{rank}.json").read_text())
            serious = [f for f in findings if f["severity"] in ("medium", "high", "critical")]
            assert serious == [], f"run {i} rank {rank}: {[f['message'] for f in serious]}"
