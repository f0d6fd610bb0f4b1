"""Progress reporting without printing: the library takes an observer.

Library functions accept ``progress: Progress = NULL_PROGRESS``; the CLI passes a
rich-backed implementation (``trainguard.cli.console``). Library callers see nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Observer of a long operation."""

    def start(self, description: str, total: float | None) -> None:
        """A task begins; ``total`` is in the task's own units (files, bytes), or unknown."""

    def advance(self, amount: float = 1) -> None:
        """Some of the work is done."""

    def finish(self) -> None:
        """The task is over (also called after errors)."""


class NullProgress:
    """The library default: report nothing."""

    def start(self, description: str, total: float | None) -> None:
        """Ignore the start of a task."""

    def advance(self, amount: float = 1) -> None:
        """Ignore progress."""

    def finish(self) -> None:
        """Ignore the end of a task."""


NULL_PROGRESS: Progress = NullProgress()
