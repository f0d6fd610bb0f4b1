"""Assemble the self-contained page: one HTML file, inline CSS/SVG/JS, nothing fetched."""

from __future__ import annotations

from trainguard.report import events, plots, sections
from trainguard.report.assets import CSP, CSS, GUARD_JS, PAGE_JS
from trainguard.report.integrity import Integrity
from trainguard.report.model import RunData
from trainguard.report.svg import esc

NAV = (
    ("findings", "Findings"),
    ("timeline", "Timeline"),
    ("step-time", "Step time"),
    ("loss", "Loss"),
    ("grad-norm", "Gradient norm"),
    ("replica", "Replicas"),
    ("signals", "Signals and exits"),
    ("checkpoints", "Checkpoints"),
    ("environment", "Environment"),
)


def render(data: RunData, integrity: Integrity, *, generated: str) -> str:
    """The whole page as text."""
    title = f"trainguard report: {data.runs[0][:40] if data.runs else 'run'}"
    nav = " · ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in NAV)
    body = "".join(
        [
            sections.header(data, integrity, generated),
            f'<nav class="meta">{nav}</nav>',
            sections.summary(data),
            sections.findings_table(data),
            sections.timeline(data),
            plots.telemetry(data),
            plots.replica(data),
            events.processes(data),
            events.checkpoints(data),
            events.environment(data),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f"<script>{GUARD_JS}</script></head>"
        f'<body data-integrity="{esc(integrity.status)}">{body}'
        f"<script>{PAGE_JS}</script></body></html>\n"
    )
