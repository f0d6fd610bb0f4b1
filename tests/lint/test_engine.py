"""The engine: file walking, fail-closed parsing, rule selection, never executing code."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.core.errors import LintError
from trainguard.core.findings import Severity
from trainguard.lint import PARSE_ERROR, RULE_IDS, engine, lint_paths, lint_source

SLEEPY = (
    "import time\nimport torch.distributed as dist\n"
    "if dist.get_world_size() > 256:\n    time.sleep(1)\n"
)


def test_linted_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    payload = (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('executed')\n"
        "if __name__ == '__main__':\n"
        f"    pathlib.Path({str(marker)!r}).write_text('main')\n"
    )
    script = tmp_path / "payload.py"
    script.write_text(payload)
    findings = lint_paths([str(script)])
    assert not marker.exists(), "the linter imported or ran the file it linted"
    # Writing to the test's own temp dir is at most a low "absolute path" note.
    assert not [f for f in findings if f.severity.at_least(Severity.MEDIUM)]


def test_directories_are_walked_recursively(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "train.py").write_text(SLEEPY)
    (tmp_path / "pkg" / "notes.txt").write_text(SLEEPY)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hook.py").write_text(SLEEPY)
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "site.py").write_text(SLEEPY)
    findings = lint_paths([str(tmp_path)])
    assert [Path(f.path or "").name for f in findings] == ["train.py"]
    assert findings[0].location == f"{tmp_path / 'pkg' / 'sub' / 'train.py'}:4"


def test_explicit_file_is_linted_whatever_its_extension(tmp_path: Path) -> None:
    script = tmp_path / "launcher"
    script.write_text(SLEEPY)
    assert [f.rule for f in lint_paths([str(script)])] == ["lint.conditional-sleep"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LintError, match="no such file or directory"):
        lint_paths([str(tmp_path / "absent.py")])


def test_syntax_error_fails_closed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nif True\n    time.sleep(1)\n")
    (finding,) = lint_paths([str(bad)])
    assert finding.rule == PARSE_ERROR
    assert finding.severity is Severity.HIGH
    assert finding.location == f"{bad}:2"
    assert "nothing in it was checked" in finding.message


def test_undecodable_and_unknown_coding_fail_closed() -> None:
    (finding,) = lint_source(b"# -*- coding: no-such-codec -*-\nx = 1\n", "c.py")
    assert finding.rule == PARSE_ERROR
    (finding,) = lint_source(b"x = '\xff\xfe'\n", "u.py")
    assert finding.rule == PARSE_ERROR


def test_coding_cookie_is_honoured() -> None:
    source = "# -*- coding: latin-1 -*-\nimport pickle\ns = 'caf\xe9'\npickle.loads(s)\n"
    (finding,) = lint_source(source.encode("latin-1"), "l.py")
    assert finding.rule == "lint.unsafe-load"
    assert finding.evidence["code"] == "pickle.loads(s)"


def test_deeply_nested_expression_fails_closed_not_crash() -> None:
    source = "import time\nx = " + "+".join(["1"] * 3000) + "\ntime.sleep(x)\n"
    findings = lint_source(source, "deep.py")
    assert all(f.rule in (PARSE_ERROR, "lint.conditional-sleep") for f in findings)


def test_oversized_file_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_SOURCE_BYTES", 10)
    big = tmp_path / "big.py"
    big.write_text("x = 1\n" * 10)
    (finding,) = lint_paths([str(big)])
    assert finding.rule == PARSE_ERROR
    assert "limit" in finding.message


def test_rule_selection() -> None:
    code = SLEEPY + "import pickle\npickle.loads(b'')\n"
    assert {f.rule for f in lint_source(code)} == {"lint.conditional-sleep", "lint.unsafe-load"}
    assert [f.rule for f in lint_source(code, rules=["lint.unsafe-load"])] == ["lint.unsafe-load"]
    with pytest.raises(LintError, match=r"unknown lint rule 'lint\.nope'"):
        lint_source(code, rules=["lint.nope"])


def test_rule_ids_are_stable_dotted_names() -> None:
    assert len(set(RULE_IDS)) == len(RULE_IDS) == 9
    assert all(rule_id.startswith("lint.") for rule_id in RULE_IDS)


def test_findings_are_in_source_order_and_serialisable() -> None:
    code = "import pickle, torch\ntorch.load('a')\npickle.loads(b'')\n"
    findings = lint_source(code, "o.py")
    assert [f.location for f in findings] == ["o.py:2", "o.py:3"]
    data = findings[0].to_dict()
    assert data["kind"] == "lint.unsafe-load"
    assert data["evidence"]["code"] == "torch.load('a')"
    assert data["evidence"]["line"] == 2
