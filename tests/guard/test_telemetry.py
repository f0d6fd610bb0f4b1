"""Run telemetry (``step``, ``env.summary``), environment defaults and the ledger sink."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.factories.guard_training import tiny_model, train
from trainguard.guard import watch
from trainguard.guard.sink import LedgerSink, MemorySink
from trainguard.guard.telemetry import relevant_variables


def _events(sink: MemorySink, kind: str) -> list[dict[str, object]]:
    return [payload for k, payload in sink.events if k == kind]


def test_step_events_carry_time_loss_and_grad_norm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sink = MemorySink()
    expected_norms: dict[int, float] = {}
    losses: dict[int, float] = {}
    settings = {"grad_norm_every": 3, "telemetry_flush": 4}
    with watch(model, opt, run_dir=tmp_path, sink=sink, settings=settings) as guard:
        for step in range(1, 12):
            x = torch.randn(16, 8)
            loss = F.mse_loss(model(x), torch.zeros(16, 4))
            opt.zero_grad()
            loss.backward()
            grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            expected_norms[step] = float(torch.linalg.vector_norm(grads.double()))
            opt.step()
            if step == 10:
                guard.observe(loss=loss, grad_norm=123.5)  # the job's own clip_grad_norm_
            else:
                guard.observe(loss=loss)
            losses[step] = float(loss.detach())
    steps = _events(sink, "step")
    assert [e["step"] for e in steps] == list(range(1, 12))
    assert steps[0]["seconds"] is None
    assert all(isinstance(e["seconds"], float) and e["seconds"] > 0 for e in steps[1:])
    assert all(e["loss"] == pytest.approx(losses[int(e["step"])]) for e in steps)
    for e in steps:
        n = int(e["step"])
        if n == 10:
            assert e["grad_norm"] == 123.5
        elif n % 3 == 0:
            assert e["grad_norm"] == pytest.approx(expected_norms[n], rel=1e-5)
        else:
            assert e["grad_norm"] is None


def test_non_finite_loss_is_kept_as_text(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sink = MemorySink()
    with watch(model, opt, run_dir=tmp_path, sink=sink) as guard:
        opt.zero_grad()
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
        guard.observe(loss=torch.tensor(float("nan")))
    assert _events(sink, "step")[0]["loss"] == "nan"


def test_step_events_can_be_switched_off(tmp_path: Path) -> None:
    _, sink = train(tmp_path, 5, optim="sgd", settings={"step_events": False})
    assert _events(sink, "step") == []


def test_env_summary_once_with_versions_and_redacted_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_SHOW_CPP_STACKTRACES", "1")
    monkeypatch.setenv("TRAINGUARD_UPLOAD_TOKEN", "hunter2")
    monkeypatch.setenv("HOME_UNRELATED", "x")
    _, sink = train(tmp_path, 3, optim="sgd")
    (summary,) = _events(sink, "env.summary")
    assert summary["torch"] == torch.__version__
    packages = summary["packages"]
    assert isinstance(packages, dict) and "torch" in packages
    variables = summary["variables"]
    assert isinstance(variables, dict)
    assert variables["TORCH_SHOW_CPP_STACKTRACES"] == "1"
    assert variables["TRAINGUARD_UPLOAD_TOKEN"] == "<redacted>"
    assert "HOME_UNRELATED" not in variables
    assert isinstance(summary["startup"], list)
    assert summary["git"] is None or "commit" in summary["git"] or "error" in summary["git"]
    _, quiet = train(tmp_path / "off", 3, optim="sgd", settings={"env_summary": False})
    assert _events(quiet, "env.summary") == []


def test_relevant_variables_picks_loader_and_torch_settings() -> None:
    env = {"LD_PRELOAD": "/tmp/x.so", "CUDA_VISIBLE_DEVICES": "0", "AWS_SECRET_KEY": "k"}
    assert relevant_variables(env) == {"CUDA_VISIBLE_DEVICES": "0", "LD_PRELOAD": "/tmp/x.so"}


def test_run_dir_and_ledger_default_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "from-env"
    ledger_path = tmp_path / "elsewhere.sqlite"
    monkeypatch.setenv("TRAINGUARD_RUN_DIR", str(run_dir))
    monkeypatch.setenv("TRAINGUARD_LEDGER", f"sqlite:///{ledger_path}")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = watch(model, opt)
    try:
        assert guard.run_dir == run_dir and run_dir.is_dir()
        inner = guard._sink.inner
        assert isinstance(inner, LedgerSink)
        assert inner.url == f"sqlite:///{ledger_path}"
        with pytest.raises(AttributeError):
            inner.ledger = None  # type: ignore[misc]
    finally:
        guard.close()
    assert ledger_path.exists() and not (run_dir / "ledger.sqlite").exists()
    explicit = watch(model, opt, run_dir=tmp_path / "explicit", ledger=None, sink=MemorySink())
    explicit.close()
    assert explicit.run_dir == tmp_path / "explicit"


def test_ledger_property_reads_back_what_the_guard_wrote(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = watch(model, opt, run_dir=tmp_path, telemetry_flush=1)
    try:
        inner = guard._sink.inner
        assert isinstance(inner, LedgerSink)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
            guard.observe(loss=1.5)
        kinds = [e.kind for e in inner.ledger.events(run=guard.run_id)]
        assert "run.start" in kinds
        assert kinds.count("step") == 2  # the newest step waits for its loss
    finally:
        guard.close()


def test_in_process_tests_leave_out_process_permanent_monitors(tmp_path: Path) -> None:
    _, sink = train(tmp_path, 2, optim="sgd")
    started = next(payload for kind, payload in sink.events if kind == "run.start")
    monitors = started["monitors"]
    assert isinstance(monitors, list)
    assert "audit" not in monitors and "signals" not in monitors and "timing" in monitors
