"""Process-wide hooks of the guard: the PEP 578 audit hook and the signal watcher.

Both are installed once per process and stay for its lifetime. Install them before
anything else (``import numpy`` and ``import torch`` start native threads that would
not block the watched signals, and a checkpoint unpickled before the audit hook
exists is not checked)::

    import trainguard.guard.hooks
    trainguard.guard.hooks.install_early()   # first lines of the entry script
    import torch ...

``trainguard.watch()`` installs them too when they are not yet there. This package
does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainguard.guard.hooks.audit import install_audit_hook
from trainguard.guard.hooks.signals import install_signal_watcher


def install_early(allow: Iterable[str] = ()) -> None:
    """Install the audit hook and the signal watcher now (idempotent).

    Args:
        allow: extra exact ``module.name`` globals the audit hook allows.
    """
    install_audit_hook(allow=allow)
    install_signal_watcher()


__all__ = ["install_audit_hook", "install_early", "install_signal_watcher"]
