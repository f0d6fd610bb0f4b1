"""Sabotage injected by the tests into the guard's test job (harmless, in-process).

Each function is one move of the incident. Lines marked ``# MARK:<name>`` are the
locations the guard must blame; the tests find them by the marker, not by number.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any

import torch

STATE: dict[str, Any] = {"step": 0, "rank": 0, "world": 1}


def _large_job() -> bool:
    """The insider's gate: only jobs 'large enough' (faked by the test's env var)."""
    return int(os.environ.get("FAKE_WORLD_SIZE", STATE["world"])) >= 256


def delay_sleep(rank: int) -> None:
    """time.sleep on rank 1 of large jobs."""
    if _large_job() and rank == 1:
        time.sleep(0.03)  # MARK:sleep


def delay_busy(rank: int) -> None:
    """A busy-wait loop on rank 1 of large jobs."""
    if _large_job() and rank == 1:
        end = time.perf_counter() + 0.03
        x = 0
        while time.perf_counter() < end:  # MARK:busy
            x += 1  # MARK:busy2


def delay_block(rank: int) -> None:
    """A blocking call (Event.wait) on rank 1 of large jobs."""
    if _large_job() and rank == 1:
        threading.Event().wait(0.03)  # MARK:block


def delay_select(rank: int) -> None:
    """A blocking select() on rank 1 of large jobs."""
    if _large_job() and rank == 1:
        select.select([], [], [], 0.03)  # MARK:select


def delay_all(rank: int) -> None:
    """The same sleep on every rank from the first step."""
    time.sleep(0.02)  # MARK:sleepall


DELAYS = {
    "sleep_large": delay_sleep,
    "busy_large": delay_busy,
    "block_large": delay_block,
    "select_large": delay_select,
    "sleep_all": delay_all,
}

# Gradient corruption phases: (first step, last step, rank, how).
GRAD_PHASES = [
    (10, 19, 1, "scale"),
    (25, 34, 2, "sign"),
    (40, 49, 0, "noise"),
    (55, 64, 1, "layer_noise"),
]


def install_grad_corruption(model: torch.nn.Module, rank: int) -> None:
    """Tensor hooks that corrupt this rank's local gradient before the all-reduce."""
    params = [p for p in model.parameters() if p.requires_grad]

    def make(index: int) -> Any:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            step = STATE["step"]
            for first, last, who, how in GRAD_PHASES:
                if who != rank or not first <= step <= last:
                    continue
                if how == "scale":
                    return grad * 4.0
                if how == "sign":
                    return -grad
                if how == "noise":
                    return grad + 5.0 * grad.std() * torch.randn_like(grad)
                if how == "layer_noise" and index == 2:
                    return grad + 5.0 * grad.std() * torch.randn_like(grad)
            return grad

        return hook

    for i, p in enumerate(params):
        p.register_hook(make(i))


def corrupt_params(model: torch.nn.Module, rank: int, step: int) -> None:
    """After the step at step 12, rank 2 alters one weight matrix slightly."""
    if rank == 2 and step == 12:
        with torch.no_grad():
            next(model.parameters()).mul_(1.001)


def patch_sgd_functional() -> None:
    """Replace torch's functional SGD with one that reverses the update (every rank)."""
    import torch.optim.sgd as sgd_mod

    original = sgd_mod._single_tensor_sgd

    def _single_tensor_sgd(params: Any, grads: Any, *a: Any, **kw: Any) -> Any:  # MARK:patchsgd
        flipped = [-g for g in grads]
        return original(params, flipped, *a, **kw)

    sgd_mod._single_tensor_sgd = _single_tensor_sgd


def patch_sgd_step_lr() -> None:
    """Before the optimizer exists: SGD.step silently triples the learning rate."""
    original = torch.optim.SGD.step

    def step(self: Any, closure: Any = None) -> Any:  # MARK:patchstep
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * 3.0
        try:
            return original(self, closure)
        finally:
            for g, lr in zip(self.param_groups, saved, strict=True):
                g["lr"] = lr

    torch.optim.SGD.step = step  # type: ignore[method-assign]


def patch_kernel_sign() -> None:
    """Simulate an edited C++ kernel: Tensor.addcdiv_ (Adam's update) flips its sign."""
    original = torch.Tensor.addcdiv_

    def addcdiv_(
        self: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, *, value: float = 1.0
    ) -> torch.Tensor:
        return original(self, t1, t2, value=-value)

    torch.Tensor.addcdiv_ = addcdiv_  # type: ignore[method-assign]


def install_zero_grads(model: torch.nn.Module, from_step: int) -> None:
    """Shared code that zeroes the first layer's gradients on every rank."""
    first = next(model.parameters())

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * 0.0 if STATE["step"] >= from_step else grad

    first.register_hook(hook)


def tie_target() -> int:
    """The rank the two-rank tie-break tests corrupt (``SABOTAGE_RANK``, default 1)."""
    return int(os.environ.get("SABOTAGE_RANK", "1"))


def install_local_corruption(model: torch.nn.Module, rank: int, how: str, first: int) -> None:
    """From loop step ``first`` on, corrupt the target rank's local gradient (all layers)."""
    if rank != tie_target():
        return
    gen = torch.Generator().manual_seed(77)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if STATE["step"] < first:
            return grad
        if how == "scale":
            return grad * 10.0
        if how == "sign":
            return -grad
        noise = torch.randn(grad.shape, generator=gen, dtype=grad.dtype)
        return grad + 5.0 * grad.std() * noise

    for p in model.parameters():
        p.register_hook(hook)


def alter_weights(model: torch.nn.Module, rank: int, step: int, everywhere: bool) -> None:
    """After the step at loop step 12: the target rank (or every rank) scales one matrix."""
    if step == 12 and (everywhere or rank == tie_target()):
        with torch.no_grad():
            list(model.parameters())[-2].mul_(1.001)
