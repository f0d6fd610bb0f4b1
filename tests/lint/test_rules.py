"""Every rule: its must-catch snippets are reported, its legitimate twins are not."""

from __future__ import annotations

import pytest

from tests.lint.samples import CATCH, PARSE, PASS, Catch, Pass
from trainguard.core.findings import Severity
from trainguard.lint import RULE_IDS, lint_source


def _describe(findings: list) -> str:
    return "; ".join(f"{f.rule}/{f.severity.value}: {f.message}" for f in findings) or "none"


@pytest.mark.parametrize("sample", CATCH, ids=[c.name for c in CATCH])
def test_must_catch(sample: Catch) -> None:
    findings = lint_source(sample.code, f"{sample.name}.py")
    hits = [f for f in findings if f.rule == sample.rule and f.severity.at_least(sample.severity)]
    assert hits, f"{sample.rule} at {sample.severity} expected; got {_describe(findings)}"
    hit = hits[0]
    assert hit.location is not None and hit.location.startswith(f"{sample.name}.py:")
    assert hit.path == f"{sample.name}.py"
    if sample.rule != PARSE:
        assert hit.evidence["code"], "a finding quotes the offending code"
        assert hit.evidence["rule"]


@pytest.mark.parametrize("sample", PASS, ids=[p.name for p in PASS])
def test_legitimate_twin_passes(sample: Pass) -> None:
    findings = lint_source(sample.code, f"{sample.name}.py")
    too_much = [
        f
        for f in findings
        if f.rule == sample.rule and (sample.allow is None or f.severity.level > sample.allow.level)
    ]
    assert not too_much, _describe(too_much)


def test_every_rule_has_catch_and_pass_samples() -> None:
    caught = {c.rule for c in CATCH}
    passed = {p.rule for p in PASS}
    for rule_id in RULE_IDS:
        assert rule_id in caught, f"{rule_id} has no must-catch sample"
        assert rule_id in passed, f"{rule_id} has no must-pass twin"
    assert PARSE in caught


def test_incident_patterns_are_covered() -> None:
    incident = {c.name for c in CATCH if c.incident}
    assert {
        "sleep-world-size-over-256",
        "kill-random-rank",
        "reseed-in-worker-init",
        "patch-adam-step",
        "flip-grad-sign-on-rank-3",
        "torch-load-no-weights-only",
    } <= incident


def test_incident_sleep_reports_the_condition_line() -> None:
    sample = next(c for c in CATCH if c.name == "sleep-world-size-over-256")
    (finding,) = [f for f in lint_source(sample.code, "t.py") if f.rule == sample.rule]
    assert "world size" in finding.evidence["sources"]
    assert finding.location == "t.py:6"
    assert 5 in finding.evidence["lines"], "the guarding `if ws > 256:` line is related"


def test_unconditional_sleep_in_loop_is_silent() -> None:
    code = "import time\nfor _ in range(3):\n    time.sleep(1)\n"
    assert lint_source(code) == []


def test_sleep_on_rank_is_medium_not_high() -> None:
    code = (
        "import time\nimport torch.distributed as dist\n"
        "if dist.get_rank() != 0:\n    time.sleep(5)\n"
    )
    (finding,) = lint_source(code)
    assert finding.severity is Severity.MEDIUM


def test_seed_worker_passes_but_constant_worker_seed_fails() -> None:
    legit = next(p for p in PASS if p.name == "worker-seed-from-initial-seed")
    assert not [f for f in lint_source(legit.code) if f.rule == "lint.seed-override"]
    bad = legit.code.replace("torch.initial_seed() % 2**32", "1234")
    assert [f for f in lint_source(bad) if f.rule == "lint.seed-override"]


def test_rank_conditional_grad_edit_escalates() -> None:
    plain = "def f(model):\n    for p in model.parameters():\n        p.grad.mul_(0.5)\n"
    ranked = (
        "import torch.distributed as dist\n"
        "def f(model):\n"
        "    for p in model.parameters():\n"
        "        if dist.get_rank() == 3:\n"
        "            p.grad.mul_(0.5)\n"
    )
    (plain_finding,) = lint_source(plain)
    (ranked_finding,) = lint_source(ranked)
    assert plain_finding.severity is Severity.MEDIUM
    assert ranked_finding.severity is Severity.CRITICAL


def test_ema_edit_becomes_finding_when_conditional_on_rank() -> None:
    code = (
        "import torch.distributed as dist\n"
        "def ema_update(ema_model, model):\n"
        "    for ema_p, p in zip(ema_model.parameters(), model.parameters()):\n"
        "        if dist.get_rank() == 2:\n"
        "            ema_p.mul_(0.9)\n"
    )
    findings = [f for f in lint_source(code) if f.rule == "lint.grad-edit"]
    assert findings and findings[0].severity is Severity.CRITICAL


def test_torch_load_weights_only_computed_is_medium() -> None:
    code = "import torch\ndef f(p, w):\n    return torch.load(p, weights_only=w)\n"
    (finding,) = lint_source(code)
    assert finding.severity is Severity.MEDIUM


def test_shadowed_builtin_is_not_a_sink() -> None:
    code = "def exec(x):\n    return x\nexec(input())\n"
    assert not [f for f in lint_source(code) if f.rule == "lint.exec-decoded"]


def test_local_variable_named_like_module_is_not_patched_module() -> None:
    code = "class R:\n    pass\nrandom = R()\nrandom.value = 3\n"
    assert not [f for f in lint_source(code) if f.rule == "lint.monkeypatch"]
