"""The rule table: one module per rule family, each exporting ``RULE``.

Adding a rule means adding its module here, a must-catch and a must-pass test in
tests/lint/, and its row in docs/lint.md (tests check the docs table matches).
"""

from __future__ import annotations

from trainguard.lint.engine import Rule
from trainguard.lint.rules import (
    conditional_sleep,
    exec_decoded,
    grad_edit,
    monkeypatch,
    network_call,
    process_kill,
    seed_override,
    unsafe_load,
    write_outside_run,
)

RULES: tuple[Rule, ...] = (
    conditional_sleep.RULE,
    process_kill.RULE,
    seed_override.RULE,
    monkeypatch.RULE,
    grad_edit.RULE,
    unsafe_load.RULE,
    write_outside_run.RULE,
    exec_decoded.RULE,
    network_call.RULE,
)
"""Every rule, in the order of docs/lint.md."""

RULE_IDS: tuple[str, ...] = tuple(rule.info.id for rule in RULES)
"""Stable ids of every rule (plus ``lint.parse-error`` for files that cannot be linted)."""
