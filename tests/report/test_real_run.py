"""A report on a real guarded run: a 2-process gloo job with an injected sleep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainguard.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def test_report_on_a_real_guarded_run(
    guarded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "report.html"
    code = main(["report", str(guarded_run), "-o", str(out_file), "--format", "json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 1  # the injected delay is a high finding
    assert body["ledger"]["status"] == "unsigned" and body["findings"]["high"] >= 1
    assert len(body["runs"]) == 1 and body["runs"][0].startswith("test-")
    html = out_file.read_text()
    rows = re.findall(r'<tr data-severity="(\w+)" data-kind="([\w.]+)">(.*?)</tr>', html, re.S)
    injected = [cells for sev, kind, cells in rows if kind == "delay.injected" and sev == "high"]
    assert injected, [kind for _, kind, _ in rows]
    assert "sabotage.py" in injected[0]  # the blamed line is in the table
    step_time = re.search(r'<section id="step-time">(.*?)</section>', html, re.S)
    assert step_time
    # Per-rank lines (from step telemetry, or the timing windows where it is absent),
    # with the delay marked.
    assert re.findall(r'data-label="rank ([01])"', step_time.group(1)) == ["0", "1"]
    assert 'class="mark" data-severity="high"' in step_time.group(1)
    assert "signals.coverage" in html
