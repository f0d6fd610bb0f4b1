"""Runner helpers that need no job: tampering a checkpoint's tensor bytes, option checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainguard.core.errors import UsageError
from trainguard.drill.runner import (
    DrillOptions,
    alter_tensor_byte,
    excluded_monitors_from_env,
    read_injection,
    validate,
)


def test_alter_tensor_byte_changes_one_tensor_value(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    state = {"small": torch.zeros(2), "big": torch.arange(64, dtype=torch.float32)}
    torch.save(state, path)
    member = alter_tensor_byte(path)
    assert "/data/" in member
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["small"], state["small"])
    changed = (loaded["big"] != state["big"]).nonzero().flatten().tolist()
    assert len(changed) == 1


def test_read_injection_takes_the_earliest_and_all_ranks(tmp_path: Path) -> None:
    assert read_injection(tmp_path) is None
    for rank, t in ((0, 11.0), (1, 10.0)):
        row = {"rank": rank, "step": 5, "time": t, "what": "x"}
        (tmp_path / f"injected-rank{rank}.json").write_text(json.dumps(row))
    (tmp_path / "injected-rank2.json").write_text("{not json")
    first = read_injection(tmp_path)
    assert first is not None and first.time == 10.0 and first.step == 5 and first.rank is None


def test_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--nproc must be at least 2"):
        validate(DrillOptions(nproc=1))
    (tmp_path / "old").write_text("x")
    with pytest.raises(UsageError, match="is not empty"):
        validate(DrillOptions(keep=tmp_path))


def test_excluded_monitors_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_DRILL_EXCLUDE_MONITORS", " replicas, timing ,")
    assert excluded_monitors_from_env() == ("replicas", "timing")
