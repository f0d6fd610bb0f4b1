"""Run Debian's headless Chromium on a report, with bounded time and a fresh profile."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (scripts/test installs Debian's chromium; CI has it)",
)

BASE_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--enable-logging=stderr",
    "--v=0",
]

WINDOW = (1200, 1400)


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str

    def console_lines(self) -> list[str]:
        """Every message the page wrote to the console (errors, CSP violations, logs)."""
        return [line for line in self.stderr.splitlines() if ":CONSOLE" in line]

    def body_attr(self, name: str) -> str | None:
        """An attribute of ``<body>`` in the dumped DOM (set by the page's self-check)."""
        found = re.search(r"<body[^>]*\s" + re.escape(name) + r'="([^"]*)"', self.stdout)
        return html.unescape(found.group(1)) if found else None


def chromium(page: Path, profile: Path, *extra: str, timeout: float = 60) -> Run:
    """Open ``page`` (file://) in headless Chromium with ``extra`` flags."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        *BASE_ARGS,
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *extra,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return Run(proc.stdout, proc.stderr)


def dump_dom(page: Path, profile: Path) -> Run:
    """The DOM after the page's scripts ran."""
    return chromium(page, profile, "--virtual-time-budget=3000", "--dump-dom")


def screenshot(page: Path, profile: Path, out: Path) -> Run:
    """A PNG of the first ``WINDOW`` pixels of the page."""
    run = chromium(page, profile, "--virtual-time-budget=3000", f"--screenshot={out}")
    assert out.is_file(), f"no screenshot written: {run.stderr[-2000:]}"
    return run
