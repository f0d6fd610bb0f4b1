"""Harmless payload for the audit-hook tests: writes a marker file when called.

A pickle that names ``tests.guard.jobs.proc_payload.write_marker`` is not allowlisted
(verdict ``unknown``): the audit hook must refuse it before this function runs.
"""

from __future__ import annotations

from pathlib import Path


def write_marker(path: str) -> str:
    Path(path).write_text("payload ran")
    return path


class Payload:
    """Pickles to ``write_marker(path)``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (write_marker, (self.path,))


class SystemPayload:
    """Pickles to ``os.system('touch PATH')`` (a known-dangerous global)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.path}",))
