"""The optimizer re-computation: silent on every supported rule, loud on a tampered kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.factories.guard_training import train
from trainguard.core.findings import Severity

AUDIT_ONLY = {"monitors": ["optimizer_audit"], "audit_every": 1}


@pytest.mark.parametrize(
    "optim",
    ["sgd", "sgd_momentum", "sgd_nesterov", "adam", "adam_amsgrad_wd", "adamw", "adamw_foreach"],
)
def test_pristine_optimizers_agree_with_recomputation(tmp_path: Path, optim: str) -> None:
    _, sink = train(tmp_path, 12, optim=optim, settings=AUDIT_ONLY)
    audits = [p for k, p in sink.events if k == "optimizer_audit"]
    assert len(audits) >= 3
    assert all(a["mismatched"] == 0 for a in audits), audits
    assert not sink.findings


@pytest.fixture
def tampered_addcdiv() -> Iterator[None]:
    """Simulate an edited C++ kernel: Adam's final addcdiv_ flips its sign."""
    original = torch.Tensor.addcdiv_

    def addcdiv_(self: torch.Tensor, t1: Any, t2: Any, *, value: float = 1.0) -> torch.Tensor:
        return original(self, t1, t2, value=-value)

    torch.Tensor.addcdiv_ = addcdiv_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.addcdiv_ = original  # type: ignore[method-assign]


def test_tampered_kernel_is_caught_by_recomputation(tmp_path: Path, tampered_addcdiv: None) -> None:
    _, sink = train(tmp_path, 6, optim="adam", settings=AUDIT_ONLY)
    found = [f for f in sink.findings if f.rule == "grad.anomaly"]
    assert found, "sign-flipped Adam update not detected"
    ev = found[0].evidence
    assert ev["check"] == "optimizer_recompute"
    assert ev["diagnosis"] == "update sign flipped"
    assert found[0].severity is Severity.HIGH


@pytest.fixture
def lr_times_ten() -> Iterator[None]:
    """Shared code whose functional SGD silently uses ten times the group's lr."""
    import torch.optim.sgd as sgd_mod

    functional = sgd_mod._single_tensor_sgd

    def _single_tensor_sgd(*args: Any, **kwargs: Any) -> Any:
        kwargs["lr"] = kwargs["lr"] * 10.0
        return functional(*args, **kwargs)

    sgd_mod._single_tensor_sgd = _single_tensor_sgd  # type: ignore[assignment]
    try:
        yield
    finally:
        sgd_mod._single_tensor_sgd = functional  # type: ignore[assignment]


def test_silently_scaled_lr_is_caught(tmp_path: Path, lr_times_ten: None) -> None:
    _, sink = train(tmp_path, 6, optim="sgd", settings=AUDIT_ONLY)
    found = [f for f in sink.findings if f.rule == "grad.anomaly"]
    assert found
    ratio = found[0].evidence["median_ratio_actual_to_expected"]
    assert ratio == pytest.approx(10.0, rel=1e-3)
