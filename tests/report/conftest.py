"""Fixtures of the report tests: run directories built directly in a ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.ledgers import build_run


@pytest.fixture
def sabotaged_run(tmp_path: Path) -> Path:
    """A 2-rank run with telemetry, an injected gradient sabotage, a rollback and a kill."""
    return build_run(tmp_path / "run")


@pytest.fixture
def bare_run(tmp_path: Path) -> Path:
    """A run recorded before the step/replica/env telemetry existed, with no findings."""
    return build_run(tmp_path / "bare", telemetry=False, sabotage=False)


@pytest.fixture(scope="session")
def guarded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-process gloo job under the guard, writing its ledger, with an injected
    delay: rank 1 sleeps 30 ms per step as if the job were large (the insider's gate).

    Returns the run directory (``<out>/run``, where ``ledger.sqlite`` is).
    """
    from tests.guard.jobs.runner import run_job

    out = tmp_path_factory.mktemp("guarded")
    results = run_job(
        out, 2, ["--sabotage", "sleep_large", "--steps", "30"], env={"FAKE_WORLD_SIZE": "512"}
    )
    kinds = {f["kind"] for r in results for f in r["findings"]}
    assert "delay.injected" in kinds, f"the guard did not catch the injected sleep: {kinds}"
    return out / "run"
