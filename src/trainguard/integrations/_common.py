"""What the framework adapters share: run directory, optimizer unwrapping, import errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.core.errors import GuardError

RUN_DIR_ENV = "TRAINGUARD_RUN_DIR"
"""Set by ``trainguard run`` so that the job's guard writes to the supervised run."""


def missing_framework(adapter: str, package: str, exc: ImportError) -> ImportError:
    """The error raised when an adapter's framework is not installed.

    An ``ImportError`` (not a GuardError) so that ``pytest.importorskip`` and
    ``try: import ... except ImportError`` keep working for callers.
    """
    error = ImportError(
        f"trainguard.integrations.{adapter} needs {package}, which cannot be imported "
        f"({exc}); install it with: pip install 'trainguard[integrations]'"
    )
    error.name = package
    return error


def resolve_run_dir(explicit: str | os.PathLike[str] | None, framework_default: str | None) -> Path:
    """The guard's run directory: the argument, else ``TRAINGUARD_RUN_DIR``, else the
    framework's output directory.

    The environment variable wins over the framework default so that a job started
    under ``trainguard run`` writes into the run the supervisor watches, without a
    change to the training script.
    """
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get(RUN_DIR_ENV)
    if from_env:
        return Path(from_env)
    if framework_default:
        return Path(framework_default)
    raise GuardError(
        f"no run directory: pass run_dir=..., set {RUN_DIR_ENV}, or give the trainer an "
        "output directory"
    )


def real_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` behind a framework wrapper.

    ``accelerate.AcceleratedOptimizer`` keeps it in ``.optimizer`` and Lightning's
    ``LightningOptimizer`` in ``._optimizer``. The guard must hook the real instance:
    the wrappers forward ``step`` to it, and the optimizer re-computation reads its
    ``param_groups`` and ``state``.

    Raises:
        GuardError: no ``torch.optim.Optimizer`` is found behind ``optimizer``.
    """
    import torch

    found: Any = None
    seen: set[int] = set()
    current = optimizer
    # Walk down to the innermost optimizer: AcceleratedOptimizer is itself a (hollow)
    # torch.optim.Optimizer subclass, so the first match is not necessarily the real one.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.optim.Optimizer):
            found = current
        inner = getattr(current, "optimizer", None)
        if inner is None:
            inner = getattr(current, "_optimizer", None)
        current = inner
    if found is not None:
        return found
    raise GuardError(
        f"cannot find the torch optimizer behind {type(optimizer).__name__}; "
        "call trainguard.watch(model, optimizer) yourself"
    )


def watch_kwargs(
    ledger: str | None, settings: Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Keyword arguments for :func:`trainguard.watch` from an adapter's own arguments."""
    kwargs: dict[str, Any] = dict(overrides)
    if ledger is not None:
        kwargs["ledger"] = ledger
    elif os.environ.get("TRAINGUARD_LEDGER"):
        kwargs["ledger"] = os.environ["TRAINGUARD_LEDGER"]
    if settings is not None:
        kwargs["settings"] = dict(settings)
    return kwargs
