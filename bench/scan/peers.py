"""The scanners under comparison: how each is invoked and how its output is read.

Every tool runs as its own CLI in a subprocess with a timeout, on files only; no
tool is asked to load anything (fickling runs in ``--check-safety`` mode only).
Per-file outcomes are one of:

- ``flagged``: the tool reports the file as dangerous;
- ``clean``: the tool scanned it and reports nothing that fails;
- ``skipped``: the tool says it did not scan the file (unsupported type);
- ``error``: the tool reports a scan error, crashes, prints unparseable output, or
  times out (the detail says which).

Mapping, tool by tool (see also bench/RESULTS.md, "Scan"):

- trainguard (``trainguard scan FILE --format json``): the file report's verdict;
  ``malicious`` or ``unknown`` -> flagged (both fail at the default
  ``--fail-on unknown``), ``safe`` -> clean, ``error`` -> error (trainguard fails
  closed on it: exit 1); exit code other than 0/1 or no JSON -> error.
- picklescan (``picklescan -p FILE``; ``picklescan --strict`` is a separate
  column): exit 1 -> flagged; exit 2 -> flagged when a "... FOUND" line names a
  dangerous global (picklescan returns 2, not 1, when it found one before a parse
  error), otherwise error; exit 0 -> clean ("suspicious" globals do not fail
  without ``--strict``; "could not parse ... as pickle" with exit 0 is clean).
- modelscan (``modelscan scan -p FILE -r json --show-skipped``): exit 1 -> flagged;
  0 -> clean unless the JSON lists errors (-> error); 3 ("no supported files")
  -> skipped, with its reason; 2, 4, other -> error.
- fickling (``fickling --check-safety --json-output F FILE``): exit 0 -> clean
  (severity LIKELY_SAFE or below), 1 -> flagged, 2 -> error (it cannot parse the
  file as a pickle stream; its CLI has no zip path for local files).
- modelaudit (``modelaudit scan --no-cache -f json FILE``; telemetry off): exit 1
  (any WARNING or CRITICAL issue) -> flagged; exit 2 -> flagged if it still
  reported a WARNING/CRITICAL issue, skipped if it scanned 0 files, else error;
  0 -> clean. Column "modelaudit critical": flagged only by a CRITICAL issue
  (its warnings, e.g. on every torch state_dict, are ignored), from the same run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MODELAUDIT_DEFAULT = ROOT / "bench" / "_work" / "modelaudit-venv" / "bin" / "modelaudit"
TOOL_NAMES = (
    "trainguard",
    "picklescan",
    "picklescan-strict",
    "modelscan",
    "fickling",
    "modelaudit",
)

# fickling's CLI takes one file. For directory throughput, call its CLI entry point
# once per file inside one Python process (no per-file interpreter start-up, which
# favours fickling); the exit code of each call is recorded.
_FICKLING_DRIVER = """
import contextlib, io, json, os, sys
from fickling.cli import main
codes = {}
for path in sys.argv[2:]:
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            codes[path] = main(["fickling", "--check-safety", "--json-output", os.devnull, path])
    except Exception as exc:  # a crash of fickling on one file
        codes[path] = "crash:" + type(exc).__name__
with open(sys.argv[1], "w") as handle:
    json.dump(codes, handle)
"""


@dataclass
class Outcome:
    """What one tool said about one file."""

    status: str
    detail: str = ""


@dataclass
class Run:
    """One subprocess: exit code (None on timeout), output, wall time."""

    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    out_file: Path


@dataclass
class DirSummary:
    """What a tool said about a whole directory (throughput runs)."""

    scanned: int | None
    flagged: int | None
    status: str
    seconds: float


@dataclass
class Tool:
    """A scanner under comparison."""

    name: str
    exe: str | None
    views: tuple[str, ...]
    file_cmd: Callable[[str, Path, Path], list[str]]
    read_file: Callable[[Run], dict[str, Outcome]]
    dir_cmd: Callable[[str, list[Path], Path, Path], list[str]]
    read_dir: Callable[[Run, int], tuple[int | None, int | None, str]]
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def available(self) -> bool:
        return self.exe is not None


def run(cmd: list[str], out_file: Path, timeout: float, env: dict[str, str], cwd: Path) -> Run:
    """Run one command with a timeout; never raises on the tool's failure."""
    full_env = {**os.environ, **env}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        seconds = time.perf_counter() - start
        return Run(None, _text(exc.stdout), _text(exc.stderr), seconds, out_file)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, out_file)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _crash(r: Run) -> Outcome:
    if r.rc is None:
        return Outcome("error", f"timeout after {r.seconds:.0f}s")
    tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])[-1]
    return Outcome("error", f"exit {r.rc}: {tail[:120]}")


