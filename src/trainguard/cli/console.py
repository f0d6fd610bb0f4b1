"""The stderr console and a rich progress bar that implements core.progress.Progress.

Progress is shown only when stderr is a terminal and ``--no-progress`` is not
given; strings from scanned artifacts go through :func:`safe_text` so that they
cannot inject rich markup or terminal escapes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from trainguard.core.progress import Progress

_console: Console | None = None


def err_console() -> Console:
    """The shared rich Console on stderr."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    return _console


def safe_text(value: object) -> str:
    """Escape rich markup and strip control characters from untrusted text."""
    from rich.markup import escape

    text = "".join(
        ch if ch.isprintable() or ch in "\t" else f"\\x{ord(ch):02x}" for ch in str(value)
    )
    return escape(text)


class RichProgress:
    """A rich progress bar on stderr; a no-op when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def start(self, description: str, total: float | None) -> None:
        """Open the bar (once per task)."""
        if not self._enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.finish()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console(),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(safe_text(description), total=total)

    def advance(self, amount: float = 1) -> None:
        """Move the bar."""
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def make_progress(no_progress: bool) -> Progress:
    """The progress observer a command should pass to the library."""
    return RichProgress(enabled=False if no_progress else None)
