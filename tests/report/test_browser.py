"""The report in a real headless Chromium: it loads with no console message, its
script runs, the plots render, and a screenshot shows the injected sabotage in the
findings table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.report import browser
from tests.report.ledgers import build_run, finding, ledger_url
from tests.report.png import Image, decode
from trainguard.core.findings import Severity
from trainguard.report import build_report
from trainguard.report.svg import SEVERITY_COLOURS

pytestmark = [pytest.mark.browser, browser.needs_chromium, pytest.mark.timeout(240)]

HOSTILE = (
    '<script>document.title="pwned";console.error("pwned")</script><img src=x onerror=alert(1)>'
)


def write_page(run_dir: Path, out: Path) -> Path:
    out.write_text(build_report(ledger_url(run_dir), generated="fixed").html, encoding="utf-8")
    return out


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def count_colour(image: Image, box: tuple[int, ...], colour: tuple[int, int, int]) -> int:
    """Pixels of ``colour`` (within 3 per channel) inside ``box`` = (left, top, width, height),
    sampling every other column."""
    left, top, width, height = box
    near = {
        bytes((colour[0] + dr, colour[1] + dg, colour[2] + db))
        for dr in range(-3, 4)
        for dg in range(-3, 4)
        for db in range(-3, 4)
        if all(0 <= c + d <= 255 for c, d in zip(colour, (dr, dg, db), strict=True))
    }
    n = image.channels
    hits = 0
    for y in range(max(top, 0), min(top + height, image.height)):
        row = image.rows[y]
        for x in range(max(left, 0), min(left + width, image.width), 2):
            if row[x * n : x * n + 3] in near:
                hits += 1
    return hits


def test_loads_without_console_messages_and_strings_stay_inert(tmp_path: Path) -> None:
    run_dir = build_run(
        tmp_path / "run",
        extra_findings=[finding("seed.tampered", Severity.HIGH, HOSTILE, rank=0, step=2)],
    )
    page = write_page(run_dir, tmp_path / "report.html")
    run = browser.dump_dom(page, tmp_path / "profile")
    # No console line at all: no script error, no CSP violation, no blocked fetch.
    assert run.console_lines() == []
    assert run.body_attr("data-selfcheck") == "ok"
    assert re.search(r'<pre id="js-errors"></pre>', run.stdout)
    # The hostile message is text: no element was created from it, nothing ran.
    assert "<title>trainguard report: run-7f3a</title>" in run.stdout
    assert "<img" not in run.stdout and "pwned</script>" not in run.stdout
    assert "&lt;img src=x onerror=alert(1)&gt;" in run.stdout
    # The filter script ran over every row.
    assert re.search(r'<span id="f-count" class="note">4 shown</span>', run.stdout)


def test_plots_render_with_data_points(sabotaged_run: Path, tmp_path: Path) -> None:
    page = write_page(sabotaged_run, tmp_path / "report.html")
    run = browser.dump_dom(page, tmp_path / "profile")
    assert run.console_lines() == []
    assert run.body_attr("data-plots") == "5"  # timeline, step time, loss, grad norm, replicas
    points = int(run.body_attr("data-points") or 0)
    assert points == 59 * 2 + 60 * 2 * 2 + 3 + 6  # lines + timeline dots + replica dots
    lines = re.findall(r'<polyline class="series"[^>]* points="([^"]+)"', run.stdout)
    assert len(lines) == 6 and all(len(p.split()) >= 59 for p in lines)


def test_screenshot_shows_the_injected_sabotage(guarded_run: Path, tmp_path: Path) -> None:
    """The real guarded run's findings table shows the injected delay's row in the
    high-severity colour; a run whose only finding is low shows no such colour there."""
    high, low = rgb(SEVERITY_COLOURS["high"]), rgb(SEVERITY_COLOURS["low"])
    page = write_page(guarded_run, tmp_path / "report.html")
    dom = browser.dump_dom(page, tmp_path / "profile")
    assert dom.console_lines() == []
    rect = dom.body_attr("data-findings-rect")
    assert rect, "the page did not record where its findings table is"
    box = tuple(int(v) for v in rect.split(","))
    assert len(box) == 4 and box[1] + 100 < browser.WINDOW[1], box  # the table is on screen
    assert re.search(r'<tr data-severity="high" data-kind="delay.injected"', dom.stdout)
    shot = tmp_path / "shot.png"
    browser.screenshot(page, tmp_path / "profile", shot)
    image = decode(shot.read_bytes(), max_rows=min(box[1] + box[3], browser.WINDOW[1]))
    assert image.width == browser.WINDOW[0]
    assert count_colour(image, box, high) > 200  # a severity cell is ~60 x 80 px

    control_dir = build_run(
        tmp_path / "control",
        sabotage=False,
        extra_findings=[finding("step.slowdown", Severity.LOW, "a little slower", rank=0, step=5)],
    )
    control = write_page(control_dir, tmp_path / "control.html")
    dom = browser.dump_dom(control, tmp_path / "profile")
    box = tuple(int(v) for v in (dom.body_attr("data-findings-rect") or "").split(","))
    shot = tmp_path / "control.png"
    browser.screenshot(control, tmp_path / "profile", shot)
    image = decode(shot.read_bytes(), max_rows=min(box[1] + box[3], browser.WINDOW[1]))
    assert count_colour(image, box, low) > 100
    assert count_colour(image, box, high) == 0


def test_console_check_sees_a_broken_or_injected_script(
    sabotaged_run: Path, tmp_path: Path
) -> None:
    """Negative control: the checks above would see a script the policy blocks."""
    page = write_page(sabotaged_run, tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    broken = text.replace("'use strict';", "'use strict';null.boom();", 1)
    assert broken != text
    page.write_text(broken, encoding="utf-8")
    run = browser.dump_dom(page, tmp_path / "profile")
    assert any("Content Security Policy" in line for line in run.console_lines())
    assert run.body_attr("data-selfcheck") is None  # the changed script never ran
