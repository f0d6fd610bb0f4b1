"""Sabotage used by the integration test jobs: a helper module, as an insider would add.

Each function reverses the optimizer's update from the next step on, in a way that
keeps every hyper-parameter and the Python ``step`` method untouched: only the
kernel (or functional implementation) the step dispatches to is changed.
"""

from __future__ import annotations

from typing import Any

import torch


def reverse_fused_adamw() -> None:
    """``torch._fused_adamw_`` (fused AdamW, the Trainer's default on CPU) with ``-lr``."""
    original = torch._fused_adamw_

    def _fused_adamw_(*args: Any, **kwargs: Any) -> Any:
        kwargs["lr"] = -kwargs["lr"]
        return original(*args, **kwargs)

    torch._fused_adamw_ = _fused_adamw_


def reverse_single_tensor_sgd() -> None:
    """``torch.optim.sgd._single_tensor_sgd`` (plain SGD on CPU) with ``-lr``."""
    import torch.optim.sgd as sgd_module

    original = sgd_module._single_tensor_sgd

    def _single_tensor_sgd(*args: Any, **kwargs: Any) -> Any:
        kwargs["lr"] = -kwargs["lr"]
        return original(*args, **kwargs)

    sgd_module._single_tensor_sgd = _single_tensor_sgd
