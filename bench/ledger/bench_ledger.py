"""Ledger throughput and verification time, on SQLite and on a loopback PostgreSQL.

Usage::

    python bench/ledger/bench_ledger.py [--events 400000] [--batch 1000] [--writers 8]
        [--verify-entries 1000000] [--no-postgres] [--work /tmp/tg_bench_ledger]

Measures, each best of ``--repeat``:

- appends/s, one writer: ``append`` (one durable transaction per event) and
  ``append_many`` in batches of ``--batch``;
- appends/s, ``--writers`` writer processes appending batches to the same ledger at
  once (each opens its own connection; the clock runs from a shared start signal to
  the last writer's last commit);
- ``verify_ledger`` over ``--verify-entries`` entries (a signed head every 1000).

PostgreSQL is a throwaway server started here on 127.0.0.1 (``initdb`` from
/usr/lib/postgresql/*/bin, run as the ``postgres`` user when we are root) with its
default durability settings (fsync on, synchronous_commit on). SQLite runs in WAL
mode with synchronous=FULL, as trainguard always opens it. Every event carries a
realistic telemetry payload of ~90 bytes. Prints a markdown section for
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trainguard.core.keys import generate_key
from trainguard.ledger import open_ledger
from trainguard.ledger.verify import verify_ledger


def payloads(start: int, count: int, rank: int) -> list[dict]:
    return [
        {
            "kind": "step",
            "payload": {
                "step": i,
                "loss": 2.5 - i * 1e-6,
                "grad_norm": 1.25 + (i % 7) * 0.01,
                "step_ms": 312.5,
                "tokens": 1048576,
            },
            "run": "bench-run",
            "rank": rank,
        }
        for i in range(start, start + count)
    ]


def _writer(url: str, rank: int, count: int, batch: int, ready, go, done) -> None:
    with open_ledger(url) as ledger:
        batches = [payloads(s, min(batch, count - s), rank) for s in range(0, count, batch)]
        ready.put(rank)
        go.wait()
        for items in batches:
            ledger.append_many(items)
        done.put(time.perf_counter())


def concurrent_rate(url: str, writers: int, total: int, batch: int) -> float:
    """Appends/s of ``writers`` processes sharing ``total`` events (fork start method)."""
    ctx = mp.get_context("fork")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = total // writers
    procs = [
        ctx.Process(target=_writer, args=(url, r, per, batch, ready, go, done))
        for r in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    start = time.perf_counter()
    go.set()
    ends = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"writer exited with {p.exitcode}")
    return per * writers / (max(ends) - start)


def single_rate(url: str, total: int, batch: int) -> float:
    with open_ledger(url) as ledger:
        if batch == 1:
            items = payloads(0, total, 0)
            start = time.perf_counter()
            for item in items:
                ledger.append(item["kind"], item["payload"], run=item["run"], rank=0)
        else:
            batches = [payloads(s, min(batch, total - s), 0) for s in range(0, total, batch)]
            start = time.perf_counter()
            for items in batches:
                ledger.append_many(items)
        return total / (time.perf_counter() - start)


def fill_for_verify(url: str, entries: int, key) -> float:
    start = time.perf_counter()
    with open_ledger(url, signing_key=key, head_interval=1000) as ledger:
        for s in range(0, entries, 10_000):
            ledger.append_many(payloads(s, min(10_000, entries - s), s % 8))
        ledger.sign_head()
    return time.perf_counter() - start


def best(repeat: int, fn: Callable[[], float], higher_is_better: bool = True) -> tuple[float, list]:
    runs = [fn() for _ in range(repeat)]
    return (max(runs) if higher_is_better else min(runs)), runs


# -- a throwaway PostgreSQL server -------------------------------------------------------


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_server(work: Path) -> Iterator[str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise RuntimeError("no PostgreSQL server installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=work))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
        timeout=180,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
        "-c max_connections=50 -c shared_buffers=256MB"
    )
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]
            ),
            capture_output=True,
            timeout=90,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def pg_database(admin: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--single-events", type=int, default=2_000, help="for unbatched append")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--verify-entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tg_bench_ledger"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chmod(args.work, 0o755)
    key = generate_key()
    rows: list[tuple[str, str, float, list]] = []
    counter = iter(range(10**6))

    def sqlite_url() -> str:
        return f"sqlite:///{args.work / f'l{next(counter)}.sqlite'}"

    def measure(backend: str, new_url: Callable[[], str]) -> None:
        r = best(args.repeat, lambda: single_rate(new_url(), args.single_events, 1))
        rows.append((backend, "1 writer, append (1 event per transaction)", *r))
        print(rows[-1], file=sys.stderr)
        r = best(args.repeat, lambda: single_rate(new_url(), args.events, args.batch))
        rows.append((backend, f"1 writer, append_many (batches of {args.batch})", *r))
        print(rows[-1], file=sys.stderr)
        r = best(
            args.repeat,
            lambda: concurrent_rate(new_url(), args.writers, args.events, args.batch),
        )
        rows.append(
            (backend, f"{args.writers} writer processes, append_many (batches of {args.batch})", *r)
        )
        print(rows[-1], file=sys.stderr)

    def verify_time(backend: str, url: str) -> None:
        fill = fill_for_verify(url, args.verify_entries, key)
        print(f"{backend}: filled {args.verify_entries} in {fill:.1f}s", file=sys.stderr)

        def once() -> float:
            start = time.perf_counter()
            report = verify_ledger(url, key.public)
            elapsed = time.perf_counter() - start
            assert report.ok and report.size == args.verify_entries, report.findings
            return elapsed

        r = best(args.repeat, once, higher_is_better=False)
        rows.append((backend, f"verify_ledger, {args.verify_entries:,} entries (s)", *r))
        print(rows[-1], file=sys.stderr)

    measure("SQLite", sqlite_url)
    verify_time("SQLite", sqlite_url())
    if not args.no_postgres:
        with postgres_server(args.work) as admin:
            names = (f"bench{i}" for i in range(10**6))
            measure("PostgreSQL", lambda: pg_database(admin, next(names)))
            verify_time("PostgreSQL", pg_database(admin, "verify"))
    shutil.rmtree(args.work, ignore_errors=True)

    print(
        f"\nMachine: {platform.platform()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )
    print("\n| back end | measurement | best | runs |\n|---|---|---|---|")
    for backend, what, value, runs in rows:
        unit = "s" if "verify" in what else "/s"
        fmt = (lambda v: f"{v:.2f}") if unit == "s" else (lambda v: f"{v:,.0f}")
        print(f"| {backend} | {what} | {fmt(value)} {unit} | {', '.join(fmt(v) for v in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
