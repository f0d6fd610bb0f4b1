"""guard.disabled: the guard switched off from inside the job is reported by the rank
itself, by its peers and by the supervisor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.guard.harness import findings, launcher_command, ledger_backend, of_kind
from trainguard.guard.supervisor import SupervisorConfig, supervise

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def test_hooks_removed_thread_stopped_guard_replaced(tmp_path: Path, monkeypatch: Any) -> None:
    out = tmp_path / "out"
    args = [
        "--steps", "40", "--step-sleep", "0.15", "--scenario", "disable",
        "--settings", json.dumps({"exchange_every": 1000}),
    ]  # fmt: skip
    cfg = SupervisorConfig(
        run_dir=tmp_path / "run",
        command=launcher_command(out, 4, args),
        hang_seconds=60.0,
        stale_seconds=2.5,
    )
    with ledger_backend(monkeypatch):
        result = supervise(cfg)
    assert result.job_code == 0, (out / "rank2.log").read_text()[-2000:]
    assert result.exit_code == 1  # the job succeeded, but the guard was disabled
    rows = of_kind(findings(out), "guard.disabled")
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_rank.setdefault(row["rank"], []).append(row)
    assert 0 not in by_rank  # the clean rank
    # rank 1 removed the optimizer hooks: it says so itself, and the peers repeat it.
    assert any("optimizer_hooks" in r["evidence"].get("broken", []) for r in by_rank[1])
    assert {r["evidence"]["seen_by"] for r in by_rank[1]} >= {1, 0}
    # rank 2 stopped its heartbeat thread: only the peers can tell.
    assert {r["evidence"]["seen_by"] for r in by_rank[2]} >= {0}
    # rank 3 replaced the Guard object in trainguard.guard.api.
    broken3 = {b for r in by_rank[3] for b in r["evidence"].get("broken", [])}
    assert {"guard_module", "guard_registered"} <= broken3
    sup = [f for f in result.findings if f.rule == "guard.disabled"]
    assert {f.rank for f in sup} >= {1, 2, 3}
    assert 0 not in {f.rank for f in sup}
