"""Run the integration test jobs in their own processes and read what they recorded.

The jobs attach the real guard, whose audit hook and signal mask last for the life of
the process: they must not run inside the test runner (see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("jobs")
HF_JOB = JOBS / "hf_job.py"
PL_JOB = JOBS / "pl_job.py"
TIMEOUT = 180


def require(*modules: str) -> None:
    """Skip the calling test module unless every module is installed.

    ``importlib.util.find_spec`` instead of ``pytest.importorskip``: the frameworks
    are only needed by the job processes, and importing them here would cost the
    test runner seconds and their global side effects (warning filters, loggers).
    """
    import importlib.util

    import pytest

    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            pytest.skip(
                f"{name} is not installed (pip install 'trainguard[integrations]')",
                allow_module_level=True,
            )


def job_env() -> dict[str, str]:
    """Offline, single-threaded, and not inside any supervised run of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def run_job(script: Path, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run a job to completion (bounded); return the summary it wrote."""
    out_flag = "--out" if script == HF_JOB else "--root"
    out = Path(args[args.index(out_flag) + 1])
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


def findings_cli(run_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """``trainguard findings RUN_DIR --format json``: exit code and findings."""
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard", "findings", str(run_dir), "--format", "json"],
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)["findings"]


def ledger_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of the run directory's ledger: ``{kind, payload, run, rank, seq}``."""
    from trainguard.guard.checks.ledger_view import event_fields
    from trainguard.ledger import open_ledger

    ledger = open_ledger(f"sqlite:///{run_dir / 'ledger.sqlite'}", create=False, readonly=True)
    try:
        return [event_fields(e) for e in ledger.events()]
    finally:
        ledger.close()


def payloads(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Payloads of the events of one kind."""
    return [e["payload"] for e in events if e["kind"] == kind]


def of_kind(findings: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Findings (CLI JSON form) of one kind."""
    return [f for f in findings if f["kind"] == kind]
