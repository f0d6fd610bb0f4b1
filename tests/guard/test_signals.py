"""process.signal: a signal sent to a guarded rank names its sender; behaviour is kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.guard.harness import findings, launch, of_kind, sender

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def test_sigterm_from_another_process_is_attributed(tmp_path: Path) -> None:
    job = launch(tmp_path, 2, ["--steps", "400", "--step-sleep", "0.02"])
    try:
        pid = job.wait_ready(1)
        job.wait_ready(0)
        attacker = sender(pid, signal.SIGTERM)
        codes = job.wait(timeout=90)
    finally:
        job.wait(timeout=5)
    attacker.kill()
    attacker.wait(timeout=10)
    # The rank died from SIGTERM as it would have without the guard (default action).
    assert codes[1] == -signal.SIGTERM, job.logs()
    rows = of_kind(findings(tmp_path, 1), "process.signal")
    assert len(rows) == 1, job.logs()
    row = rows[0]
    assert row["rank"] == 1
    assert row["evidence"]["signal"] == "SIGTERM"
    assert row["actor"]["pid"] == attacker.pid
    assert row["actor"]["uid"] == os.getuid()
    assert "os.kill" in row["actor"]["cmdline"]
    assert row["evidence"]["action"].startswith("default action")
    assert row["evidence"]["sender"]["parents"][0]["pid"] == os.getpid()


def test_python_handler_still_runs(tmp_path: Path) -> None:
    """SIGINT keeps raising KeyboardInterrupt in the main thread, as without the guard."""
    job = launch(tmp_path, 1, ["--steps", "400", "--step-sleep", "0.02"])
    try:
        pid = job.wait_ready(0)
        attacker = sender(pid, signal.SIGINT)
        codes = job.wait(timeout=90)
    finally:
        job.wait(timeout=5)
    attacker.kill()
    attacker.wait(timeout=10)
    # An uncaught KeyboardInterrupt ends CPython with 130 (or by SIGINT itself).
    assert codes[0] in (130, -signal.SIGINT), job.logs()
    assert "KeyboardInterrupt" in (tmp_path / "rank0.log").read_text()
    rows = of_kind(findings(tmp_path, 0), "process.signal")
    assert [r["evidence"]["signal"] for r in rows] == ["SIGINT"]
    assert rows[0]["actor"]["pid"] == attacker.pid
    assert "default_int_handler" in rows[0]["evidence"]["action"]


def test_clean_run_has_no_signal_finding(tmp_path: Path) -> None:
    job = launch(tmp_path, 1, ["--steps", "6"])
    assert job.wait(timeout=90) == [0], job.logs()
    assert findings(tmp_path) == []


def test_blocked_mask_reads_one_threads_signal_mask() -> None:
    """The heartbeat's ``signal_mask`` bit: the main thread must keep blocking the watched
    signals; a thread that unblocks one shows it in its own /proc status."""
    import signal
    import threading

    from trainguard.guard.hooks.signals import blocked_mask

    seen: dict[str, int | None] = {}

    def probe() -> None:
        me = threading.get_native_id()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        seen["blocked"] = blocked_mask(me)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        seen["unblocked"] = blocked_mask(me)

    worker = threading.Thread(target=probe)
    worker.start()
    worker.join(timeout=10)
    bit = 1 << (signal.SIGUSR1 - 1)
    assert seen["blocked"] is not None and seen["blocked"] & bit
    assert seen["unblocked"] is not None and not seen["unblocked"] & bit
    assert blocked_mask(2**30) is None  # no such thread
