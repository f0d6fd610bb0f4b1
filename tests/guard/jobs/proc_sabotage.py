"""Sabotage injected by the process-level tests (a "shared helper module" of the job).

Every function here stands for code in a shared repository that the insider edited.
Lines that the tests expect in findings end in ``# MARK:<name>``.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch


def reseed_torch() -> None:
    torch.manual_seed(1234)  # MARK:torch


def reseed_numpy() -> None:
    np.random.seed(99)  # MARK:numpy


def reseed_python() -> None:
    random.seed(7)  # MARK:python


def set_torch_state(state: torch.Tensor) -> None:
    torch.set_rng_state(state)  # MARK:torch_state


def set_numpy_state(state: Any) -> None:
    np.random.set_state(state)  # MARK:numpy_state


def set_python_state(state: Any) -> None:
    random.setstate(state)  # MARK:python_state


def bypass_torch() -> None:
    torch.default_generator.manual_seed(4321)


def bypass_numpy() -> None:
    np.random.mtrand._rand.seed(11)


def bypass_python() -> None:
    random._inst.seed(13)  # type: ignore[attr-defined]


def disable_hooks(guard: Any) -> None:
    guard.pre_hook_handle.remove()
    guard.post_hook_handle.remove()


def stop_heartbeat(guard: Any) -> None:
    monitor = guard.monitor("heartbeat")
    monitor._stop.set()


def replace_guard(guard: Any) -> None:
    api = sys.modules["trainguard.guard.api"]

    class Quiet:
        findings: tuple[Any, ...] = ()

        def observe(self, *args: Any, **kwargs: Any) -> None:
            return None

    fake = Quiet()
    api._ACTIVE[:] = [fake]
    api.active_guard = lambda: fake
