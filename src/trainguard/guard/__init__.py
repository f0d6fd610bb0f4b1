"""The training guard: in-process checks of a (distributed) training job.

``trainguard.watch(model, optimizer, run_dir=...)`` attaches a :class:`Guard`; see
docs/guard.md. This is the only capability that imports torch.

The package imports torch lazily (PEP 562) so that ``trainguard.guard.hooks``
(audit hook, signal watcher) can be installed before torch and numpy start their
native threads; see docs/guard-process.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - import-time only for type checkers
    from trainguard.guard.api import Guard, active_guard, watch, watch_dataloader
    from trainguard.guard.settings import GuardSettings

__all__ = ["Guard", "GuardSettings", "active_guard", "watch", "watch_dataloader"]

_LAZY = {
    "Guard": "trainguard.guard.api",
    "active_guard": "trainguard.guard.api",
    "watch": "trainguard.guard.api",
    "watch_dataloader": "trainguard.guard.api",
    "GuardSettings": "trainguard.guard.settings",
}


def __getattr__(name: str) -> Any:
    """Resolve the public entry points on first use (PEP 562)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trainguard.guard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
