"""A small torchrun stand-in for the drill: start N ranks of train.py and reap them.

Like torchrun it gives every rank ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``, forwards SIGTERM/SIGINT to the ranks, and when
one rank fails it ends the others (SIGTERM, then SIGKILL) after a short grace, so a
dead peer never leaves the rest blocked in a collective. It starts in a fraction of
torchrun's time, which keeps the drill short. Exit code: 0, or the first failure's
code (``128 + N`` for a rank killed by signal N).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.1
"""How often the ranks are reaped (torchrun's monitor interval)."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    """Run the ranks to the end; return the job's exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    out = Path(args.out)
    script = Path(__file__).with_name("train.py")
    env = dict(os.environ)
    env.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(args.nproc),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
    )
    procs: list[subprocess.Popen[bytes]] = []
    for rank in range(args.nproc):
        with open(out / f"rank{rank}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), "--out", str(out), *rest],
                    env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    first_failure: int | None = None
    failed_at: float | None = None
    terminated_at: float | None = None
    while any(p.poll() is None for p in procs):
        for proc in procs:
            code = proc.poll()
            if code not in (None, 0) and first_failure is None:
                first_failure = code
                failed_at = time.monotonic()
        now = time.monotonic()
        if failed_at is not None and terminated_at is None and now - failed_at > args.grace:
            terminated_at = now
            forward(signal.SIGTERM, None)
        if terminated_at is not None and now - terminated_at > args.grace:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(POLL_SECONDS)
    if first_failure is None:
        first_failure = next((p.returncode for p in procs if p.returncode != 0), 0)
    return 128 - first_failure if first_failure < 0 else first_failure


if __name__ == "__main__":
    sys.exit(main())
