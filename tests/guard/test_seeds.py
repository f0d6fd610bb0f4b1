"""seed.tampered: reseeding after start by code other than the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guard.harness import SABOTAGE, findings, launch, marker_line, of_kind

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def test_reseeding_by_a_helper_module_is_named(tmp_path: Path) -> None:
    job = launch(tmp_path, 2, ["--steps", "12", "--scenario", "reseed"])
    assert job.wait(timeout=120) == [0, 0], job.logs()
    assert of_kind(findings(tmp_path, 0), "seed.tampered") == []  # rank 0 untouched
    rows = of_kind(findings(tmp_path, 1), "seed.tampered")
    assert all(r["rank"] == 1 for r in rows)
    by_wrapper = {r["location"]: r for r in rows if r["evidence"]["via"] == "wrapper"}
    expected = {
        "torch": "torch.manual_seed",
        "numpy": "numpy.random.seed",
        "python": "random.seed",
        "torch_state": "torch.set_rng_state",
        "numpy_state": "numpy.random.set_state",
        "python_state": "random.setstate",
    }
    for marker, function in expected.items():
        location = f"{SABOTAGE}:{marker_line(marker)}"
        assert location in by_wrapper, (marker, sorted(by_wrapper))
        assert by_wrapper[location]["evidence"]["function"] == function
        assert by_wrapper[location]["evidence"]["caller_module"] == "tests.guard.jobs.proc_sabotage"
    assert by_wrapper[f"{SABOTAGE}:{marker_line('torch')}"]["step"] == 2
    # Direct calls on the generator objects bypass the wrappers: the state check sees them.
    bypass = {r["evidence"]["generator"] for r in rows if r["evidence"]["via"] == "state-check"}
    assert bypass == {"torch CPU", "numpy.random", "Python random"}
    # The entry point reseeding at step 4 (and its set-up seeding) is not a finding.
    assert len(rows) == 9
