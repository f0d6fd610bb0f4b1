"""Worker processes for ``env verify``: ``python -m trainguard.env.worker``.

Why not :mod:`multiprocessing`? Its ``spawn`` start method re-imports the caller's
``__main__``, so a library call from an unguarded script would recurse, and
``fork`` is unsafe in a process with threads (a training job always has some).
These workers are plain subprocesses speaking JSON lines: the parent writes one
chunk of :class:`~trainguard.env.filecheck.FileTask` rows per line, the worker
answers one line of :class:`~trainguard.env.filecheck.FileOutcome` rows. JSON,
not pickle, so neither side deserialises objects.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainguard.env.filecheck import FileOutcome, FileTask, PycOutcome, check_chunk

_logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A worker process died or answered garbage; the caller falls back to in-process."""


def _encode_tasks(tasks: Sequence[FileTask]) -> bytes:
    return json.dumps([list(task) for task in tasks]).encode("utf-8") + b"\n"


def _decode_tasks(line: bytes) -> list[FileTask]:
    rows = json.loads(line)
    return [
        FileTask(int(r[0]), str(r[1]), r[2], r[3], r[4], tuple(str(p) for p in r[5])) for r in rows
    ]


def _encode_outcomes(outcomes: Sequence[FileOutcome]) -> bytes:
    rows = [[*o[:7], [list(p) for p in o.pycs], o.bytes_read] for o in outcomes]
    return json.dumps(rows).encode("utf-8") + b"\n"


def _decode_outcomes(line: bytes) -> list[FileOutcome]:
    rows = json.loads(line)
    return [
        FileOutcome(
            int(r[0]),
            str(r[1]),
            str(r[2]),
            r[3],
            r[4],
            r[5],
            r[6],
            tuple(PycOutcome(*p) for p in r[7]),
            int(r[8]),
        )
        for r in rows
    ]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Make sure the child imports this very trainguard, even from a source checkout.
    package_root = str(Path(__file__).resolve().parents[2])
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root + (os.pathsep + existing if existing else "")
    return env


def run_in_workers(
    chunks: Sequence[Sequence[FileTask]],
    jobs: int,
    on_outcomes: Callable[[int, list[FileOutcome]], None],
) -> list[int]:
    """Run chunks in up to ``jobs`` worker processes.

    Args:
        chunks: Work, in submission order.
        jobs: Worker processes to start.
        on_outcomes: Called (from worker threads, serialised by a lock) with the chunk
            index and its outcomes.

    Returns:
        Indices of chunks that did not complete because a worker failed; the caller
        runs them in-process.
    """
    if not sys.executable:
        return list(range(len(chunks)))
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(chunks)):
        todo.put(index)
    lock = threading.Lock()
    failed: list[int] = []

    def drive() -> None:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trainguard.env.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_worker_env(),
            )
        except OSError as exc:
            _logger.warning("cannot start a verify worker: %s", exc)
            return
        assert proc.stdin is not None and proc.stdout is not None
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    proc.stdin.write(_encode_tasks(chunks[index]))
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if not line:
                        raise WorkerError(f"worker exited with {proc.poll()}")
                    outcomes = _decode_outcomes(line)
                except (OSError, ValueError, WorkerError) as exc:
                    _logger.warning("verify worker failed (%s); finishing in-process", exc)
                    with lock:
                        failed.append(index)
                    break
                with lock:
                    on_outcomes(index, outcomes)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(max(1, jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Anything still queued had no live worker to take it.
    while True:
        try:
            failed.append(todo.get_nowait())
        except queue.Empty:
            break
    return sorted(failed)


def _serve(stdin: Any, stdout: Any) -> None:
    for line in stdin:
        if not line.strip():
            continue
        stdout.write(_encode_outcomes(check_chunk(_decode_tasks(line))))
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