# ----------------------------------------------------------------------------- trainguard
def _tg_file(r: Run) -> dict[str, Outcome]:
    data = _json(r.out_file)
    if r.rc not in (0, 1) or not isinstance(data, dict) or not data.get("files"):
        return {"trainguard": _crash(r)}
    verdicts = {f["verdict"] for f in data["files"]}
    rules = sorted({x.get("rule", "") for f in data["files"] for x in f.get("findings", [])})
    detail = ",".join(sorted(verdicts)) + (": " + " ".join(rules[:4]) if rules else "")
    if verdicts & {"malicious", "unknown"}:
        return {"trainguard": Outcome("flagged", detail)}
    if "error" in verdicts:
        messages = [x.get("message", "") for f in data["files"] for x in f.get("findings", [])]
        return {"trainguard": Outcome("error", f"{detail} ({'; '.join(messages)[:200]})")}
    return {"trainguard": Outcome("clean", detail)}


def _tg_dir(r: Run, n: int) -> tuple[int | None, int | None, str]:
    data = _json(r.out_file)
    if r.rc not in (0, 1) or not isinstance(data, dict):
        return None, None, _crash(r).detail
    files = data.get("files", [])
    flagged = sum(f["verdict"] != "safe" for f in files)
    return len(files), flagged, "ok"


# ----------------------------------------------------------------------------- picklescan
def _ps_file(view: str) -> Callable[[Run], dict[str, Outcome]]:
    def read(r: Run) -> dict[str, Outcome]:
        found = [
            line for line in r.stdout.splitlines() if line.endswith("FOUND") or "FOUND (" in line
        ]
        if r.rc == 1 or (r.rc == 2 and found):
            detail = found[0].split(": ", 1)[-1] if found else f"exit {r.rc}"
            return {view: Outcome("flagged", detail[:120])}
        if r.rc == 0:
            note = "not parsed as pickle" if "could not parse" in r.stdout else ""
            return {view: Outcome("clean", note)}
        return {view: _crash(r)}

    return read


def _ps_dir(r: Run, n: int) -> tuple[int | None, int | None, str]:
    scanned = re.search(r"Scanned files: (\d+)", r.stdout)
    infected = re.search(r"Infected files: (\d+)", r.stdout)
    if r.rc not in (0, 1, 2) or not scanned or not infected:
        return None, None, _crash(r).detail
    return (
        int(scanned.group(1)),
        int(infected.group(1)),
        "ok" if r.rc != 2 else "exit 2 (scan error)",
    )


# ------------------------------------------------------------------------------ modelscan
def _ms_file(r: Run) -> dict[str, Outcome]:
    data = _json(r.out_file)
    if r.rc == 1:
        issue = (data or {}).get("issues", [{}])[0] if isinstance(data, dict) else {}
        return {
            "modelscan": Outcome(
                "flagged", f"{issue.get('module', '')}.{issue.get('operator', '')}"
            )
        }
    if r.rc == 3:
        skipped = ((data or {}).get("summary", {}).get("skipped", {}) or {}).get(
            "skipped_files", []
        )
        reason = skipped[0].get("description", "") if skipped else "no supported files"
        return {"modelscan": Outcome("skipped", reason[:120])}
    if r.rc == 0 and isinstance(data, dict):
        if data.get("errors"):
            return {"modelscan": Outcome("error", str(data["errors"][0])[:120])}
        return {"modelscan": Outcome("clean")}
    if isinstance(data, dict) and data.get("errors"):
        return {"modelscan": Outcome("error", str(data["errors"][0])[:120])}
    return {"modelscan": _crash(r)}


