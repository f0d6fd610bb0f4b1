"""trainguard keeps large-model training honest.

Entry points (imported lazily so that ``import trainguard`` stays cheap and never
pulls torch into a process that only scans files):

- :func:`trainguard.scan.scan_path` — static analysis of model files.
- :func:`trainguard.safe_load` — load a checkpoint only after the scanner passes it.
- :func:`trainguard.watch` / :func:`trainguard.watch_dataloader` — the training guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "safe_load", "watch", "watch_dataloader"]

if TYPE_CHECKING:  # pragma: no cover - import-time only for type checkers
    from trainguard.guard import watch, watch_dataloader
    from trainguard.load import safe_load

_LAZY = {
    "safe_load": "trainguard.load",
    "watch": "trainguard.guard",
    "watch_dataloader": "trainguard.guard",
}


def __getattr__(name: str) -> Any:
    """Resolve the public entry points on first use (PEP 562)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trainguard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
