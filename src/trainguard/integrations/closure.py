"""Run an optimizer step's closure before the guard's pre-step hook.

Some loops (PyTorch Lightning's automatic optimization, any ``optimizer.step(closure)``
loop) compute forward and backward *inside* ``optimizer.step``: the closure is
called by the optimizer after the step's pre-hooks have run. The guard's pre-step
checks (the optimizer re-computation snapshot, the dynamics snapshot) would see the
previous step's gradients there and report a correct update as wrong.

:class:`EagerClosure`, registered on the optimizer *before* :func:`trainguard.watch`
(pre-step hooks run in registration order), calls the closure first, under
``torch.enable_grad()`` as the optimizers do, and passes the optimizer a closure that
returns that result on its first call and re-evaluates on later calls (LBFGS calls
it again during its line search). The loss, the gradients and the number of
evaluations are the same as without it.
"""

from __future__ import annotations

from typing import Any

import torch


class _EvaluatedClosure:
    """A closure whose first call returns a result computed before the step began."""

    def __init__(self, closure: Any, result: Any) -> None:
        """Keep the original closure (for re-evaluations) and its first result."""
        self.closure = closure
        self.result = result
        self.used = False

    def __call__(self) -> Any:
        """The precomputed result once; then a fresh evaluation."""
        if not self.used:
            self.used = True
            return self.result
        return self.closure()


class EagerClosure:
    """Optimizer pre-step hook: evaluate the step's closure before later pre-step hooks.

    Registered before :func:`trainguard.watch`, so that it runs before the guard's own
    pre-step hook (hooks run in registration order).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        """Register on ``optimizer`` (an instance hook, removed by :meth:`remove`)."""
        self.evaluated = 0
        self.handle = optimizer.register_step_pre_hook(self)

    def __call__(
        self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Run the closure now; pass the optimizer one that returns its result.

        ``args`` are the arguments of the bound ``step`` call, the optimizer first:
        a closure given by position is ``args[1]``.
        """
        positional = "closure" not in kwargs and len(args) > 1
        closure = args[1] if positional else kwargs.get("closure")
        if closure is None or not callable(closure) or isinstance(closure, _EvaluatedClosure):
            return None
        with torch.enable_grad():
            result = closure()
        self.evaluated += 1
        done = _EvaluatedClosure(closure, result)
        if positional:
            return (args[0], done, *args[2:]), kwargs
        return args, {**kwargs, "closure": done}

    def remove(self) -> None:
        """Unregister the hook."""
        self.handle.remove()
