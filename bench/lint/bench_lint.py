"""Side-by-side: trainguard lint vs bandit vs semgrep on the lint test corpus.

The sabotage snippets are the tests' must-catch corpus (tests/lint/samples.py,
CATCH); the legitimate code is the tests' must-pass twins (PASS) plus the
false-positive corpus of whole training scripts (tests/lint/corpus/*.py). Every
snippet is written to its own file under a temporary directory and each tool runs
once over the whole directory (as a CI job would), wall time measured.

Detection per file:
- trainguard: a finding of the sample's own rule at or above the sample's severity
  (false positive: any finding >= medium, the default --fail-on);
- bandit: any issue (column "bandit any") / an issue of medium or high severity
  ("bandit >= medium"), or a syntax error it reports for the file;
- semgrep: any result, or a parse error it reports for the file.

Usage (from the repository root):
    . .venv/bin/activate && python bench/lint/bench_lint.py \\
        [--semgrep bench/_work/semgrep-venv/bin/semgrep] \\
        [--semgrep-config bench/_work/semgrep-rules/rules.yaml]
semgrep is optional (not a project dependency): without a binary or a config the
column reads "n/a". The command never imports or runs the snippets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.lint.samples import CATCH, PASS  # noqa: E402

from trainguard.core.findings import Severity  # noqa: E402
from trainguard.lint import lint_paths  # noqa: E402

_TIMEOUT_S = 600


def _write_corpus(work: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Write every snippet to its own file; return file -> sample, file -> legit label."""
    catch_files: dict[str, object] = {}
    legit_files: dict[str, str] = {}
    (work / "catch").mkdir()
    (work / "legit").mkdir()
    for sample in CATCH:
        path = work / "catch" / f"{sample.name}.py"
        path.write_text(sample.code)
        catch_files[str(path)] = sample
    for sample in PASS:
        path = work / "legit" / f"twin_{sample.name}.py"
        path.write_text(sample.code)
        legit_files[str(path)] = f"twin:{sample.name}"
    for script in sorted((ROOT / "tests" / "lint" / "corpus").glob("*.py")):
        path = work / "legit" / f"corpus_{script.name}"
        shutil.copyfile(script, path)
        legit_files[str(path)] = f"corpus:{script.name}"
    return catch_files, legit_files


def _run_trainguard(work: Path) -> tuple[dict[str, list], float]:
    start = time.perf_counter()
    findings = lint_paths([str(work)])
    elapsed = time.perf_counter() - start
    per_file: dict[str, list] = defaultdict(list)
    for finding in findings:
        per_file[str(Path(finding.path or "").resolve())].append(finding)
    return per_file, elapsed


def _run_bandit(work: Path, bandit: str) -> tuple[dict[str, set[str]], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [bandit, "-q", "-r", "-f", "json", str(work)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - start
    report = json.loads(proc.stdout or "{}")
    per_file: dict[str, set[str]] = defaultdict(set)
    for issue in report.get("results", []):
        per_file[str(Path(issue["filename"]).resolve())].add(issue["issue_severity"].lower())
    for error in report.get("errors", []):
        per_file[str(Path(error["filename"]).resolve())].add("error")
    return per_file, elapsed


def _run_semgrep(work: Path, semgrep: str, config: str) -> tuple[dict[str, set[str]], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            semgrep,
            "scan",
            "--config",
            config,
            "--json",
            "--metrics",
            "off",
            "--disable-version-check",
            "-q",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - start
    report = json.loads(proc.stdout or "{}")
    per_file: dict[str, set[str]] = defaultdict(set)
    for result in report.get("results", []):
        per_file[str(Path(result["path"]).resolve())].add(result["check_id"])
    for error in report.get("errors", []):
        path = error.get("path") or next(
            (span.get("file") for span in error.get("spans", []) if span.get("file")), None
        )
        if path:
            per_file[str(Path(path).resolve())].add("parse-error")
    return per_file, elapsed


def _find(default: Path, name: str) -> str | None:
    if default.exists():
        return str(default)
    return shutil.which(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandit", default=_find(ROOT / ".venv" / "bin" / "bandit", "bandit"))
    parser.add_argument(
        "--semgrep",
        default=_find(ROOT / "bench" / "_work" / "semgrep-venv" / "bin" / "semgrep", "semgrep"),
    )
    parser.add_argument(
        "--semgrep-config",
        default=str(ROOT / "bench" / "_work" / "semgrep-rules" / "rules.yaml"),
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tg-lint-bench-") as tmp:
        work = Path(tmp).resolve()
        catch_files, legit_files = _write_corpus(work)
        tg, tg_time = _run_trainguard(work)
        bandit, bandit_time = _run_bandit(work, args.bandit) if args.bandit else ({}, float("nan"))
        has_semgrep = bool(args.semgrep) and Path(args.semgrep_config).exists()
        semgrep, semgrep_time = (
            _run_semgrep(work, args.semgrep, args.semgrep_config)
            if has_semgrep
            else ({}, float("nan"))
        )

        rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for path, sample in catch_files.items():
            row = rows[sample.rule]  # type: ignore[attr-defined]
            row["n"] += 1
            ours = [
                f
                for f in tg.get(path, [])
                if f.rule == sample.rule and f.severity.at_least(sample.severity)  # type: ignore[attr-defined]
            ]
            row["trainguard"] += bool(ours)
            row["bandit_any"] += bool(bandit.get(path))
            row["bandit_med"] += bool(bandit.get(path, set()) & {"medium", "high", "error"})
            row["semgrep"] += bool(semgrep.get(path))
        fp = defaultdict(int)
        for path in legit_files:
            fp["n"] += 1
            fp["trainguard"] += any(f.severity.at_least(Severity.MEDIUM) for f in tg.get(path, []))
            fp["bandit_any"] += bool(bandit.get(path))
            fp["bandit_med"] += bool(bandit.get(path, set()) & {"medium", "high", "error"})
            fp["semgrep"] += bool(semgrep.get(path))

    sem = (lambda v: str(v)) if has_semgrep else (lambda v: "n/a")
    header = ["rule family (must-catch snippets)", "n", "trainguard", "bandit any"]
    header += ["bandit >= medium", "semgrep"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    total = defaultdict(int)
    for rule, row in rows.items():
        for key, value in row.items():
            total[key] += value
        print(
            f"| `{rule}` | {row['n']} | {row['trainguard']} | {row['bandit_any']} | "
            f"{row['bandit_med']} | {sem(row['semgrep'])} |"
        )
    print(
        f"| **all sabotage snippets** | {total['n']} | {total['trainguard']} | "
        f"{total['bandit_any']} | {total['bandit_med']} | {sem(total['semgrep'])} |"
    )
    print(
        f"| **legitimate files flagged** (false positives) | {fp['n']} | {fp['trainguard']} | "
        f"{fp['bandit_any']} | {fp['bandit_med']} | {sem(fp['semgrep'])} |"
    )
    print(
        f"| wall time, whole corpus (s) | {len(catch_files) + len(legit_files)} files | "
        f"{tg_time:.2f} | {bandit_time:.2f} | (same run) | "
        f"{f'{semgrep_time:.2f}' if has_semgrep else 'n/a'} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
