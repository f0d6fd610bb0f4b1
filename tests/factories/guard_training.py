"""Tiny in-process training loops for the guard's single-process tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainguard.guard import Guard, watch
from trainguard.guard.base import GuardContext
from trainguard.guard.settings import GuardSettings
from trainguard.guard.sink import MemorySink


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A two-layer MLP."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def make_optimizer(kind: str, params: Any) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW variants covering the options the audit re-computes."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05)
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    if kind == "sgd_nesterov":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, dampening=0.0)
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    if kind == "adam_amsgrad_wd":
        return torch.optim.Adam(params, lr=1e-2, amsgrad=True, weight_decay=1e-2)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    if kind == "adamw_foreach":
        return torch.optim.AdamW(params, lr=1e-2, foreach=True, maximize=False)
    raise ValueError(kind)


def train(
    run_dir: Path,
    steps: int,
    *,
    optim: str = "adam",
    settings: dict[str, Any] | None = None,
    before_step: Callable[[int, torch.nn.Module, torch.optim.Optimizer], None] | None = None,
) -> tuple[Guard, MemorySink]:
    """Train the tiny model on a teacher task for ``steps`` steps with the guard attached."""
    torch.set_num_threads(1)
    teacher = tiny_model(1)
    model = tiny_model(0)
    opt = make_optimizer(optim, model.parameters())
    sink = MemorySink()
    guard = watch(model, opt, run_dir=run_dir, sink=sink, settings=settings or {})
    gen = torch.Generator().manual_seed(5)
    with guard:
        for step in range(steps):
            if before_step is not None:
                before_step(step, model, opt)
            x = torch.randn(16, 8, generator=gen)
            with torch.no_grad():
                y = teacher(x)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.observe(loss=loss)
    return guard, sink


def guard_context(
    model: torch.nn.Module, *, world: int = 2, rank: int = 0, **settings: Any
) -> GuardContext:
    """A context for driving one monitor by hand: no process group, no collectives, a
    memory sink, default settings with ``settings`` applied."""
    return GuardContext(
        run_id="r",
        run_dir=Path("."),
        rank=rank,
        world_size=world,
        sink=MemorySink(),
        model=model,
        settings=GuardSettings.build(None, settings).to_dict(),
    )
