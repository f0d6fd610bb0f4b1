"""The top of the page: header with the verification banner, summary, findings table
and timeline; each rendered from :class:`RunData` to escaped HTML."""

from __future__ import annotations

import math
from typing import Final

from trainguard.core.findings import Severity
from trainguard.report.html import (
    NO_DATA,
    as_json,
    cut,
    definition_list,
    more,
    section,
    table,
    when,
    who,
)
from trainguard.report.integrity import Integrity
from trainguard.report.model import FindingRow, RunData, as_int
from trainguard.report.svg import (
    SEVERITY_COLOURS,
    dot_strip,
    esc,
    num,
)

MAX_FINDING_ROWS: Final = 2000
MAX_TABLE_ROWS: Final = 500
"""Rows of the smaller tables (process events, checkpoints, disagreements)."""
MAX_TIMELINE_DOTS: Final = 2000

SEVERITIES: Final = tuple(reversed(list(Severity)))
"""Most severe first."""


def severity_cell(severity: str) -> str:
    """The coloured severity cell (the screenshot test looks for this colour)."""
    return (
        f'<td class="sev sev-{esc(severity)}" data-key="{_rank_of(severity)}">{esc(severity)}</td>'
    )


def _rank_of(severity: str) -> int:
    try:
        return Severity(severity).level
    except ValueError:
        return -1


def header(data: RunData, integrity: Integrity, generated: str) -> str:
    """Title, run ids, time span and the verification banner."""
    runs = ", ".join(f"<code>{cut(r or '(none)', 80)}</code>" for r in data.runs) or "none"
    span = ""
    if data.first_time is not None and data.last_time is not None:
        span = (
            f" · {when(data.first_time)} – {when(data.last_time)} UTC "
            f"({num(data.last_time - data.first_time)} s)"
        )
    extra = ""
    if integrity.findings:
        rows = [
            [severity_cell(f.severity.value), cut(f.rule), f'<td class="msg">{cut(f.message)}</td>']
            for f in integrity.findings[:MAX_TABLE_ROWS]
        ]
        extra = table(["severity", "check", "what changed"], rows)
    return (
        "<header><h1>trainguard run report</h1>"
        f'<p class="meta">ledger <code>{cut(data.ledger_url, 300)}</code> · run {runs}{span} · '
        f"{data.events} events · generated {esc(generated)}</p>"
        f'<div class="banner {esc(integrity.status)}" id="integrity" '
        f'data-status="{esc(integrity.status)}">{esc(integrity.summary)}</div>{extra}'
        '<pre id="js-errors"></pre></header>'
    )


def summary(data: RunData) -> str:
    """Counts by severity and what kinds of telemetry the ledger holds."""
    counts = {s.value: 0 for s in SEVERITIES}
    for row in data.findings:
        counts[row.finding.severity.value] += 1
    chips = "".join(
        f'<span class="sev-{s}" data-count="{counts[s]}">{counts[s]} {s}</span>' for s in counts
    )
    ranks = sorted(data.ranks)
    world = {as_int(r.payload.get("world_size")) for r in data.starts} - {None}
    facts = {
        "findings": len(data.findings),
        "ranks seen": ", ".join(map(str, ranks)) or "none",
        "world size": ", ".join(map(str, sorted(w for w in world if w is not None))) or "unknown",
        "event kinds": ", ".join(f"{k} ({n})" for k, n in sorted(data.kinds.items())),
    }
    if data.malformed:
        facts["malformed finding events"] = len(data.malformed)
    return section(
        "summary", "Summary", f'<div class="chips">{chips}</div>{definition_list(facts)}'
    )


def _number_cell(value: int | None) -> str:
    """A sortable cell for a rank or step (empty when unknown)."""
    if value is None:
        return '<td data-key="-1"></td>'
    return f'<td data-key="{esc(value)}">{esc(value)}</td>'


def _finding_row(row: FindingRow) -> tuple[list[str], str]:
    f = row.finding
    actor = who(f.actor) if isinstance(f.actor, dict) else ""
    evidence = (
        f"<details><summary>evidence</summary>{as_json(dict(f.evidence))}</details>"
        if f.evidence
        else ""
    )
    where = cut(f.location or f.path or "", 300)
    cells = [
        severity_cell(f.severity.value),
        cut(f.rule, 100),
        _number_cell(f.rank),
        _number_cell(f.step),
        f'<td data-key="{row.time}">{when(f.time if f.time is not None else row.time)}</td>',
        f'<td class="msg">{cut(f.message)}{evidence}</td>',
        where + actor,
        f'<td data-key="{row.seq}">{row.seq}</td>',
    ]
    return cells, f'data-severity="{esc(f.severity.value)}" data-kind="{esc(f.rule)}"'


def findings_table(data: RunData) -> str:
    """Every finding (most severe first when there are too many), filterable and sortable."""
    if not data.findings and not data.malformed:
        return section("findings", "Findings", '<p class="ok">No findings recorded.</p>')
    rows = data.findings
    if len(rows) > MAX_FINDING_ROWS:
        rows = sorted(rows, key=lambda r: (-r.finding.severity.level, r.seq))[:MAX_FINDING_ROWS]
        rows.sort(key=lambda r: r.seq)
    built = [_finding_row(r) for r in rows]
    boxes = "".join(
        f'<label><input type="checkbox" class="f-sev" value="{s.value}" checked> {s.value}</label>'
        for s in SEVERITIES
    )
    controls = (
        f'<div class="controls">{boxes}<label>filter <input type="search" id="f-text" '
        'placeholder="kind, rank, text"></label><span id="f-count" class="note"></span></div>'
    )
    body = controls + table(
        ["severity", "kind", "rank", "step", "time (UTC)", "message", "where / who", "seq"],
        [cells for cells, _ in built],
        table_id="findings-table",
        row_attrs=[attrs for _, attrs in built],
    )
    body += more(len(rows), len(data.findings), "findings")
    if data.malformed:
        body += "<h3>Finding events that are not findings</h3>" + table(
            ["seq", "rank", "payload"],
            [[str(e.seq), str(e.rank), as_json(e.payload)] for e in data.malformed[:100]],
        )
    return section("findings", "Findings", body)


def timeline(data: RunData) -> str:
    """Findings over time, one lane per severity."""
    if not data.findings:
        return section("timeline", "Timeline of findings", NO_DATA)
    t0 = data.first_time or 0.0
    lanes = [s.value for s in SEVERITIES]
    rows = sorted(data.findings, key=lambda r: -r.finding.severity.level)[:MAX_TIMELINE_DOTS]
    points = []
    for row in rows:
        f = row.finding
        t = f.time if isinstance(f.time, int | float) and math.isfinite(f.time) else row.time
        tip = f"{f.severity.value} {f.rule} rank {f.rank} step {f.step}: {f.message[:300]}"
        points.append(
            (t - t0, lanes.index(f.severity.value), SEVERITY_COLOURS[f.severity.value], tip)
        )
    svg = dot_strip(points, name="timeline", x_label="seconds since the first event", lanes=lanes)
    return section(
        "timeline", "Timeline of findings", svg + more(len(rows), len(data.findings), "findings")
    )
