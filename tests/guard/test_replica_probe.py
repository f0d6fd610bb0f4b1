"""The replica self-check's probe, in process: what a write between the optimizer's
post-step and the next pre-step leaves on record (the 2-rank tie-break relies on it)."""

from __future__ import annotations

import torch

from tests.factories.guard_training import guard_context
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.replicas import ReplicaMonitor


def _monitor(model: torch.nn.Module) -> tuple[ReplicaMonitor, GuardContext]:
    ctx = guard_context(model)
    monitor = ReplicaMonitor()
    monitor.start(ctx)
    assert monitor.enabled
    return monitor, ctx


def _record(monitor: ReplicaMonitor) -> list[float]:
    """Per parameter: 1 = sampled values changed, 2 = version counter changed (summed)."""
    return monitor._outside_record(torch.device("cpu")).tolist()


def _interval(monitor: ReplicaMonitor, ctx: GuardContext, write: object) -> list[float]:
    ctx.step += 1  # the post-step hook runs with the step just taken counted
    monitor.after_step(ctx)
    write()  # type: ignore[operator]
    monitor.before_step(ctx)  # the pre-step of the next one
    return _record(monitor)


def test_untouched_parameters_leave_no_record() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    monitor, ctx = _monitor(model)
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))  # a NaN left as it is is no change
    assert _interval(monitor, ctx, lambda: None) == [0.0, 0.0, 0.0, 0.0]
    assert monitor.changed_at is None


def test_write_through_data_is_seen_by_value() -> None:
    """``.data`` has its own version counter: only the sampled values show the write."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    monitor, ctx = _monitor(model)
    record = _interval(monitor, ctx, lambda: model[0].weight.data.mul_(1.5))
    assert record == [1.0, 0.0, 0.0, 0.0]


def test_in_place_write_is_seen_by_version() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    monitor, ctx = _monitor(model)

    def write() -> None:
        with torch.no_grad():
            model[1].weight.add_(1.0)

    record = _interval(monitor, ctx, write)
    assert record[2] == 3.0 and record[:2] == [0.0, 0.0]  # values and version
    assert monitor.changed_at == 2  # seen at the pre-step of step 2


def test_rebinding_data_rebuilds_the_views_and_is_seen() -> None:
    """``p.data = other`` moves the storage: cached views would read the old one."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    monitor, ctx = _monitor(model)
    weight = model[0].weight

    def rebind() -> None:
        weight.data = torch.randn_like(weight)

    assert _interval(monitor, ctx, rebind)[0] == 1.0
    # later intervals read the new storage: a further .data write is still seen
    monitor._changed = None
    assert _interval(monitor, ctx, lambda: weight.data.zero_())[0] == 1.0