def _ms_dir(r: Run, n: int) -> tuple[int | None, int | None, str]:
    data = _json(r.out_file)
    if r.rc not in (0, 1, 2, 3) or not isinstance(data, dict):
        return None, None, _crash(r).detail
    summary = data.get("summary", {})
    scanned = summary.get("scanned", {}).get("total_scanned")
    flagged = len({i.get("source", "").split(":")[0] for i in data.get("issues", [])})
    skipped = (summary.get("skipped") or {}).get("total_skipped", 0)
    errors = len(data.get("errors", []))
    status = "ok" if not errors else f"{errors} errors"
    if skipped:  # zip members it does not scan (tensor storages), not whole files
        status += f" ({skipped} members skipped)"
    return scanned, flagged, status


# ------------------------------------------------------------------------------- fickling
def _fk_file(r: Run) -> dict[str, Outcome]:
    if r.rc == 0:
        return {"fickling": Outcome("clean")}
    if r.rc == 1:
        try:
            worst = _fk_json_multi(r.out_file.read_text())
        except (OSError, ValueError):
            worst = None
        severity = worst.get("severity", "") if isinstance(worst, dict) else ""
        return {"fickling": Outcome("flagged", severity)}
    if r.rc == 2:
        first = (r.stderr.strip().splitlines() or [""])[0]
        return {"fickling": Outcome("error", first[:120])}
    return {"fickling": _crash(r)}


def _fk_json_multi(text: str) -> Any:
    """fickling appends one JSON object per stacked pickle; return the most severe."""
    order = [
        "LIKELY_SAFE",
        "POSSIBLY_UNSAFE",
        "SUSPICIOUS",
        "LIKELY_UNSAFE",
        "LIKELY_OVERTLY_MALICIOUS",
        "OVERTLY_MALICIOUS",
    ]
    decoder = json.JSONDecoder()
    pos, worst = 0, None
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        obj, pos = decoder.raw_decode(text, pos)
        sev = obj.get("severity", "")
        if worst is None or (
            sev in order and order.index(sev) > order.index(worst.get("severity", "LIKELY_SAFE"))
        ):
            worst = obj
    return worst


def _fk_dir(r: Run, n: int) -> tuple[int | None, int | None, str]:
    data = _json(r.out_file)
    if r.rc != 0 or not isinstance(data, dict):
        return None, None, _crash(r).detail
    codes = list(data.values())
    errors = sum(c not in (0, 1) for c in codes)
    return len(codes), sum(c == 1 for c in codes), f"{errors} errors" if errors else "ok"


# ----------------------------------------------------------------------------- modelaudit
def _ma_file(r: Run) -> dict[str, Outcome]:
    data = _json(r.out_file)
    if r.rc not in (0, 1, 2) or not isinstance(data, dict):
        crash = _crash(r)
        return {"modelaudit": crash, "modelaudit critical": crash}
    issues = data.get("issues", [])
    failing = [i for i in issues if i.get("severity") in ("warning", "critical")]
    critical = [i for i in issues if i.get("severity") == "critical"]

    def first(items: list[dict[str, Any]]) -> str:
        return str(items[0].get("message", ""))[:120] if items else ""

    if r.rc == 1 or failing:
        main = Outcome(
            "flagged",
            f"{len(critical)} critical, {len(failing) - len(critical)} warning: "
            f"{first(critical or failing)}",
        )
    elif r.rc == 2 and not data.get("files_scanned"):
        main = Outcome("skipped", "0 files scanned")
    elif r.rc == 2:
        main = Outcome("error", "has_errors")
    else:
        main = Outcome("clean")
    if critical:
        crit = Outcome("flagged", first(critical))
    elif main.status == "flagged":
        crit = Outcome("clean", "warnings only")
    else:
        crit = main
    return {"modelaudit": main, "modelaudit critical": crit}


def _ma_dir(r: Run, n: int) -> tuple[int | None, int | None, str]:
    data = _json(r.out_file)
    if r.rc not in (0, 1, 2) or not isinstance(data, dict):
        return None, None, _crash(r).detail
    flagged_files = set()
    for issue in data.get("issues", []):
        if issue.get("severity") in ("warning", "critical"):
            location = str(issue.get("location") or "")
            flagged_files.add(re.split(r"[: ]", location, maxsplit=1)[0])
    status = "ok" if not data.get("has_errors") else "has_errors"
    return data.get("files_scanned"), len(flagged_files), status


