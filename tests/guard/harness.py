"""Launch the process-level guard test jobs (tests/guard/jobs/proc_job.py).

``launch`` starts one process per rank (like torchrun, without its start-up cost);
``launcher_command`` gives the command line of ``tests/guard/jobs/proc_launch.py``,
the same thing as a single process, for jobs supervised by ``trainguard run``. Every
wait is bounded; processes still alive at the deadline are killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import free_port

JOBS = Path(__file__).with_name("jobs")
JOB = JOBS / "proc_job.py"
LAUNCH = JOBS / "proc_launch.py"
SABOTAGE = JOBS / "proc_sabotage.py"
REPO = Path(__file__).resolve().parents[2]


def job_env(world: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment shared by every rank."""
    env = dict(os.environ)
    env.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        }
    )
    env.setdefault("TRAINGUARD_RUN_ID", f"proc-{env['MASTER_PORT']}")
    env.update(extra or {})
    return env


class Job:
    """A running set of ranks."""

    def __init__(self, out: Path, procs: list[subprocess.Popen[bytes]]) -> None:
        self.out = out
        self.procs = procs

    def wait_ready(self, rank: int, timeout: float = 60.0) -> int:
        """Wait until ``rank`` attached its guard; return its pid."""
        return wait_ready(self.out, rank, timeout)

    def wait(self, timeout: float = 120.0) -> list[int]:
        """Wait for every rank (bounded); kill what is left. Returns the return codes."""
        deadline = time.monotonic() + timeout
        codes: list[int] = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(-999)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        return codes

    def logs(self) -> str:
        """Every rank's log (for assertion messages)."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.out.glob("rank*.log"))
        )


def launch(out: Path, world: int, args: list[str], env: dict[str, str] | None = None) -> Job:
    """Start ``world`` ranks of proc_job.py writing to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    base = job_env(world, env)
    procs = []
    for rank in range(world):
        with open(out / f"rank{rank}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(JOB), "--out", str(out), *args],
                    env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(out),
                )
            )
    return Job(out, procs)


def launcher_command(out: Path, world: int, args: list[str]) -> list[str]:
    """Command line that runs ``world`` ranks under one launcher process."""
    return [sys.executable, str(LAUNCH), "--world", str(world), "--out", str(out), "--", *args]


def wait_ready(out: Path, rank: int, timeout: float = 60.0) -> int:
    """Pid of ``rank`` once its guard is attached (bounded wait)."""
    path = out / f"ready-rank{rank}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never became ready ({path})")


def findings(out: Path, rank: int | None = None) -> list[dict[str, Any]]:
    """Findings written by the ranks (all ranks when ``rank`` is None)."""
    files = (
        [out / f"findings-rank{rank}.jsonl"]
        if rank is not None
        else sorted(out.glob("findings-rank*.jsonl"))
    )
    rows = []
    for path in files:
        if path.exists():
            rows.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return rows


def of_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Rows of one finding kind."""
    return [r for r in rows if r["kind"] == kind]


def marker_line(name: str) -> int:
    """Line number of ``# MARK:<name>`` in proc_sabotage.py."""
    for number, line in enumerate(SABOTAGE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# MARK:{name}"):
            return number
    raise AssertionError(f"marker {name} not found")


def sender(pid: int, sig: int, linger: float = 5.0) -> subprocess.Popen[bytes]:
    """Another process that sends ``sig`` to ``pid`` and stays alive a moment."""
    code = f"import os,time; os.kill({pid}, {int(sig)}); time.sleep({linger})"
    return subprocess.Popen([sys.executable, "-c", code])


class JsonlLedger:
    """Stand-in for ``trainguard.ledger`` while it is not installed (same calls)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, kind: str, payload: dict[str, Any], **meta: Any) -> int:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, "payload": payload, **meta}, default=str) + "\n")
        return sum(1 for _ in open(self.path, encoding="utf-8"))

    def append_many(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            event = dict(event)
            self.append(event.pop("kind"), event.pop("payload"), **event)

    def events(self, kind: str | None = None, run: str | None = None, since: int = 0) -> list[Any]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [
            dict(r, seq=i)
            for i, r in enumerate(rows, start=1)
            if (kind is None or r["kind"] == kind) and (run is None or r.get("run") == run)
        ]

    def close(self) -> None:
        return None


def real_ledger() -> bool:
    """True when trainguard.ledger provides open_ledger."""
    try:
        from trainguard.ledger import open_ledger  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def ledger_backend(monkeypatch: Any) -> Iterator[None]:
    """Use the real ledger when installed, else the JSONL stand-in (same interface)."""
    if not real_ledger():
        import trainguard.guard.supervisor as sup

        def opener(url: str) -> JsonlLedger:
            return JsonlLedger(Path(url.removeprefix("sqlite:///")))

        monkeypatch.setattr(sup, "open_run_ledger", opener)
    yield


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` if it still exists."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
