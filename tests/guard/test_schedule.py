"""The gradient fingerprint schedule: shared by the ranks, keyed by a per-run secret."""

from __future__ import annotations

from pathlib import Path

import torch

from trainguard.guard.base import GuardContext
from trainguard.guard.checks.gradients import GradientMonitor
from trainguard.guard.settings import GuardSettings
from trainguard.guard.sink import MemorySink


def _schedule(secret: int, steps: int = 200, **overrides: object) -> list[int]:
    """Steps a monitor with ``secret`` measures norms on (no hooks are installed)."""
    settings = GuardSettings.build(None, overrides).to_dict()
    settings["_secret"] = secret
    ctx = GuardContext(
        run_id="r",
        run_dir=Path("."),
        rank=0,
        world_size=1,
        sink=MemorySink(),
        model=torch.nn.Linear(2, 2),
        settings=settings,
    )
    monitor = GradientMonitor()
    monitor.start(ctx)  # world size 1: disabled, but the schedule is defined
    chosen = []
    for step in range(steps):
        ctx.step = step
        if monitor.scheduled():
            chosen.append(step + 1)
    return chosen


def test_same_secret_same_steps_on_every_rank() -> None:
    assert _schedule(12345) == _schedule(12345)


def test_two_of_every_five_steps_and_secret_dependent() -> None:
    steps = _schedule(7)
    assert len(steps) == 2 * 200 // 5
    for window in range(40):
        inside = [s for s in steps if window * 5 < s <= window * 5 + 5]
        assert len(inside) == 2
    assert _schedule(8) != steps  # another run, another schedule


def test_every_step_when_asked() -> None:
    assert _schedule(7, steps=20, grad_fingerprint_steps=5) == list(range(1, 21))
