"""code.tampered: replaced torch functions, before and after the guard attached."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.factories.guard_training import train
from trainguard.guard.checks.patches import SourceVerifier, default_targets, resolve

PATCHES_ONLY = {"monitors": ["patches"], "patch_check_every": 1, "patch_check_seconds": 0}
HERE = str(Path(__file__).resolve())


def test_installed_torch_is_pristine() -> None:
    verifier = SourceVerifier()
    problems = []
    for name in default_targets():
        found, obj = resolve(name)
        if found and (p := verifier.problem(obj)) is not None:
            problems.append((name, p[0]))
    assert problems == []


def test_code_object_claiming_a_torch_file_is_caught() -> None:
    """A __code__ swap that pretends to come from torch/nn/functional.py."""
    filename = inspect.getsourcefile(F)
    assert filename is not None
    fake = compile("def softsign(input):\n    return input * 0\n", filename, "exec")
    namespace: dict[str, Any] = {}
    exec(fake, namespace)  # builds the impostor in this test only
    problem = SourceVerifier().problem(namespace["softsign"])
    assert problem is not None
    assert "installed source" in problem[0]


@pytest.fixture
def patched_relu_later() -> Iterator[list[Any]]:
    """Replace F.relu at step 3 (after attach); restored afterwards."""
    original = F.relu
    calls: list[Any] = []

    def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return original(input, inplace)

    calls.append(relu)
    try:
        yield calls
    finally:
        F.relu = original


def test_patch_after_attach_names_the_replacement(
    tmp_path: Path, patched_relu_later: list[Any]
) -> None:
    replacement = patched_relu_later[0]

    def patch(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if step == 3:
            F.relu = replacement

    _, sink = train(tmp_path, 6, settings=PATCHES_ONLY, before_step=patch)
    found = [f for f in sink.findings if f.rule == "code.tampered"]
    assert len(found) == 1, [f.message for f in found]
    f = found[0]
    assert f.evidence["target"] == "torch.nn.functional.relu"
    assert f.location == f"{HERE}:{replacement.__code__.co_firstlineno}"
    assert f.evidence["replacement"]["module"] == __name__
    assert f.evidence["when"] == "after the guard attached"
    assert 4 <= (f.step or 0) <= 5


@pytest.fixture
def adam_replaced_before() -> Iterator[None]:
    import torch.optim.adam as adam_mod

    original = adam_mod._single_tensor_adam

    def _single_tensor_adam(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)

    adam_mod._single_tensor_adam = _single_tensor_adam  # type: ignore[assignment]
    try:
        yield
    finally:
        adam_mod._single_tensor_adam = original  # type: ignore[assignment]


def test_function_replaced_before_attach(tmp_path: Path, adam_replaced_before: None) -> None:
    _, sink = train(tmp_path, 2, settings=PATCHES_ONLY)
    found = [f for f in sink.findings if f.rule == "code.tampered"]
    assert [f.evidence["target"] for f in found] == ["torch.optim.adam._single_tensor_adam"]
    assert found[0].evidence["when"] == "before the guard attached"
    assert found[0].location is not None and found[0].location.startswith(HERE)


def test_instance_step_shadowing_is_caught(tmp_path: Path) -> None:
    def shadow(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if step == 1:
            opt.zero_grad = lambda set_to_none=True: None  # type: ignore[method-assign]

    _, sink = train(tmp_path, 4, optim="sgd", settings=PATCHES_ONLY, before_step=shadow)
    targets = [f.evidence["target"] for f in sink.findings if f.rule == "code.tampered"]
    assert targets == ["optimizer instance .zero_grad"]


def _resolve_slow(dotted: str) -> tuple[bool, Any]:
    """The reference semantics: inspect.getattr_static on classes, getattr elsewhere."""
    import sys

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:cut]))
        if obj is None:
            continue
        try:
            for attr in parts[cut:]:
                obj = (
                    inspect.getattr_static(obj, attr)
                    if isinstance(obj, type)
                    else getattr(obj, attr)
                )
        except AttributeError:
            return False, None
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        return True, obj
    return False, None


class _Meta(type):
    def meta_only(cls) -> int:
        return 1


class _Loud:
    """A descriptor that must never run during a re-check (static lookup)."""

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        raise AssertionError("descriptor executed")


class _Target(metaclass=_Meta):
    loud = _Loud()

    @staticmethod
    def helper() -> int:
        return 2


def test_fast_resolve_matches_getattr_static() -> None:
    names = [
        *default_targets(),
        f"{__name__}._Target.loud",
        f"{__name__}._Target.helper",
        f"{__name__}._Target.meta_only",
        f"{__name__}._Target.missing",
        "no.such.module.func",
    ]
    for name in names:
        fast, slow = resolve(name), _resolve_slow(name)
        assert fast[0] == slow[0] and fast[1] is slow[1], name


def test_background_recheck_failure_is_reported(tmp_path: Path, monkeypatch: Any) -> None:
    import time

    from trainguard.guard import watch
    from trainguard.guard.checks.patches import PatchMonitor
    from trainguard.guard.sink import MemorySink

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    settings = {"monitors": ["patches"], "patch_check_seconds": 0.05}
    guard = watch(model, opt, run_dir=tmp_path, sink=sink, settings=settings)
    original = PatchMonitor.recheck

    def broken(self: PatchMonitor, ctx: Any) -> None:
        raise RuntimeError("resolver broke")

    monkeypatch.setattr(PatchMonitor, "recheck", broken)
    deadline = time.monotonic() + 10
    while not sink.findings and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.setattr(PatchMonitor, "recheck", original)
    guard.close()
    failed = [f for f in sink.findings if f.rule == "guard.disabled"]
    assert len(failed) == 1 and failed[0].evidence["where"] == "the background re-check"
