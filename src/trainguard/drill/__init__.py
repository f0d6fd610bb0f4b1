"""Fire drills: prove that the guard catches every documented sabotage of the incident.

:func:`run_drill` runs a small guarded training job (a two-layer transformer, two
processes over gloo on the CPU by default) once clean, then once per sabotage of the
2024 incident, each injected harmlessly inside that job only, and judges every run
from its ledger: caught or missed, by which finding kind, how many steps and seconds
after the injection. ``trainguard drill`` prints the scorecard. See docs/drill.md.
"""

from __future__ import annotations

from trainguard.drill.report import DrillReport, Outcome, ScenarioResult
from trainguard.drill.runner import DrillObserver, DrillOptions, run_drill
from trainguard.drill.scenarios import CLEAN, SABOTAGES, Scenario

__all__ = [
    "CLEAN",
    "SABOTAGES",
    "DrillObserver",
    "DrillOptions",
    "DrillReport",
    "Outcome",
    "Scenario",
    "ScenarioResult",
    "run_drill",
]
