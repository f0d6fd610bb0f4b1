"""``rank.straggler`` and the normal "rank 0 saves a checkpoint every N steps" loop.

Rank 0 spends tens of milliseconds serialising every fifth step while rank 1 waits for
it in the next all-reduce: that time is checkpointing, not a straggler. A real 2-rank
gloo job (tests/guard/jobs/train_job.py, ``--save-every``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.guard.jobs.runner import findings_of, run_job

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

SETTINGS = json.dumps({"monitors": ["timing", "lineage"], "straggler_windows": 2})


@pytest.mark.parametrize("save_with", ["guard", "torch"])
def test_rank0_saving_every_five_steps_is_not_a_straggler(tmp_path: Path, save_with: str) -> None:
    results = run_job(
        tmp_path,
        2,
        [
            "--memory-sink",
            "--steps",
            "40",
            "--save-every",
            "5",
            "--save-with",
            save_with,
            "--save-mb",
            "160",
            "--settings",
            SETTINGS,
        ],
    )
    saves = results[0]["save_seconds"]
    assert len(saves) == 8 and results[1]["save_seconds"] == []
    # A save must cost more than the straggler threshold (10 ms per step) over a 5-step
    # exchange, or this test would not exercise the case.
    assert sorted(saves)[len(saves) // 2] >= 0.05, saves
    assert findings_of(results, "rank.straggler") == []
    windows = results[0]["windows"]
    assert sum(w["breakdown_ms_per_step"].get("checkpoint", 0.0) for w in windows) > 0.0
