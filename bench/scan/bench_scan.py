"""Side-by-side: trainguard scan vs picklescan, modelscan, fickling and modelaudit.

Three parts, all in one run (``--only`` picks some):

(a) detection: a generated corpus of malicious fixtures covering the bypass classes
    of the scanner research note (section 2; harmless payloads that would only
    create a marker file) and of real benign checkpoints (torch.save state_dicts of
    several model kinds and dtypes, full training checkpoints, legacy format,
    safetensors, npy/npz, joblib, DCP). Every tool runs once per file (so each file
    is named explicitly and a crash on one file cannot hide the others); the table
    gives, per class, the malicious files flagged / benign files flagged, plus
    errors and skips. Nothing is ever loaded: the tools are static scanners, fickling
    runs in --check-safety mode only, and the run fails if a marker file appears.
(b) throughput: a directory of small torch.save checkpoints (default 1,000, a few
    KiB to ~100 KiB, a realistic mix), one CLI invocation per tool over the
    directory, repeated (--repeat, median reported) with the tool order rotated
    every round so that all tools see the same machine load.
(c) large file: one torch.save state_dict of --large-gib GiB (generated under
    bench/_work and reused), wall time per tool including interpreter start-up.

How each tool's exit code and output map to flagged / clean / skipped / error is in
bench/scan/peers.py (module docstring) and in bench/RESULTS.md ("Scan").

modelaudit is not a project dependency: install it into its own venv
(``python -m venv bench/_work/modelaudit-venv && bench/_work/modelaudit-venv/bin/pip
install modelaudit==0.2.54``); without it its columns read "not installed".

Usage (from the repository root):
    . .venv/bin/activate && python bench/scan/bench_scan.py            # full run
    python bench/scan/bench_scan.py --quick                             # smoke run
    python bench/scan/bench_scan.py --only a --tools trainguard,picklescan --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
import peers

WORK = peers.ROOT / "bench" / "_work"
CASE_MARKER = Path("/nonexistent-trainguard-marker/ran")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="See the module docstring (python -m pydoc) for the outcome mapping.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 files per class, 100 files, 0.25 GiB"
    )
    parser.add_argument(
        "--only", default="a,b,c", help="parts to run: a (detection), b (1k files), c (large file)"
    )
    parser.add_argument(
        "--tools", default=",".join(peers.TOOL_NAMES), help="comma-separated tools to run"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every raw result as JSON")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per tool for (b) and (c) (default 3)"
    )
    parser.add_argument(
        "--count", type=int, default=None, help="files in (b) (default 1000; --quick 100)"
    )
    parser.add_argument(
        "--large-gib", type=float, default=None, help="size of (c) (default 2; --quick 0.25)"
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="parallel per-file scans in (a) (default 2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds per subprocess in (a), (b) (default 300)",
    )
    parser.add_argument(
        "--timeout-large",
        type=float,
        default=600,
        help="seconds per subprocess in (c) (default 600)",
    )
    parser.add_argument(
        "--modelaudit", default=str(peers.MODELAUDIT_DEFAULT), help="modelaudit executable"
    )
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if not parts or not parts <= {"a", "b", "c"}:
        parser.error("--only takes a comma-separated subset of a,b,c")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in peers.TOOL_NAMES]
    if unknown or not tools:
        parser.error(f"--tools: unknown {unknown}; choose from {', '.join(peers.TOOL_NAMES)}")
    if args.repeat < 1 or args.jobs < 1 or args.timeout <= 0 or args.timeout_large <= 0:
        parser.error("--repeat, --jobs, --timeout and --timeout-large must be positive")
    args.parts = parts
    args.tool_list = tools
    args.count = args.count or (100 if args.quick else 1000)
    args.large_gib = args.large_gib or (0.25 if args.quick else 2.0)
    return args


def _cell(n: int, counts: dict[str, int], positive: str) -> str:
    """``k/n`` plus errors and skips, e.g. ``3/5 (1 err, 1 skip)``."""
    extra = []
    if counts.get("error"):
        extra.append(f"{counts['error']} err")
    if counts.get("skipped"):
        extra.append(f"{counts['skipped']} skip")
    return f"{counts.get(positive, 0)}/{n}" + (f" ({', '.join(extra)})" if extra else "")


# ------------------------------------------------------------------------------ part (a)
def detection(tools: list[peers.Tool], args: argparse.Namespace) -> dict[str, Any]:
    """Per-file scans of the generated corpus; returns raw outcomes and the tables."""
    with tempfile.TemporaryDirectory(prefix="tg-scan-bench-") as tmp:
        work = Path(tmp).resolve()
        fixtures = corpus.malicious_fixtures(work) + corpus.benign_fixtures(work)
        if args.quick:  # a smoke run: at most two files per class
            seen: dict[tuple[bool, str], int] = defaultdict(int)
            kept = []
            for fx in fixtures:
                seen[(fx.malicious, fx.cls)] += 1
                if seen[(fx.malicious, fx.cls)] <= 2:
                    kept.append(fx)
            fixtures = kept
        files = corpus.write_corpus(fixtures, work / "corpus")
        outdir = work / "out"
        outdir.mkdir()
        jobs = [(tool, path, fx) for path, fx in files for tool in tools if tool.available]

        def one(index: int) -> tuple[int, dict[str, peers.Outcome]]:
            tool, path, _fx = jobs[index]
            out = outdir / f"{index}.json"
            cmd = tool.file_cmd(tool.exe or "", path, out)
            result = peers.run(cmd, out, args.timeout, tool.env, cwd=outdir)
            return index, tool.read_file(result)

        start = time.perf_counter()
        outcomes: dict[str, dict[str, peers.Outcome]] = defaultdict(dict)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for index, said in pool.map(one, range(len(jobs))):
                outcomes[jobs[index][2].relpath].update(said)
        elapsed = time.perf_counter() - start
        if (work / "MARKER").exists() or CASE_MARKER.exists():
            raise SystemExit("a marker file appeared: a fixture was executed; results discarded")
    views = [v for t in tools if t.available for v in t.views]
    return {"fixtures": fixtures, "outcomes": outcomes, "views": views, "seconds": elapsed}


def detection_tables(result: dict[str, Any], tools: list[peers.Tool]) -> tuple[str, list[str]]:
    """Markdown: per-class table and the list of trainguard misses / false positives."""
    fixtures: list[corpus.Fixture] = result["fixtures"]
    outcomes = result["outcomes"]
    views: list[str] = result["views"]
    missing = [t for t in tools if not t.available]
    header = ["class", "n", *views, *(t.name for t in missing)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple[bool, str], list[corpus.Fixture]] = defaultdict(list)
    for fx in fixtures:
        groups[(fx.malicious, fx.cls)].append(fx)
    totals: dict[bool, dict[str, dict[str, int]]] = {
        True: defaultdict(lambda: defaultdict(int)),
        False: defaultdict(lambda: defaultdict(int)),
    }

    def row(title: str, members: list[corpus.Fixture], malicious: bool) -> None:
        cells = [title, str(len(members))]
        for view in views:
            counts: dict[str, int] = defaultdict(int)
            for fx in members:
                status = outcomes[fx.relpath].get(view, peers.Outcome("error", "no result")).status
                counts[status] += 1
                totals[malicious][view][status] += 1
            cells.append(_cell(len(members), counts, "flagged"))
        cells += ["not installed"] * len(missing)
        lines.append("| " + " | ".join(cells) + " |")

    lines.append("| **malicious: flagged / n** | | " + " | ".join([""] * (len(header) - 2)) + " |")
    for (malicious, cls), members in sorted(
        groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])
    ):
        if malicious:
            row(f"{cls} {corpus.CLASS_TITLES.get(cls, '')}", members, True)
    n_bad = sum(fx.malicious for fx in fixtures)
    n_good = len(fixtures) - n_bad
    lines.append(
        f"| **all malicious** | {n_bad} | "
        + " | ".join(_cell(n_bad, totals[True][v], "flagged") for v in views)
        + " |" * (len(missing) + 1)
    )
    lines.append(
        "| **benign: false positives / n** | | " + " | ".join([""] * (len(header) - 2)) + " |"
    )
    for (malicious, cls), members in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if not malicious:
            row(f"{cls}: {corpus.BENIGN_TITLES.get(cls, '')}", members, False)
    lines.append(
        f"| **all benign (false positives)** | {n_good} | "
        + " | ".join(_cell(n_good, totals[False][v], "flagged") for v in views)
        + " |" * (len(missing) + 1)
    )
    problems = []
    for fx in fixtures:
        outcome = outcomes[fx.relpath].get("trainguard")
        if outcome is None:
            continue
        if fx.malicious and outcome.status != "flagged":
            problems.append(f"MISSED {fx.relpath}: {outcome.status} {outcome.detail}")
        if not fx.malicious and outcome.status != "clean":
            problems.append(f"FALSE POSITIVE {fx.relpath}: {outcome.status} {outcome.detail}")
    return "\n".join(lines), problems


# ------------------------------------------------------------------------- parts (b)/(c)
def timed_runs(
    tools: list[peers.Tool],
    target: Path,
    files: list[Path],
    args: argparse.Namespace,
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """``--repeat`` rounds, tool order rotated every round; raw timings per tool.

    A tool that times out is not run again in later rounds (its one timed-out run is
    reported as a lower bound), so one slow peer cannot eat the whole time budget.
    """
    results: dict[str, dict[str, Any]] = {t.name: {"seconds": [], "summary": []} for t in tools}
    active = [t for t in tools if t.available]
    with tempfile.TemporaryDirectory(prefix="tg-scan-bench-out-") as tmp:
        outdir = Path(tmp)
        for round_no in range(args.repeat):
            shift = round_no % max(1, len(active))
            for tool in active[shift:] + active[:shift]:
                if any(x["rc"] is None for x in results[tool.name]["summary"]):
                    continue
                out = outdir / f"{tool.name}-{round_no}.json"
                cmd = tool.dir_cmd(tool.exe or "", files, target, out)
                run = peers.run(cmd, out, timeout, tool.env, cwd=outdir)
                scanned, flagged, status = tool.read_dir(run, len(files))
                results[tool.name]["seconds"].append(run.seconds)
                results[tool.name]["summary"].append(
                    {"scanned": scanned, "flagged": flagged, "status": status, "rc": run.rc}
                )
                print(
                    f"  [{tool.name}] round {round_no + 1}: {run.seconds:.2f} s, {status}",
                    file=sys.stderr,
                )
    return results


def speed_table(
    results: dict[str, dict[str, Any]],
    tools: list[peers.Tool],
    units: float,
    unit_name: str,
    mode: str,
) -> tuple[str, dict[str, float]]:
    """Markdown table; returns the median seconds per tool for the target checks."""
    medians = {name: statistics.median(r["seconds"]) for name, r in results.items() if r["seconds"]}
    peers_ok = {
        n: s
        for n, s in medians.items()
        if n != "trainguard" and all(x["status"].startswith("ok") for x in results[n]["summary"])
    }
    fastest = min(peers_ok.values()) if peers_ok else None
    header = (
        f"| tool | runs (s) | median s | {unit_name} | trainguard speed-up vs this "
        "| reported scanned | flagged | status |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for tool in tools:
        if not tool.available:
            lines.append(f"| {tool.name} | — | — | — | — | — | — | {tool.note} |")
            continue
        r = results[tool.name]
        med = medians[tool.name]
        last = r["summary"][-1]
        statuses = sorted({x["status"] for x in r["summary"]})
        speed = units / med if med > 0 else float("inf")
        ratio = (
            ""
            if tool.name == "trainguard" or "trainguard" not in medians
            else f"{med / medians['trainguard']:.2f}x"
        )
        rate = f"{speed:.1f}" if mode == "files" else f"{speed:.2f}"
        shown = f"{med:.2f}"
        if any(x["rc"] is None for x in r["summary"]):  # timed out: bounds only
            rate, shown, ratio = f"< {rate}", f"> {med:.0f}", f"> {ratio}" if ratio else ""
        lines.append(
            f"| {tool.name} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {shown} "
            f"| {rate} | {ratio} | {last['scanned']} | {last['flagged']} "
            f"| {'; '.join(statuses)}{' — ' + tool.note if tool.note else ''} |"
        )
    if fastest is not None and "trainguard" in medians:
        name = min(peers_ok, key=peers_ok.__getitem__)
        lines.append("")
        lines.append(
            f"Fastest peer that scanned without errors: {name} ({fastest:.2f} s); trainguard "
            f"{medians['trainguard']:.2f} s = "
            f"{fastest / medians['trainguard']:.2f}x its {unit_name}."
        )
    return "\n".join(lines), medians


def _small_dir(count: int) -> tuple[Path, list[Path]]:
    directory = WORK / f"scan-small-{count}"
    existing = sorted(directory.glob("*.pt")) if directory.is_dir() else []
    if len(existing) != count:
        for path in existing:
            path.unlink()
        print(f"generating {count} small checkpoints in {directory} ...", file=sys.stderr)
        corpus.small_checkpoint_dir(directory, count)
        existing = sorted(directory.glob("*.pt"))
    return directory, existing


def _large_file(size_gib: float) -> Path:
    path = WORK / f"scan-large-{size_gib:g}gib.pt"
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr)
        corpus.large_checkpoint(path, size_gib)
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    all_tools = peers.make_tools(args.modelaudit)
    tools = [all_tools[name] for name in args.tool_list]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "argv": sys.argv[1:],
    }
    report["versions"] = peers.versions(all_tools)
    for tool in tools:
        if not tool.available:
            print(f"note: {tool.name}: {tool.note or 'not installed'}", file=sys.stderr)
    print(
        f"Run started {report['started']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    )

    if "a" in args.parts:
        print("(a) detection ...", file=sys.stderr)
        det = detection(tools, args)
        table, problems = detection_tables(det, tools)
        print(
            f"\n### (a) Detection ({len(det['fixtures'])} files, per-file runs, "
            f"{det['seconds']:.0f} s)\n"
        )
        print(table)
        print("\ntrainguard misses and false positives: " + ("none" if not problems else ""))
        for line in problems:
            print(f"- {line}")
        report["detection"] = {
            "files": {
                fx.relpath: {
                    "class": fx.cls,
                    "malicious": fx.malicious,
                    "outcomes": {v: vars(o) for v, o in det["outcomes"][fx.relpath].items()},
                }
                for fx in det["fixtures"]
            },
            "trainguard_problems": problems,
            "seconds": det["seconds"],
        }
    if "b" in args.parts:
        directory, files = _small_dir(args.count)
        size = sum(p.stat().st_size for p in files)
        print(f"(b) {len(files)} files ...", file=sys.stderr)
        res = timed_runs(tools, directory, files, args, args.timeout)
        table, medians = speed_table(res, tools, len(files), "files/s", "files")
        sizes = sorted(p.stat().st_size for p in files)
        print(
            f"\n### (b) Directory of {len(files)} small checkpoints ({size / 2**20:.1f} MiB, "
            f"{sizes[0] / 1024:.1f}-{sizes[-1] / 1024:.1f} KiB each), "
            f"{args.repeat} rounds, interleaved\n"
        )
        print(table)
        report["throughput"] = {"files": len(files), "bytes": size, "runs": res, "medians": medians}
    if "c" in args.parts:
        path = _large_file(args.large_gib)
        size = path.stat().st_size
        print(f"(c) {path} ...", file=sys.stderr)
        res = timed_runs(tools, path, [path], args, args.timeout_large)
        table, medians = speed_table(res, tools, size / 1e9, "GB/s", "bytes")
        print(
            f"\n### (c) One {size / 2**30:.2f} GiB torch.save checkpoint, "
            f"{args.repeat} rounds, interleaved\n"
        )
        print(table)
        report["large"] = {"path": str(path), "bytes": size, "runs": res, "medians": medians}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
