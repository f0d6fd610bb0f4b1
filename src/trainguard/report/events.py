"""The tabular sections: signals and exits, checkpoint lineage, and the environment."""

from __future__ import annotations

from typing import Any, Final

from trainguard.report.html import (
    NO_DATA,
    as_json,
    cut,
    definition_list,
    more,
    section,
    table,
    when,
)
from trainguard.report.model import EventRow, RunData, as_int
from trainguard.report.sections import MAX_TABLE_ROWS, severity_cell
from trainguard.report.svg import esc

PROCESS_FINDINGS: Final = ("process.signal", "process.killed", "rank.hang", "guard.disabled")
CHECKPOINT_FINDINGS: Final = ("weights.tampered", "step.rollback", "load.unsafe_global")


def _process_cells(e: EventRow) -> list[str]:
    p = e.payload
    detail = {k: v for k, v in p.items() if k not in ("pid", "rank", "signal", "exit_code")}
    return [
        f'<td data-key="{e.seq}">{e.seq}</td>',
        when(e.time),
        cut(e.kind, 60),
        cut(p.get("rank", e.rank) if p.get("rank", e.rank) is not None else "", 20),
        cut(p.get("pid", e.pid) or "", 20),
        cut(p.get("signal") or "", 40),
        cut("" if p.get("exit_code") is None else p.get("exit_code"), 20),
        as_json(detail, 600, compact=True) if detail else "",
    ]


def processes(data: RunData) -> str:
    """Signals received, processes started, killed and exited, and the supervisor's actions."""
    found = [r for r in data.findings if r.finding.rule in PROCESS_FINDINGS]
    if not data.process and not found:
        return section("signals", "Signals and exits", NO_DATA)
    body = ""
    if found:
        body += "<h3>Findings</h3>" + table(
            ["severity", "kind", "rank", "message"],
            [
                [
                    severity_cell(r.finding.severity.value),
                    cut(r.finding.rule),
                    cut(r.finding.rank if r.finding.rank is not None else ""),
                    f'<td class="msg">{cut(r.finding.message)}</td>',
                ]
                for r in found[:MAX_TABLE_ROWS]
            ],
        )
    if data.process:
        rows = data.process[:MAX_TABLE_ROWS]
        body += (
            "<h3>Events</h3>"
            + table(
                ["seq", "time (UTC)", "event", "rank", "pid", "signal", "exit", "details"],
                [_process_cells(e) for e in rows],
            )
            + more(len(rows), len(data.process), "events")
        )
    else:
        body += "<h3>Events</h3>" + NO_DATA
    return section("signals", "Signals and exits", body)


def _path_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def checkpoints(data: RunData) -> str:
    """Saves and loads in ledger order with what is known about each one's integrity."""
    related = [r for r in data.findings if r.finding.rule in CHECKPOINT_FINDINGS]
    if not data.checkpoints and not related:
        return section("checkpoints", "Checkpoint lineage", NO_DATA)
    loads = {e.payload.get("digest") for e in data.checkpoints if e.kind == "checkpoint.load"}
    saves = {e.payload.get("digest") for e in data.checkpoints if e.kind == "checkpoint.save"}
    bad_paths: dict[str, str] = {}
    for r in related:
        f = r.finding
        path = f.path or _path_of(f.evidence.get("checkpoint"))
        if path:
            bad_paths.setdefault(path, f.rule)
    rows = []
    newest = -1
    for e in data.checkpoints[:MAX_TABLE_ROWS]:
        p = e.payload
        path = _path_of(p.get("path"))
        step = as_int(p.get("step"))
        digest = p.get("digest")
        if e.kind == "checkpoint.save":
            status = '<span class="ok">signed at save</span>'
            if digest in loads:
                status += ' · <span class="ok">loaded, verified</span>'
            newest = max(newest, step if step is not None else -1)
        else:
            status = '<span class="ok">verified at load</span>'
            if digest not in saves:
                status += ' · <span class="warn">no save of this digest in this ledger</span>'
            if step is not None and step < newest:
                status += f' · <span class="bad">rollback (newest saved step {newest})</span>'
        rule = bad_paths.get(path)
        if rule is not None and (rule != "step.rollback" or e.kind == "checkpoint.load"):
            status += f' · <span class="bad">{esc(rule)}</span>'
        rows.append(
            [
                f'<td data-key="{e.seq}">{e.seq}</td>',
                when(e.time),
                esc(e.kind.removeprefix("checkpoint.")),
                cut("" if step is None else step, 20),
                cut(p.get("rank", e.rank) if p.get("rank", e.rank) is not None else "", 20),
                f'<td class="msg">{cut(path, 300)}</td>',
                f"<code>{cut(str(digest)[:16], 16)}</code>",
                status,
            ]
        )
    body = ""
    if rows:
        body += table(
            ["seq", "time (UTC)", "event", "step", "rank", "path", "digest", "status"], rows
        )
        body += more(len(rows), len(data.checkpoints), "checkpoint events")
    else:
        body += NO_DATA
    if related:
        body += "<h3>Checkpoint findings</h3>" + table(
            ["severity", "kind", "message"],
            [
                [
                    severity_cell(r.finding.severity.value),
                    cut(r.finding.rule),
                    f'<td class="msg">{cut(r.finding.message)}</td>',
                ]
                for r in related[:MAX_TABLE_ROWS]
            ],
        )
    return section("checkpoints", "Checkpoint lineage", body)


MAX_PACKAGES: Final = 3000


def environment(data: RunData) -> str:
    """The ``env.summary`` snapshot (interpreter, packages, start-up hooks, git, variables)."""
    body = ""
    env = data.env
    if env is None:
        body += NO_DATA
    else:
        plain = {
            k: v for k, v in env.items() if k not in ("packages", "variables", "startup", "git")
        }
        body += definition_list(plain)
        variables = env.get("variables")
        if isinstance(variables, dict) and variables:
            body += "<h3>Variables</h3>" + definition_list(variables)
        startup = env.get("startup")
        if isinstance(startup, list) and startup:
            body += f'<h3>Start-up hooks</h3><p class="warn">{len(startup)} item(s)</p>' + as_json(
                startup, 6000
            )
        git = env.get("git")
        body += "<h3>Git</h3>" + (as_json(git) if git else NO_DATA)
        packages = env.get("packages")
        if isinstance(packages, dict) and packages:
            items = sorted(packages.items())[:MAX_PACKAGES]
            body += (
                f"<details><summary>{len(packages)} installed distributions</summary>"
                + table(["name", "version"], [[cut(k, 200), cut(v, 100)] for k, v in items])
                + more(len(items), len(packages), "distributions")
                + "</details>"
            )
    if data.starts:
        first = min(data.starts, key=lambda e: (e.rank is None, e.rank or 0, e.seq))
        start = first.payload
        body += f"<h3>Guard at start (rank {esc(first.rank)})</h3>" + definition_list(
            {
                k: v
                for k, v in start.items()
                if k in ("world_size", "monitors", "ddp", "torch", "settings")
            }
        )
    return section("environment", "Environment", body)
