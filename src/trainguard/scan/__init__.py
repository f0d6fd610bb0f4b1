"""Static analysis of model files: nothing in a scanned file is imported or executed.

Public API (resolved lazily so ``import trainguard.scan`` stays cheap):
:func:`scan_path` and :func:`scan_bytes` from :mod:`trainguard.scan.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - import-time only for type checkers
    from trainguard.scan.api import scan_bytes, scan_path

__all__ = ["scan_bytes", "scan_path"]

_LAZY = {"scan_path": "trainguard.scan.api", "scan_bytes": "trainguard.scan.api"}


def __getattr__(name: str) -> Any:
    """Resolve the public entry points on first use (PEP 562)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trainguard.scan' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
