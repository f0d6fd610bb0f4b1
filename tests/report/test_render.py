"""The page built from ledgers written directly: every section, with and without the
new telemetry, escaping of hostile strings, and bounded size for large runs."""

from __future__ import annotations

import re
from pathlib import Path

from tests.report.ledgers import INJECTED_STEP, RUN, build_run, finding, ledger_url
from trainguard.core.findings import Severity
from trainguard.ledger import open_ledger
from trainguard.report import build_report
from trainguard.report.assets import CSP
from trainguard.report.html import NO_DATA


def section(html: str, anchor: str) -> str:
    """The HTML of one ``<section id=anchor>``."""
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert found, f"no section {anchor}"
    return found.group(1)


def polyline_points(svg: str) -> dict[str, int]:
    return {
        label: int(n)
        for label, n in re.findall(
            r'<polyline class="series" data-label="([^"]*)" data-points="(\d+)"', svg
        )
    }


def test_every_section_from_a_sabotaged_run(sabotaged_run: Path) -> None:
    report = build_report(ledger_url(sabotaged_run), generated="fixed")
    html = report.html
    assert report.integrity.status == "unsigned" and not report.integrity.failed
    assert report.counts() == {"low": 0, "medium": 0, "high": 2, "critical": 1}
    assert report.failing(Severity.HIGH) and report.failing(Severity.CRITICAL)

    findings = section(html, "findings")
    row = re.search(
        r'<tr data-severity="critical" data-kind="grad.rank_outlier">(.*?)</tr>', findings, re.S
    )
    assert (
        row and "injected sabotage" in row.group(1) and 'class="sev sev-critical"' in row.group(1)
    )

    timeline = section(html, "timeline")
    assert timeline.count('<circle class="dot"') == 3

    grad = section(html, "grad-norm")
    assert polyline_points(grad) == {"rank 0": 60, "rank 1": 60}
    mark = re.search(r'<line class="mark" data-severity="critical" x1="([\d.]+)"', grad)
    assert mark, "the injected step is not marked on the gradient plot"
    assert f"step {INJECTED_STEP}" in grad
    assert polyline_points(section(html, "loss")) == {"rank 0": 60, "rank 1": 60}
    step_time = section(html, "step-time")
    assert polyline_points(step_time) == {"rank 0": 59, "rank 1": 59}  # step 0 has no time
    assert "window averages" not in step_time

    replica = section(html, "replica")
    assert "3 of 6 checks agreed" in replica and replica.count('fill="#b00020"') == 3

    signals = section(html, "signals")
    assert "SIGKILL" in signals and "process.killed" in signals and "supervisor.exit" in signals

    lineage = section(html, "checkpoints")
    rows = re.findall(r"<tr>(.*?)</tr>", lineage.split("<h3>")[0].split("<tbody>")[1], re.S)
    assert len(rows) == 3
    assert "loaded, verified" in rows[0] and "step.rollback" not in rows[0]
    assert "rollback (newest saved step 40)" in rows[2] and "step.rollback" in rows[2]

    env = section(html, "environment")
    assert "CUDA_VISIBLE_DEVICES" in env and "2 installed distributions" in env
    assert "0123abcd" in env and NO_DATA not in env


def test_without_the_new_telemetry_every_section_says_so(bare_run: Path) -> None:
    report = build_report(ledger_url(bare_run), generated="fixed")
    html = report.html
    for anchor in ("timeline", "loss", "grad-norm", "replica"):
        assert NO_DATA in section(html, anchor), anchor
    # Kinds the guard wrote before the new telemetry still show.
    assert section(html, "checkpoints").count("signed at save") == 2
    assert "signals.coverage" in section(html, "signals")
    assert section(html, "environment").startswith(f"<h2>Environment</h2>{NO_DATA}")
    assert "No findings recorded" in section(html, "findings")
    # Step time falls back to the timing monitor's windows, and says so.
    step_time = section(html, "step-time")
    assert "window averages" in step_time
    assert polyline_points(step_time) == {"rank 0": 6, "rank 1": 6}
    assert report.counts() == {"low": 0, "medium": 0, "high": 0, "critical": 0}


