"""data.order_changed: a resumed run sees its data in another order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guard.harness import findings, launch, of_kind

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def run(tmp_path: Path, name: str, seed: int, run_dir: Path) -> Path:
    out = tmp_path / name
    job = launch(
        out,
        2,
        ["--steps", "12", "--shuffle-seed", str(seed)],
        env={"TRAINGUARD_RUN_DIR": str(run_dir), "TRAINGUARD_RUN_ID": name},
    )
    assert job.wait(timeout=120) == [0, 0], job.logs()
    return out


def test_resume_with_changed_sampler_is_caught_and_same_order_passes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run(tmp_path, "first", 1, run_dir)
    assert findings(first) == []
    same = run(tmp_path, "same", 1, run_dir)  # resume, same sampler seed
    assert of_kind(findings(same), "data.order_changed") == []
    changed = run(tmp_path, "changed", 2, run_dir)  # the shared sampler code changed the seed
    rows = of_kind(findings(changed), "data.order_changed")
    assert {r["rank"] for r in rows} == {0, 1}
    # One finding per rank and epoch (12 steps = 2 epochs of 6 batches), each naming
    # the first differing batch.
    assert sorted((r["rank"], r["evidence"]["epoch"]) for r in rows) == [
        (0, 0), (0, 1), (1, 0), (1, 1)
    ]  # fmt: skip
    for row in rows:
        assert row["evidence"]["batch"] == 0
        assert row["evidence"]["recorded_run"] == "first"
        assert row["evidence"]["recorded"] != row["evidence"]["observed"]
    first_epoch = [r for r in rows if r["evidence"]["epoch"] == 0]
    assert all(r["step"] == 0 for r in first_epoch)  # seen before the first step
