"""Fixtures of the guard tests.

The audit hook (PEP 578) and the signal watcher are process-permanent by design: once
installed they cannot be removed, so an in-process test that attached them would change
every test that runs after it in the same pytest process (its pickling, its signal
handling). In-process guard tests therefore run without those two monitors; the tests
about them start their own processes (test_audit.py, test_signals.py, the jobs under
tests/guard/jobs). A test that really needs them in-process asks for the
``process_hooks`` fixture, and must then run in a subprocess of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

PROCESS_PERMANENT_MONITORS = ("audit", "signals")
"""Monitors whose hooks outlive the Guard (names as in ``DEFAULT_MONITORS``)."""


@pytest.fixture
def process_hooks() -> None:
    """Opt-in marker fixture: keep the audit and signal monitors in ``watch()``."""


@pytest.fixture(autouse=True)
def _without_process_permanent_monitors(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """``watch()`` without the audit and signal monitors, unless ``process_hooks`` is used."""
    if "process_hooks" in request.fixturenames:
        yield
        return
    from trainguard.guard import api, monitors

    kept = [
        factory
        for factory in monitors.DEFAULT_MONITORS
        if getattr(factory, "name", None) not in PROCESS_PERMANENT_MONITORS
    ]
    monkeypatch.setattr(api, "DEFAULT_MONITORS", kept)
    yield
