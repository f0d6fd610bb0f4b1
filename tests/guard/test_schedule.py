"""The gradient fingerprint schedule: shared by the ranks, keyed by a per-run secret."""

from __future__ import annotations

from typing import Any

import torch

from tests.factories.guard_training import guard_context
from trainguard.guard.checks.gradients import GradientMonitor
from trainguard.guard.sink import MemorySink


def _schedule(secret: int, steps: int = 200, **overrides: Any) -> list[int]:
    """Steps a monitor with ``secret`` measures norms on (no hooks are installed)."""
    ctx = guard_context(torch.nn.Linear(2, 2), world=1, **overrides)
    ctx.settings["_secret"] = secret
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


class _BrokenBucket:
    """A DDP bucket whose layout cannot be read (what a failing fingerprint meets)."""

    def parameters(self) -> list[torch.Tensor]:
        raise RuntimeError("bucket layout unavailable")


def test_a_failing_comm_hook_fingerprint_is_reported_once_not_hidden() -> None:
    ctx = guard_context(torch.nn.Linear(2, 2), rank=1)
    sink = ctx.sink
    assert isinstance(sink, MemorySink)
    monitor = GradientMonitor()
    monitor.start(ctx)  # no process group: no hook installed, the callback is driven here
    monitor.enabled = True
    for _ in range(3):
        monitor.on_bucket(_BrokenBucket())  # must not raise into DDP's all-reduce
    failed = [f for f in sink.findings if f.rule == "guard.disabled"]
    assert len(failed) == 1
    assert failed[0].rank == 1 and failed[0].evidence["where"] == "the DDP comm hook"
    assert "bucket layout unavailable" in failed[0].message
