"""rank.hang names the rank asleep in its own code, not the peer waiting for it.

The waiting rank stops advancing first (it finished its step a second earlier and
entered the next collective), so for a moment it is the only stuck rank. A rule that
blames "the stuck rank while others advance" names the wrong rank there -- and with
``hang_action=kill`` the supervisor would end the job on that verdict. Both the in-job
peer and the supervisor must name the sleeper, whichever rank it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.guard.harness import findings, launcher_command, ledger_backend, of_kind
from trainguard.guard.heartbeat import hang_suspects
from trainguard.guard.supervisor import SupervisorConfig, supervise

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(200)]


def _beat(step: int, last: float, where: str, now: float) -> dict[str, Any]:
    return {"step": step, "last_step_time": last, "time": now, "stack_where": where}


def test_waiter_is_not_named_while_the_sleeper_still_looks_fresh() -> None:
    now = 1000.0
    beats = {0: _beat(3, now - 5.0, "torch", now), 1: _beat(3, now - 4.5, "user", now)}
    assert hang_suspects(beats, now, 4.8, 10.0) == []  # rank 0 waits; rank 1 not stuck yet
    later = now + 1.0
    beats = {0: _beat(3, now - 5.0, "torch", later), 1: _beat(3, now - 4.5, "user", later)}
    (hung, reason), *rest = hang_suspects(beats, later, 4.8, 10.0)
    assert hung == 1 and not rest and "wait inside torch" in reason


def test_waiter_deadlocked_in_torch_is_named_after_twice_the_timeout() -> None:
    now = 1000.0
    beats = {0: _beat(3, now - 9.0, "torch", now), 1: _beat(90, now, "user", now)}
    assert [h for h, _ in hang_suspects(beats, now, 4.0, 10.0)] == [0]
    beats[0]["last_step_time"] = now - 7.0
    assert hang_suspects(beats, now, 4.0, 10.0) == []


def test_every_rank_waiting_in_torch_is_a_job_hang() -> None:
    now = 1000.0
    beats = {0: _beat(3, now - 9.0, "torch", now), 1: _beat(3, now - 9.0, "trainguard", now)}
    assert [h for h, _ in hang_suspects(beats, now, 4.0, 10.0)] == [None]


@pytest.mark.parametrize("sleeper", [1, 0])
def test_sleeper_is_named_not_the_rank_waiting_in_the_collective(
    tmp_path: Path, monkeypatch: Any, sleeper: int
) -> None:
    out = tmp_path / "out"
    args = [
        "--steps",
        "2000",
        "--step-sleep",
        "0.02",
        "--scenario",
        "hang_after_peer",
        "--sabotage-rank",
        str(sleeper),
        "--settings",
        json.dumps({"exchange_every": 1000}),
    ]
    cfg = SupervisorConfig(
        run_dir=tmp_path / "run",
        command=launcher_command(out, 2, args),
        hang_seconds=4.0,
        stale_seconds=2.5,
        grace_seconds=3.0,
        hang_action="kill",
    )
    with ledger_backend(monkeypatch):
        result = supervise(cfg)
    waiter = 1 - sleeper
    hangs = [f for f in result.findings if f.rule == "rank.hang"]
    assert hangs, [f.to_dict() for f in result.findings]
    assert {f.rank for f in hangs} == {sleeper}, [f.message for f in hangs]
    assert hangs[0].evidence["where"][str(waiter)] == "torch"
    from_peers = of_kind(findings(out), "rank.hang")
    assert from_peers, (out / f"rank{waiter}.log").read_text()[-3000:]
    assert {f["rank"] for f in from_peers} == {sleeper}, [f["message"] for f in from_peers]
    assert {f["evidence"]["seen_by"] for f in from_peers} == {waiter}
    assert "proc_job.py" in (from_peers[0]["location"] or "")
