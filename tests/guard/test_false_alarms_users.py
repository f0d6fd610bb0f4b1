"""False alarms and blind spots reported by users (accelerate, Adam, checkpoints).

Each test reproduces a user's report with real torch (and the real framework where
one is involved) and checks both sides: the legitimate pattern is quiet, and the
attack the rule exists for is still reported.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.factories.guard_training import train
from trainguard.guard.api import watch
from trainguard.guard.sink import MemorySink

PATCHES_ONLY = {"monitors": ["patches"], "patch_check_every": 1, "patch_check_seconds": 0}


def _accelerate_fp16_run(tmp_path: Path, steps: int, tamper: str | None = None) -> MemorySink:
    """accelerate's GradScaler loop on the CPU: it assigns its own ``step`` each step.

    ``tamper`` at step 5: ``"swap"`` replaces the wrapper accelerate installs on
    ``optimizer.step`` during the step; ``"rewrap"`` has accelerate's own wrapper wrap
    a foreign function.
    """
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer, patch_optimizer_step
    from accelerate.state import AcceleratorState

    torch.manual_seed(0)
    AcceleratorState._reset_state()
    Accelerator(cpu=True)  # its state; fp16 on the CPU: the scaler is given explicitly
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    original = opt.step

    def evil_step(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    sink = MemorySink()
    guard = watch(model, opt, run_dir=tmp_path, sink=sink, settings=PATCHES_ONLY)
    try:
        with guard:
            for step in range(steps):
                if step == 5 and tamper == "swap":
                    wrapped._optimizer_patched_step_method = evil_step
                elif step == 5 and tamper == "rewrap":
                    wrapped._optimizer_patched_step_method = patch_optimizer_step(
                        wrapped, evil_step
                    )
                x = torch.randn(8, 8)
                loss = F.mse_loss(model(x), x.sum(1, keepdim=True))
                wrapped.zero_grad()
                scaler.scale(loss).backward()
                wrapped.step()
    finally:
        AcceleratorState._reset_state()
    return sink


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")
def test_accelerate_gradscaler_step_wrapper_is_not_tampering(tmp_path: Path) -> None:
    sink = _accelerate_fp16_run(tmp_path, 12)
    assert [f.message for f in sink.findings if f.rule == "code.tampered"] == []


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")
@pytest.mark.parametrize("tamper", ["swap", "rewrap"])
def test_function_assigned_to_step_under_accelerate_is_still_tampering(
    tmp_path: Path, tamper: str
) -> None:
    sink = _accelerate_fp16_run(tmp_path, 12, tamper=tamper)
    found = [f for f in sink.findings if f.rule == "code.tampered"]
    assert found, sink.findings
    assert {f.evidence["target"] for f in found} == {"optimizer instance .step"}
    here = str(Path(__file__).resolve())
    assert any(f.location is not None and f.location.startswith(here) for f in found) or (
        tamper == "rewrap"  # reported at accelerate's wrapper, which wraps evil_step
    )


def test_own_bound_step_stored_back_is_quiet_a_wrapper_is_not(tmp_path: Path) -> None:
    """accelerate stores the original bound ``step`` back on the instance after each
    step (quiet); a function of the user's that wraps it is still ``code.tampered``."""

    def shadow(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if step == 1:
            opt.step = opt.step  # type: ignore[method-assign]
        if step == 3:
            original = opt.step

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return original(*args, **kwargs)

            opt.step = wrapper  # type: ignore[method-assign]

    _, sink = train(tmp_path, 6, optim="sgd", settings=PATCHES_ONLY, before_step=shadow)
    found = [f for f in sink.findings if f.rule == "code.tampered"]
    assert [f.evidence["target"] for f in found] == ["optimizer instance .step"]
    assert found[0].step >= 3
    assert found[0].location is not None
    assert found[0].location.startswith(str(Path(__file__).resolve()))


# -- Adam in a plain loop: one small tensor's update collapses legitimately ----------

DYNAMICS_ONLY = {"monitors": ["timing", "dynamics"]}


def _adam_run(
    tmp_path: Path, seed: int, steps: int, *, monkeypatch: pytest.MonkeyPatch | None = None
) -> MemorySink:
    """The user's loop: Linear(8,16)-Tanh-Linear(16,1), Adam lr 1e-3, batch 8, y = x.sum(1).

    With ``monkeypatch``, from step 25 on Adam's kernel runs with a hundred times the learning
    rate its parameter group shows (a silently scaled learning rate).
    """
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    sink = MemorySink()
    guard = watch(model, opt, run_dir=tmp_path / str(seed), sink=sink, settings=DYNAMICS_ONLY)
    adam_module = importlib.import_module("torch.optim.adam")
    kernel = adam_module._single_tensor_adam

    def scaled(*args: Any, **kwargs: Any) -> Any:
        return kernel(*args, **{**kwargs, "lr": kwargs["lr"] * 100})

    with guard:
        for step in range(steps):
            if step == 25 and monkeypatch is not None:
                monkeypatch.setattr(adam_module, "_single_tensor_adam", scaled)
            x = torch.randn(8, 8)
            loss = F.mse_loss(model(x), x.sum(1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.observe(loss=loss)
    return sink


@pytest.mark.parametrize("seed", [124, 145, 193])
def test_adam_small_tensor_update_collapse_is_not_an_anomaly(tmp_path: Path, seed: int) -> None:
    """Seeds where Adam's update of ``2.bias`` drops ~1000x for a step around step 30."""
    sink = _adam_run(tmp_path, seed, 40)
    assert [f.message for f in sink.findings] == []


def test_silently_scaled_adam_lr_is_still_an_update_anomaly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _adam_run(tmp_path, 145, 40, monkeypatch=monkeypatch)
    found = [f for f in sink.findings if f.evidence.get("check") == "update_ratio"]
    assert found, [f.message for f in sink.findings]
    assert found[0].evidence["factor"] == pytest.approx(100.0, rel=0.5)
    assert found[0].evidence["at_step"] >= 25
    assert len(found[0].evidence["params"]) >= 2


# -- weights.tampered names the checkpoint file and the tensor -----------------------


def test_tampered_checkpoint_message_names_file_and_tensor(tmp_path: Path) -> None:
    from trainguard.core.errors import UnsafeFileError

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    with watch(model, opt, run_dir=tmp_path, sink=sink, settings={"monitors": ["lineage"]}) as g:
        ckpt = g.save_checkpoint(model.state_dict(), tmp_path / "ckpt-3.pt", step=3)
        data = bytearray(ckpt.read_bytes())
        index = data.find(model[2].weight.detach().numpy().tobytes())  # that tensor's bytes
        assert index > 0
        data[index + 5] ^= 0x01
        ckpt.write_bytes(bytes(data))
        with pytest.raises(UnsafeFileError):
            g.load_checkpoint(ckpt)
    found = [f for f in sink.findings if f.rule == "weights.tampered"]
    assert len(found) == 1, [f.message for f in sink.findings]
    message = found[0].message
    assert message.startswith(f"Rank 0: checkpoint {ckpt} does not match its signed manifest: ")
    assert message.endswith("tensor '2.weight': data changed.")
    assert ".:" not in message


# -- the batched optimizer re-computation keeps parameter groups apart ---------------


@pytest.mark.parametrize("scale_group", [None, 1])
def test_recomputation_batches_per_group(tmp_path: Path, scale_group: int | None) -> None:
    """Two AdamW groups with different lr / weight decay, audited on every step: clean
    when pristine; a kernel that scales the update of one group only is named."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-2, "weight_decay": 0.1},
            {"params": model[2].parameters(), "lr": 3e-3, "weight_decay": 0.0},
        ],
        foreach=False,
    )
    adam_module = importlib.import_module("torch.optim.adam")
    kernel = adam_module._single_tensor_adam

    def scaled(*args: Any, **kwargs: Any) -> Any:
        if kwargs["lr"] == opt.param_groups[scale_group or 0]["lr"]:
            kwargs = {**kwargs, "lr": kwargs["lr"] * 3}
        return kernel(*args, **kwargs)

    sink = MemorySink()
    settings = {"monitors": ["optimizer_audit"], "audit_every": 1}
    with pytest.MonkeyPatch.context() as mp:
        if scale_group is not None:
            mp.setattr(adam_module, "_single_tensor_adam", scaled)
        with watch(model, opt, run_dir=tmp_path, sink=sink, settings=settings):
            for _ in range(8):
                x = torch.randn(8, 8)
                loss = F.mse_loss(model(x), x.sum(1, keepdim=True))
                opt.zero_grad()
                loss.backward()
                opt.step()
    found = [f for f in sink.findings if f.rule == "grad.anomaly"]
    audits = [p for k, p in sink.events if k == "optimizer_audit"]
    assert len(audits) >= 3
    if scale_group is None:
        assert found == [] and all(a["mismatched"] == 0 for a in audits)
        return
    assert found
    assert {p["param"] for p in found[0].evidence["params"]} == {"2.weight", "2.bias"}
    assert found[0].evidence["median_ratio_actual_to_expected"] == pytest.approx(3.0, rel=1e-3)
