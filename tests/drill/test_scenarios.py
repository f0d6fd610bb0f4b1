"""The scenario table: one per documented move, expected kinds that exist, stable names."""

from __future__ import annotations

import pytest

from trainguard.core.errors import UsageError
from trainguard.core.findings import FINDING_KINDS
from trainguard.drill.scenarios import CLEAN, SABOTAGES, select


def test_every_sabotage_expects_documented_kinds() -> None:
    names = [s.name for s in SABOTAGES]
    assert len(names) == len(set(names)) == 13
    assert CLEAN.is_control and CLEAN.name not in names
    for scenario in SABOTAGES:
        assert scenario.expected, scenario.name
        assert set(scenario.expected) <= set(FINDING_KINDS), scenario.name


def test_select_keeps_the_drill_order_and_refuses_unknown_names() -> None:
    assert [s.name for s in select(["hung-rank", "rollback"])] == ["rollback", "hung-rank"]
    assert select(None) == SABOTAGES
    with pytest.raises(UsageError, match="--only clean: no such sabotage"):
        select(["clean"])
