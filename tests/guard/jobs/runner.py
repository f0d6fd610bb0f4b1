"""Launch a real multi-process gloo job on localhost for the guard tests.

Each rank is a separate ``python train_job.py`` process (no torchrun: it starts in a
fraction of the time). Every process is bounded by a deadline and killed if the job
does not finish; a failing rank's log is part of the assertion message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port

JOB = Path(__file__).with_name("train_job.py")
REPO = Path(__file__).resolve().parents[3]


class JobFailed(AssertionError):
    """A rank exited non-zero or the job ran past its deadline."""


def run_job(
    out_dir: Path,
    world: int,
    args: list[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    script: Path = JOB,
) -> list[dict[str, Any]]:
    """Run ``script`` on ``world`` ranks; return each rank's result JSON (rank order)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    base_env = dict(os.environ)
    base_env.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), base_env.get("PYTHONPATH", "")]),
            "TRAINGUARD_RUN_ID": f"test-{port}",
        }
    )
    base_env.update(env or {})
    for rank in range(world):
        log = out_dir / f"rank{rank}.log"
        e = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank))
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                [sys.executable, str(script), "--out", str(out_dir), *(args or [])],
                env=e,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=str(out_dir),
            )
        procs.append((p, log))
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    try:
        for rank, (p, _log) in enumerate(procs):
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                rc = p.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                failed.append(f"rank {rank}: timed out after {timeout}s")
                break
            if rc != 0:
                failed.append(f"rank {rank}: exit {rc}")
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    if failed:
        logs = "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in procs
        )
        raise JobFailed("; ".join(failed) + "\n" + logs)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


def findings_of(results: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Every finding of ``kind`` reported by any rank."""
    return [f for res in results for f in res["findings"] if f["kind"] == kind]
