"""The plotted sections: step time per rank, loss, gradient norm and replica agreement,
with the findings that concern each drawn as marks at their step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from trainguard.report.html import NO_DATA, more, section, table
from trainguard.report.model import RunData, Series, as_int
from trainguard.report.sections import MAX_TABLE_ROWS, MAX_TIMELINE_DOTS
from trainguard.report.svg import Mark, dot_strip, esc, line_chart, pick_series

MAX_MARKS: Final = 200
"""Marks per plot (a run with thousands of anomalies marks the most severe)."""
TIMING_KINDS: Final = ("step.slowdown", "rank.straggler", "delay.injected", "rank.hang")
LOSS_KINDS: Final = ("loss.anomaly",)
GRAD_KINDS: Final = ("grad.anomaly", "grad.rank_outlier")


def _marks(data: RunData, kinds: Sequence[str]) -> list[Mark]:
    seen: set[tuple[float, str]] = set()
    marks = []
    for row in sorted(data.findings, key=lambda r: -r.finding.severity.level):
        f = row.finding
        if f.rule not in kinds or as_int(f.step) is None:
            continue
        key = (float(f.step or 0), f.rule)
        if key in seen:
            continue
        seen.add(key)
        who = "" if f.rank is None else f" rank {f.rank}"
        marks.append(
            Mark(
                float(f.step or 0),
                f.severity.value,
                f"{f.rule}{who} step {f.step}: {f.message[:300]}",
            )
        )
        if len(marks) >= MAX_MARKS:
            break
    return marks


def _named_ranks(data: RunData, kinds: Sequence[str]) -> list[str]:
    return [
        f"rank {r.finding.rank}"
        for r in data.findings
        if r.finding.rule in kinds and r.finding.rank is not None
    ]


def _chart(
    data: RunData,
    series: dict[str, Series],
    kinds: Sequence[str],
    *,
    name: str,
    y_label: str,
    log_y: bool = False,
) -> str:
    if not series:
        return NO_DATA
    named = _named_ranks(data, kinds)
    chosen = pick_series(
        list(series.values()),
        [s.label for s in series.values() if any(s.label.endswith(n) for n in named)],
    )
    svg = line_chart(
        chosen, name=name, x_label="step", y_label=y_label, marks=_marks(data, kinds), log_y=log_y
    )
    if not svg:
        return NO_DATA
    note = ""
    if len(chosen) < len(series):
        note = (
            f'<p class="note">{len(chosen)} of {len(series)} ranks drawn: those named by '
            "findings, then the highest peaks.</p>"
        )
    counts = sum(len(s.points) for s in series.values())
    marks = [k for k in kinds if any(r.finding.rule == k for r in data.findings)]
    named_marks = esc(", ".join(marks) or "no anomalies")
    caption = f'<p class="note">{counts} values recorded; dashed lines: {named_marks}.</p>'
    return svg + note + caption


def telemetry(data: RunData) -> str:
    """Step time per rank, loss and gradient norm, with the anomalies marked."""
    source = ""
    if data.step_source == "timing.window":
        source = (
            '<p class="note">From the timing monitor\'s window averages '
            "(no per-step telemetry recorded).</p>"
        )
    step = _chart(
        data, data.step_seconds, TIMING_KINDS, name="step-time", y_label="seconds per step"
    )
    loss = _chart(data, data.loss, LOSS_KINDS, name="loss", y_label="loss")
    grad = _chart(
        data, data.grad_norm, GRAD_KINDS, name="grad-norm", y_label="gradient L2 norm", log_y=True
    )
    return (
        section("step-time", "Step time per rank", source + step)
        + section("loss", "Loss per step", loss)
        + section("grad-norm", "Gradient norm per step", grad)
    )


def replica(data: RunData) -> str:
    """Cross-rank agreement checks and the divergences found."""
    divergences = [r for r in data.findings if r.finding.rule == "replica.divergence"]
    if not data.replica:
        body = NO_DATA
    else:
        bad = [c for c in data.replica if not c.agree]
        good = [c for c in data.replica if c.agree]
        stride = max(1, len(good) // MAX_TIMELINE_DOTS)
        points = [
            (float(c.step), 0, "#2e7d32", f"step {c.step}: ranks agree") for c in good[::stride]
        ]
        points += [
            (float(c.step), 1, "#b00020", f"step {c.step}: disagree, outliers {list(c.outliers)}")
            for c in bad
        ]
        body = dot_strip(points, name="replica", x_label="step", lanes=["agree", "disagree"])
        cls = "bad" if bad else "ok"
        agreed = len(data.replica) - len(bad)
        body += f'<p class="{cls}">{agreed} of {len(data.replica)} checks agreed.</p>'
        if bad:
            body += table(
                ["step", "world size", "outlier ranks"],
                [
                    [str(c.step), str(c.world_size), esc(", ".join(map(str, c.outliers)))]
                    for c in bad[:MAX_TABLE_ROWS]
                ],
            ) + more(min(len(bad), MAX_TABLE_ROWS), len(bad), "disagreements")
    if divergences:
        body += (
            f'<p class="bad">{len(divergences)} replica.divergence finding(s); see Findings.</p>'
        )
    return section("replica", "Replica agreement", body)
