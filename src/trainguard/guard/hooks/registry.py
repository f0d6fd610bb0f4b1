"""Trainguard's own wrappers of library functions, so other checks can see through them.

The seed monitor replaces ``torch.manual_seed``, ``numpy.random.seed``... with thin
wrappers that record the caller and call the original. The code-integrity monitor
(checks/patches.py) protects the same names; it asks :func:`trusted_original` for
the object to verify against the installed source, so our own wrapper is not
reported as tampering. A wrapper is trusted by *identity* (the object we created),
never by name or attribute: an adversary's function claiming ``__wrapped__`` or a
trainguard ``__module__`` is not in the table.
"""

from __future__ import annotations

import threading
from typing import Any

_TRUSTED: dict[int, tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def register_wrapper(wrapper: Any, original: Any) -> None:
    """Record that ``wrapper`` is trainguard's wrapper around ``original``."""
    with _LOCK:
        _TRUSTED[id(wrapper)] = (wrapper, original)


def unregister_wrapper(wrapper: Any) -> None:
    """Forget ``wrapper`` (when the monitor that made it restores the original)."""
    with _LOCK:
        entry = _TRUSTED.get(id(wrapper))
        if entry is not None and entry[0] is wrapper:
            del _TRUSTED[id(wrapper)]


def trusted_original(obj: Any) -> Any:
    """The original behind ``obj`` when ``obj`` is one of our wrappers, else ``obj``."""
    entry = _TRUSTED.get(id(obj))
    if entry is not None and entry[0] is obj:
        return entry[1]
    return obj


def is_trusted_wrapper(obj: Any) -> bool:
    """True when ``obj`` is a wrapper made by trainguard (identity check)."""
    entry = _TRUSTED.get(id(obj))
    return entry is not None and entry[0] is obj
