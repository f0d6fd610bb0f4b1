"""Time `env verify` of the installed torch against `sha256sum` over the same files.

sha256sum is the I/O-and-hash bound: it reads and hashes exactly the files that
RECORD lists, nothing more. Warm page cache (one untimed pass first). Reports the
median of --repeat runs for:

- sha256sum, one process (the baseline the target is measured against),
- sha256sum, --jobs processes (xargs -P),
- env verify, RECORD hashes only (--no-bytecode, no unlisted-file walk),
- env verify, full (RECORD + bytecode recompiled and compared + unlisted files).

    python bench/env/bench_env_verify.py --dist torch --jobs 2 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from trainguard.env.interpreter import current_interpreter
from trainguard.env.record import (
    find_distributions,
    read_record,
    record_abspath,
    select_distributions,
)
from trainguard.env.verify import verify_environment


def record_files(dist_name: str) -> list[str]:
    interp = current_interpreter()
    (dist,) = select_distributions(list(find_distributions(interp.path_dirs())), [dist_name])
    parsed = read_record(dist)
    assert parsed is not None
    files = []
    for entry in parsed[0]:
        if entry.digest_hex is None:
            continue
        path = record_abspath(dist.site_dir, entry.path)
        if path.is_file():
            files.append(str(path))
    return files


def sha256sum(files: list[str], jobs: int) -> float:
    listing = "\0".join(files).encode()
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-0", "-n", "500", "-P", str(jobs), "sha256sum", "--"],
        input=listing,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=600,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dist", default="torch")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = record_files(args.dist)
    total = sum(Path(f).stat().st_size for f in files)
    sha256sum(files, 1)  # warm the page cache
    rows: dict[str, list[float]] = {
        "sha256sum (1 process)": [],
        f"sha256sum (xargs -P {args.jobs})": [],
        f"env verify, RECORD only (--jobs {args.jobs})": [],
        f"env verify, full: RECORD + bytecode + unlisted (--jobs {args.jobs})": [],
    }
    names = list(rows)
    pycs = 0
    for _ in range(args.repeat):
        rows[names[0]].append(sha256sum(files, 1))
        rows[names[1]].append(sha256sum(files, args.jobs))
        report = verify_environment(
            dists=[args.dist], jobs=args.jobs, check_bytecode=False, check_unlisted=False
        )
        assert not report.findings, report.findings[:3]
        rows[names[2]].append(report.seconds)
        report = verify_environment(dists=[args.dist], jobs=args.jobs)
        assert not report.findings, report.findings[:3]
        pycs = report.pycs
        rows[names[3]].append(report.seconds)
    base = statistics.median(rows[names[0]])
    print(
        f"{args.dist}: {len(files)} files, {total / 1e6:.0f} MB, {pycs} pycs, cpus={os.cpu_count()}"
    )
    print("| what | median s | vs sha256sum |")
    print("|---|---|---|")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
