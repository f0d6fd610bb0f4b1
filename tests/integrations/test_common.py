"""The adapters' framework-free parts: run directory, optimizer unwrapping, the eager
closure, and the import behaviour without the frameworks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integrations.harness import REPO, job_env
from trainguard.core.errors import GuardError
from trainguard.integrations._common import real_optimizer, resolve_run_dir, watch_kwargs
from trainguard.integrations.closure import EagerClosure


def test_run_dir_argument_then_environment_then_framework_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINGUARD_RUN_DIR", raising=False)
    assert resolve_run_dir(None, str(tmp_path / "out")) == tmp_path / "out"
    monkeypatch.setenv("TRAINGUARD_RUN_DIR", str(tmp_path / "supervised"))
    assert resolve_run_dir(None, str(tmp_path / "out")) == tmp_path / "supervised"
    assert resolve_run_dir(tmp_path / "mine", str(tmp_path / "out")) == tmp_path / "mine"
    monkeypatch.delenv("TRAINGUARD_RUN_DIR")
    with pytest.raises(GuardError, match="no run directory"):
        resolve_run_dir(None, None)


def test_ledger_from_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_LEDGER", "postgresql://guard@db/ledger")
    assert watch_kwargs(None, {"audit_every": 5}, {"sample_hz": 50}) == {
        "ledger": "postgresql://guard@db/ledger",
        "settings": {"audit_every": 5},
        "sample_hz": 50,
    }
    assert watch_kwargs("sqlite:///x", None, {})["ledger"] == "sqlite:///x"
    monkeypatch.delenv("TRAINGUARD_LEDGER")
    assert watch_kwargs(None, None, {}) == {}


class HollowWrapper(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer subclass that only forwards."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer


class PrivateWrapper:
    """Like Lightning's LightningOptimizer: not an Optimizer, keeps it in ``_optimizer``."""

    def __init__(self, optimizer: Any) -> None:
        self._optimizer = optimizer


def test_real_optimizer_is_the_innermost_torch_optimizer() -> None:
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert real_optimizer(sgd) is sgd
    assert real_optimizer(HollowWrapper(sgd)) is sgd
    assert real_optimizer(PrivateWrapper(HollowWrapper(sgd))) is sgd
    with pytest.raises(GuardError, match="PrivateWrapper"):
        real_optimizer(PrivateWrapper(object()))


def _setup() -> tuple[torch.nn.Linear, torch.Tensor, list[float]]:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1), torch.randn(4, 3), []


@pytest.mark.parametrize("positional", [False, True])
def test_eager_closure_runs_before_later_pre_hooks(positional: bool) -> None:
    model, x, seen = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    eager = EagerClosure(opt)

    def later(optimizer: Any, args: Any, kwargs: Any) -> None:  # stands for the guard's hook
        grad = model.weight.grad
        seen.append(float(grad.abs().sum()) if grad is not None else -1.0)

    handle = opt.register_step_pre_hook(later)
    with torch.no_grad():  # the optimizer's caller may disable grad; the closure still works
        loss = opt.step(closure) if positional else opt.step(closure=closure)
    assert calls == [1]  # evaluated once, before `later`
    assert seen[0] > 0
    assert loss is not None and loss.requires_grad
    assert eager.evaluated == 1
    handle.remove()
    eager.remove()
    assert len(opt._optimizer_step_pre_hooks) == 0


def test_eager_closure_leaves_steps_without_closure_and_reevaluations_alone() -> None:
    model, x, _ = _setup()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    eager = EagerClosure(opt)
    opt.step(closure)
    with_hook = len(calls)
    eager.remove()

    # The same LBFGS step without the hook: same number of evaluations, same weights.
    calls.clear()
    plain = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4)

    def plain_closure() -> torch.Tensor:
        calls.append(1)
        plain.zero_grad()
        loss = reference(x).pow(2).mean()
        loss.backward()
        return loss

    plain.step(plain_closure)
    assert with_hook == len(calls) > 1
    assert torch.equal(model.weight, reference.weight)

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    eager = EagerClosure(sgd)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    sgd.step()  # no closure: nothing to do
    assert eager.evaluated == 0


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_trainguard_never_imports_the_frameworks() -> None:
    proc = _python(
        "import sys, trainguard, trainguard.integrations, trainguard.integrations.closure;"
        "bad = [m for m in ('transformers', 'accelerate', 'pytorch_lightning', 'lightning')"
        " if m in sys.modules]; print(bad)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("adapter", "blocked"),
    [("huggingface", ("transformers",)), ("lightning", ("pytorch_lightning", "lightning"))],
)
def test_missing_framework_is_a_clear_import_error(adapter: str, blocked: tuple[str, ...]) -> None:
    block = "".join(f"sys.modules[{name!r}] = None;" for name in blocked)
    proc = _python(
        f"import sys; {block}\n"
        "try:\n"
        f"    import trainguard.integrations.{adapter}\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc.name, '|', exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ImportError {blocked[0]} |"), proc.stdout
    assert f"trainguard.integrations.{adapter} needs" in proc.stdout
    assert "pip install 'trainguard[integrations]'" in proc.stdout