# ---------------------------------------------------------------------------------- tools
def _exe(name: str) -> str | None:
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def make_tools(modelaudit: str | None) -> dict[str, Tool]:
    """Every tool, with its executable or None when it is not installed."""
    tg = _exe("trainguard")
    ps = _exe("picklescan")
    ms = _exe("modelscan")
    fk = _exe("fickling")
    ma = modelaudit if modelaudit and Path(modelaudit).exists() else None
    py = sys.executable
    return {
        "trainguard": Tool(
            "trainguard",
            tg,
            ("trainguard",),
            lambda exe, f, out: [
                exe,
                "scan",
                str(f),
                "--format",
                "json",
                "--no-progress",
                "-o",
                str(out),
            ],
            _tg_file,
            lambda exe, files, d, out: [
                exe,
                "scan",
                str(d),
                "--format",
                "json",
                "--no-progress",
                "-o",
                str(out),
            ],
            _tg_dir,
        ),
        "picklescan": Tool(
            "picklescan",
            ps,
            ("picklescan",),
            lambda exe, f, out: [exe, "-p", str(f)],
            _ps_file("picklescan"),
            lambda exe, files, d, out: [exe, "-p", str(d)],
            _ps_dir,
        ),
        "picklescan-strict": Tool(
            "picklescan-strict",
            ps,
            ("picklescan --strict",),
            lambda exe, f, out: [exe, "--strict", "-p", str(f)],
            _ps_file("picklescan --strict"),
            lambda exe, files, d, out: [exe, "--strict", "-p", str(d)],
            _ps_dir,
        ),
        "modelscan": Tool(
            "modelscan",
            ms,
            ("modelscan",),
            lambda exe, f, out: [
                exe,
                "scan",
                "-p",
                str(f),
                "-r",
                "json",
                "-o",
                str(out),
                "--show-skipped",
            ],
            _ms_file,
            lambda exe, files, d, out: [
                exe,
                "scan",
                "-p",
                str(d),
                "-r",
                "json",
                "-o",
                str(out),
                "--show-skipped",
            ],
            _ms_dir,
        ),
        "fickling": Tool(
            "fickling",
            fk,
            ("fickling",),
            lambda exe, f, out: [exe, "--check-safety", "--json-output", str(out), str(f)],
            _fk_file,
            lambda exe, files, d, out: [py, "-c", _FICKLING_DRIVER, str(out), *map(str, files)],
            _fk_dir,
            note="dir runs call fickling.cli.main per file in one process (CLI takes one file)",
        ),
        "modelaudit": Tool(
            "modelaudit",
            ma,
            ("modelaudit", "modelaudit critical"),
            lambda exe, f, out: [exe, "scan", "--no-cache", "-f", "json", "-o", str(out), str(f)],
            _ma_file,
            lambda exe, files, d, out: [
                exe,
                "scan",
                "--no-cache",
                "-f",
                "json",
                "-o",
                str(out),
                str(d),
            ],
            _ma_dir,
            env={"PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_ANALYTICS": "1"},
            note="" if ma else f"not installed (no {modelaudit}); skipped",
        ),
    }


def versions(tools: dict[str, Tool]) -> dict[str, str]:
    """Installed version of every tool (and of the libraries that wrote the corpus)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in (
        "trainguard",
        "picklescan",
        "modelscan",
        "fickling",
        "torch",
        "numpy",
        "safetensors",
        "joblib",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src/trainguard/scan"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        out["trainguard"] += f" (git {head}{', src/trainguard/scan modified' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    ma = tools["modelaudit"]
    if ma.exe:
        try:
            text = subprocess.run(
                [ma.exe, "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **ma.env},
                check=False,
            ).stdout
            out["modelaudit"] = text.strip().split()[-1] if text.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            out["modelaudit"] = "unknown"
    else:
        out["modelaudit"] = "not installed"
    out["python"] = sys.version.split()[0]
    return out