def test_strings_from_the_ledger_are_inert(tmp_path: Path) -> None:
    hostile = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    run_dir = build_run(
        tmp_path / "run",
        extra_findings=[
            finding(
                "seed.tampered",
                Severity.HIGH,
                hostile,
                rank=0,
                step=3,
                location='train.py:1"><svg onload=alert(1)>',
                actor={
                    "pid": 1,
                    "cmdline": hostile,
                    "user": "</td></tr></table><script>x()</script>",
                },
                evidence={"note": hostile, "</pre><script>y()</script>": 1},
            ),
            {"kind": hostile, "severity": "low", "message": "m", "evidence": {}},
        ],
    )
    with open_ledger(ledger_url(run_dir)) as ledger:
        ledger.append("env.summary", {"python": hostile, "packages": {hostile: hostile}}, run=RUN)
        ledger.append("checkpoint.save", {"path": hostile, "step": 99, "digest": hostile}, run=RUN)
        ledger.append("process.exit", {"pid": 5, "signal": hostile, "cmdline": hostile}, run=RUN)
    html = build_report(ledger_url(run_dir), generated="fixed").html
    # Only the page's own two scripts exist, and no element an attacker could inject.
    assert len(re.findall(r"<script\b", html, re.I)) == 2
    for tag in ("<img", "<svg onload", "</td></tr></table><script"):
        assert tag not in html
    assert "onerror=alert(1)" in html.replace("&lt;img src=x ", "")  # shown as text
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in html
    # A second line of defence: the policy allows no script but ours, and no fetch.
    assert f'content="{CSP}"'.replace("'", "&#x27;") in html
    assert "default-src 'none'" in CSP and "unsafe-inline" not in CSP.split("script-src")[1]


def test_malformed_findings_are_shown_not_dropped(tmp_path: Path) -> None:
    run_dir = build_run(
        tmp_path / "run",
        sabotage=False,
        extra_findings=[
            {"kind": "x.y", "severity": "apocalyptic", "message": "bad severity"},
            {"kind": "x.z", "severity": "high", "message": "bad path", "path": ["a"]},
        ],
    )
    report = build_report(ledger_url(run_dir), generated="fixed")
    assert len(report.data.malformed) == 2
    findings = section(report.html, "findings")
    assert "Finding events that are not findings" in findings and "apocalyptic" in findings


def test_large_run_is_downsampled_and_bounded(tmp_path: Path) -> None:
    run_dir = tmp_path / "big"
    run_dir.mkdir()
    steps = 6_000
    spike = 4_211
    with open_ledger(ledger_url(run_dir)) as ledger:
        batch = []
        for step in range(steps):
            for rank in range(2):
                grad = 1e6 if (rank == 1 and step == spike) else 1.0 + (step % 7) * 0.01
                loss = "NaN" if (rank == 0 and step == 777) else 1.0
                batch.append(
                    {"kind": "step", "payload": {"step": step, "seconds": 0.1, "loss": loss,
                     "grad_norm": grad}, "run": "big", "rank": rank, "time": 1.0 + step}
                )  # fmt: skip
            if len(batch) >= 10_000:
                ledger.append_many(batch)  # type: ignore[arg-type]
                batch = []
        ledger.append_many(batch)  # type: ignore[arg-type]
        big_evidence = {"blob": "x" * 5_000}
        ledger.append_many(
            [
                {"kind": "finding", "run": "big", "rank": 0, "time": 2.0,
                 "payload": finding("grad.anomaly", Severity.HIGH, "spike " * 400, rank=1,
                                    step=spike, evidence=big_evidence)}
                for _ in range(2100)
            ]
        )  # fmt: skip
    report = build_report(ledger_url(run_dir), generated="fixed")
    html = report.html
    grad = section(html, "grad-norm")
    counts = polyline_points(grad)
    assert set(counts) == {"rank 0", "rank 1"} and max(counts.values()) <= 2000
    # The spike is kept: rank 1's line reaches the top of the plot area (y = 26).
    line = re.search(r'data-label="rank 1"[^>]*points="([^"]*)"', grad)
    assert line and any(pt.endswith(",26.0") for pt in line.group(1).split())
    assert 'class="nonfinite"' in section(html, "loss")  # the NaN loss is marked
    assert "100 more findings not shown" in section(html, "findings")
    assert len(html.encode()) < 10_000_000


def test_several_runs_in_one_ledger_and_the_run_filter(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    with open_ledger(ledger_url(run_dir)) as ledger:
        for run, loss in (("first-run-aaaa", 1.0), ("second-run-bbbb", 2.0)):
            ledger.append_many(
                [
                    {"kind": "step", "payload": {"step": s, "loss": loss}, "run": run, "rank": 0}
                    for s in range(5)
                ]
            )
    both = build_report(ledger_url(run_dir), generated="fixed")
    assert set(polyline_points(section(both.html, "loss"))) == {
        "first-ru rank 0",
        "second-r rank 0",
    }
    one = build_report(ledger_url(run_dir), run_id="second-run-bbbb", generated="fixed")
    assert one.data.runs == ["second-run-bbbb"] and one.data.events == 5
    assert polyline_points(section(one.html, "loss")) == {"rank 0": 5}
