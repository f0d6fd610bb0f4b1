"""A tiny torchrun stand-in: start N ranks of proc_job.py, reap them, exit with the
first failure. Reaps every 0.2 s (torchrun's monitor interval is 0.1 s)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.guard.harness import JOB, job_env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = job_env(args.world)
    procs = []
    for rank in range(args.world):
        with open(out / f"rank{rank}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(JOB), "--out", str(out), *rest],
                    env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    codes: dict[int, int] = {}
    while len(codes) < len(procs):
        for rank, p in enumerate(procs):
            if rank not in codes and p.poll() is not None:
                codes[rank] = p.returncode
        time.sleep(0.2)
    failed = [c for c in codes.values() if c != 0]
    if not failed:
        return 0
    first = failed[0]
    return 128 - first if first < 0 else first


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
