"""Several writer processes, and a writer killed with SIGKILL, on both back ends."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainguard.core.keys import SigningKey
from trainguard.ledger import open_ledger
from trainguard.ledger.verify import verify_ledger

ROOT = Path(__file__).resolve().parents[2]


def spawn(url: str, key: Path | str, writer: str, count: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.ledger.writer_proc",
            url,
            str(key),
            writer,
            str(count),
            str(batch),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tamper_free(report) -> bool:
    return all(f.rule == "ledger.unsigned_tail" for f in report.findings)


@pytest.mark.slow
def test_concurrent_writers_get_one_total_order(
    ledger_url: str, key_files: tuple[Path, Path], signing_key: SigningKey
) -> None:
    key, _ = key_files
    open_ledger(ledger_url).close()  # create the schema once, before the race
    plan = {"w0": (60, 1), "w1": (60, 1), "w2": (120, 10), "w3": (120, 7)}
    procs = {w: spawn(ledger_url, key, w, n, b) for w, (n, b) in plan.items()}
    returned: dict[str, list[int]] = {}
    for writer, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        returned[writer] = [int(x) for x in out.split()]
    total = sum(n for n, _ in plan.values())
    with open_ledger(ledger_url) as ledger:
        events = list(ledger.events())
    assert [e.seq for e in events] == list(range(1, total + 1))  # one order, no gaps
    by_seq = {e.seq: e for e in events}
    for writer, seqs in returned.items():
        assert len(seqs) == plan[writer][0] and seqs == sorted(seqs)
        # each returned seq holds exactly that writer's event, in its own order
        assert [by_seq[s].payload for s in seqs] == [
            {"writer": writer, "i": i} for i in range(plan[writer][0])
        ]
    all_returned = sorted(s for seqs in returned.values() for s in seqs)
    assert all_returned == list(range(1, total + 1))
    report = verify_ledger(ledger_url, signing_key.public)
    assert tamper_free(report), report.findings
    assert report.heads_checked >= total // 50


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing_that_was_returned(
    ledger_url: str, key_files: tuple[Path, Path], signing_key: SigningKey
) -> None:
    key, _ = key_files
    open_ledger(ledger_url).close()
    proc = spawn(ledger_url, key, "victim", 0, 13)  # writes until killed
    assert proc.stdout is not None
    reported: list[int] = []
    deadline = time.monotonic() + 120
    fd = proc.stdout.fileno()
    buffer = b""
    while len(reported) < 300 and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        reported += [int(x) for x in lines if x]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rest = proc.stdout.read()  # lines printed before the kill landed
    reported += [int(x) for x in (buffer.decode() + rest).split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 300
    with open_ledger(ledger_url) as ledger:
        stored = {e.seq: e.payload for e in ledger.events()}
    missing = [s for s in reported if s not in stored]
    assert missing == []
    assert [stored[s]["i"] for s in reported] == list(range(len(reported)))
    assert sorted(stored) == list(range(1, len(stored) + 1))  # whole batches or nothing
    assert len(stored) % 13 == 0
    report = verify_ledger(ledger_url, signing_key.public)
    assert tamper_free(report), report.findings


def test_ledger_object_survives_fork(ledger_url: str) -> None:
    """A forked child (a DataLoader worker, say) writes through its own connection."""
    import multiprocessing as mp

    with open_ledger(ledger_url) as ledger:
        ledger.append("parent", {"n": 1})

        def child() -> None:
            ledger.append_many([{"kind": "child", "payload": {"n": i}} for i in range(3)])
            os._exit(0)

        proc = mp.get_context("fork").Process(target=child)
        proc.start()
        proc.join(timeout=60)
        assert proc.exitcode == 0
        assert ledger.append("parent", {"n": 2}) == 5
        assert [e.kind for e in ledger.events()] == ["parent", "child", "child", "child", "parent"]
