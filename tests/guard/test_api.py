"""The Guard's interface in a single process: hooks, observe, close, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.factories.guard_training import tiny_model, train
from trainguard.core.errors import GuardError
from trainguard.core.findings import Severity
from trainguard.guard import active_guard, watch, watch_dataloader
from trainguard.guard.sink import MemorySink


def test_clean_single_process_run_is_silent(tmp_path: Path) -> None:
    guard, sink = train(tmp_path, 40, optim="adam", settings={"audit_every": 2})
    assert guard.step == 40
    serious = [f for f in sink.findings if f.severity.at_least(Severity.MEDIUM)]
    assert serious == [], [f.message for f in serious]
    kinds = {k for k, _ in sink.events}
    assert {"run.start", "run.close", "timing.window", "optimizer_audit"} <= kinds


def test_hooks_are_instance_hooks_and_removed_on_close(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = watch(model, opt, run_dir=tmp_path, sink=MemorySink())
    assert active_guard() is guard
    assert len(opt._optimizer_step_pre_hooks) >= 1
    guard.close()
    guard.close()  # idempotent
    assert len(opt._optimizer_step_pre_hooks) == 0
    assert active_guard() is None


def test_context_manager_and_observe_accept_plain_numbers(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run_dir=tmp_path, sink=MemorySink()) as guard:
        guard.observe(loss=1.0, accuracy=0.5)
        assert guard.ctx.observed["accuracy"] == 0.5
    assert guard.monitor("timing") is not None


def test_bad_arguments_raise_guard_error(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GuardError, match=r"torch\.nn\.Module"):
        watch("not a model", opt, run_dir=tmp_path, sink=MemorySink())
    with pytest.raises(GuardError, match="Optimizer"):
        watch(model, object(), run_dir=tmp_path, sink=MemorySink())
    with pytest.raises(GuardError, match="unknown guard setting 'monitors_x'"):
        watch(model, opt, run_dir=tmp_path, sink=MemorySink(), monitors_x=1)
    with pytest.raises(GuardError, match="unknown guard monitor 'nope'"):
        watch(model, opt, run_dir=tmp_path, sink=MemorySink(), exclude_monitors=["nope"])


def test_watch_dataloader_needs_a_guard() -> None:
    with pytest.raises(GuardError, match="watch"):
        watch_dataloader([1, 2, 3])


def test_monitor_selection(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(
        model,
        opt,
        run_dir=tmp_path,
        sink=MemorySink(),
        monitors=None,
        settings={"monitors": ["timing"]},
    ) as g:
        assert [m.name for m in g.monitors] == ["timing"]


class _Brittle:
    """A check that raises from its third step on (what a provoked exception looks like)."""

    name = "brittle"

    def start(self, ctx: object) -> None:
        self.calls = 0

    def close(self, ctx: object) -> None:
        pass

    def before_step(self, ctx: object) -> None:
        pass

    def after_step(self, ctx: object) -> None:
        self.calls += 1
        if self.calls >= 3:
            raise ValueError("odd optimizer state")


def test_a_check_that_raises_is_reported_once_and_training_goes_on(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with watch(model, opt, run_dir=tmp_path, sink=sink, monitors=[_Brittle]) as guard:
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
    assert guard.step == 6
    failed = [f for f in sink.findings if f.rule == "guard.disabled"]
    assert len(failed) == 1, [f.message for f in failed]
    assert failed[0].severity is Severity.HIGH and failed[0].step == 3
    assert failed[0].evidence["monitor"] == "brittle"
    assert "ValueError: odd optimizer state" in failed[0].evidence["error"]
