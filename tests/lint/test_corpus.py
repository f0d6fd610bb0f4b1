"""False-positive corpus: real-shaped legitimate training scripts lint clean (nothing >= medium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.core.findings import Severity
from trainguard.lint import lint_paths

CORPUS = Path(__file__).parent / "corpus"
SCRIPTS = sorted(CORPUS.glob("*.py"))


def test_corpus_is_present() -> None:
    assert len(SCRIPTS) >= 4


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_legitimate_script_has_no_medium_or_worse_findings(script: Path) -> None:
    findings = lint_paths([str(script)])
    serious = [f for f in findings if f.severity.at_least(Severity.MEDIUM)]
    assert not serious, "; ".join(f"{f.location} {f.rule}: {f.message}" for f in serious)


def test_corpus_with_one_injected_sabotage_is_caught(tmp_path: Path) -> None:
    """The corpus is not clean because rules are blind: inject the incident's sleep."""
    source = (CORPUS / "ddp_train.py").read_text()
    needle = "            optimizer.step()\n"
    assert needle in source
    sabotaged = source.replace(
        needle,
        needle + "            if world_size > 256:\n                time.sleep(0.2)\n",
    )
    target = tmp_path / "ddp_train.py"
    target.write_text(sabotaged)
    findings = lint_paths([str(target)])
    assert [(f.rule, f.severity) for f in findings if f.severity.at_least(Severity.MEDIUM)] == [
        ("lint.conditional-sleep", Severity.HIGH)
    ]
