"""docs/lint.md documents every rule: id, what it catches, rationale and fix."""

from __future__ import annotations

from pathlib import Path

from trainguard.lint import PARSE_ERROR, RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "lint.md"


def test_every_rule_has_a_table_row() -> None:
    text = DOC.read_text()
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in text.splitlines()
        if line.startswith("| `lint.")
    }
    assert {rule.info.id for rule in RULES} | {PARSE_ERROR} == rows


def test_rule_metadata_is_complete() -> None:
    for rule in RULES:
        info = rule.info
        assert info.title and info.catches and info.rationale and info.fix, info.id
