"""Real multi-process gloo jobs: each sabotage of the incident, injected by the test.

Every job is a separate set of processes (tests/guard/jobs/train_job.py) with the
sabotage from tests/guard/jobs/sabotage.py; the guard must name the rank, the step
and, where it applies, the line that did it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.guard.jobs import sabotage
from tests.guard.jobs.runner import findings_of, run_job

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

SABOTAGE_FILE = str(Path(sabotage.__file__).resolve())


def marker_line(name: str) -> int:
    """Line number of ``# MARK:<name>`` in sabotage.py."""
    for number, line in enumerate(Path(SABOTAGE_FILE).read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# MARK:{name}"):
            return number
    raise AssertionError(f"marker {name} not found")


def job(
    tmp_path: Path, world: int, sabotage_name: str, steps: int, *extra: str, **env: str
) -> list[dict[str, Any]]:
    return run_job(
        tmp_path,
        world,
        ["--memory-sink", "--sabotage", sabotage_name, "--steps", str(steps), *extra],
        env=env,
    )


# -- 1. injected delays --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "markers"),
    [
        ("sleep_large", ("sleep",)),
        ("busy_large", ("busy", "busy2")),
        ("block_large", ("block",)),
        ("select_large", ("select",)),
    ],
)
def test_delay_on_one_rank_of_a_large_job(
    tmp_path: Path, name: str, markers: tuple[str, ...]
) -> None:
    results = job(tmp_path, 2, name, 30, FAKE_WORLD_SIZE="512")
    stragglers = findings_of(results, "rank.straggler")
    assert stragglers, "no rank.straggler"
    assert {f["rank"] for f in stragglers} == {1}
    assert {f["evidence"]["observed_by_rank"] for f in stragglers} == {0, 1}  # every rank reports
    delays = findings_of(results, "delay.injected")
    assert delays and {f["rank"] for f in delays} == {1}
    expected = {f"{SABOTAGE_FILE}:{marker_line(m)}" for m in markers}
    assert delays[0]["location"] in expected
    assert delays[0]["step"] <= 15


def test_same_delay_on_every_rank_from_step_one(tmp_path: Path) -> None:
    results = job(tmp_path, 2, "sleep_all", 20)
    assert not findings_of(results, "rank.straggler")  # nothing relative to see...
    delays = findings_of(results, "delay.injected")  # ...but the accounting sees it
    assert {f["rank"] for f in delays} == {0, 1}
    assert {f["location"] for f in delays} == {f"{SABOTAGE_FILE}:{marker_line('sleepall')}"}


def test_small_job_is_not_delayed(tmp_path: Path) -> None:
    """The same sabotaged code below the world-size gate: no delay, no finding."""
    results = job(tmp_path, 2, "sleep_large", 20)
    assert not findings_of(results, "delay.injected")
    assert not findings_of(results, "rank.straggler")


# -- 2. gradient corruption on one rank before the all-reduce -------------------------


def test_gradient_corruption_named_within_a_few_steps(tmp_path: Path) -> None:
    results = job(tmp_path, 3, "grad_phases", 68, "--settings", json.dumps({"repeat_every": 5}))
    outliers = findings_of(results, "grad.rank_outlier")
    for first, last, rank, how in sabotage.GRAD_PHASES:
        hits = [f for f in outliers if f["rank"] == rank and first < f["step"] <= last + 5]
        assert hits, f"{how} on rank {rank} (steps {first}-{last}) not named"
        assert min(f["step"] for f in hits) <= first + 10, f"{how}: too late"
        # Every rank names the culprit, not only the culprit itself.
        assert {f["evidence"]["observed_by_rank"] for f in hits} == {0, 1, 2}
    wrong = [
        f
        for f in outliers
        if not any(r == f["rank"] and a < f["step"] <= b + 5 for a, b, r, _ in sabotage.GRAD_PHASES)
    ]
    assert not wrong, [f["message"] for f in wrong]
    sign = [f for f in outliers if f["rank"] == 2]
    assert any(f["evidence"]["direction_outliers"] for f in sign)  # the sign flip keeps norms
    # 2 of every 5 steps are fingerprinted, the same steps on every rank (shared secret).
    fingerprinted = {r["fingerprints"] for r in results}
    assert len(fingerprinted) == 1 and 2 * (68 // 5) <= fingerprinted.pop() <= 2 * (68 // 5 + 1)


# -- 3. parameter corruption on one rank after the step ------------------------------


def test_parameter_corruption_names_the_rank(tmp_path: Path) -> None:
    results = job(tmp_path, 3, "param_corrupt", 20)
    found = findings_of(results, "replica.divergence")
    assert found and {f["rank"] for f in found} == {2}
    assert min(f["step"] for f in found) == 15  # first exchange after the step-12 edit
    assert found[0]["evidence"]["params"][0]["param"] == "fc1.weight"
    assert {f["evidence"]["observed_by_rank"] for f in found} == {0, 1, 2}
    # Telemetry for the report: rank 0 records every exchange's verdict, the others none.
    by_rank = {r["rank"]: r for r in results}
    checks = by_rank[0]["replica_checks"]
    assert [c["step"] for c in checks] == [5, 10, 15, 20]
    assert [c["agree"] for c in checks] == [True, True, False, False]
    assert checks[2]["outliers"] == [2] and checks[2]["world_size"] == 3
    assert by_rank[1]["replica_checks"] == [] and by_rank[2]["replica_checks"] == []
    assert all(r["events"]["step"] == 20 for r in results)  # one step event per step


# -- 4. the same corruption on every rank through tampered shared code ---------------


def test_functional_sgd_patched_on_every_rank(tmp_path: Path) -> None:
    results = job(tmp_path, 2, "patch_sgd", 30, "--settings", json.dumps({"audit_every": 4}))
    tampered = findings_of(results, "code.tampered")
    assert {f["evidence"]["observed_by_rank"] for f in tampered} == {0, 1}
    assert {f["evidence"]["target"] for f in tampered} == {"torch.optim.sgd._single_tensor_sgd"}
    assert {f["location"] for f in tampered} == {f"{SABOTAGE_FILE}:{marker_line('patchsgd')}"}
    recompute = [
        f
        for f in findings_of(results, "grad.anomaly")
        if f["evidence"].get("check") == "optimizer_recompute"
    ]
    assert {f["rank"] for f in recompute} == {0, 1}
    assert min(f["step"] for f in recompute) > 10  # clean before the patch


def test_step_patched_before_attach_scales_lr(tmp_path: Path) -> None:
    results = job(tmp_path, 2, "patch_step_lr", 16)
    tampered = findings_of(results, "code.tampered")
    assert tampered and {f["location"] for f in tampered} == {
        f"{SABOTAGE_FILE}:{marker_line('patchstep')}"
    }
    assert all(f["evidence"]["when"] == "before the guard attached" for f in tampered)
    recompute = [
        f
        for f in findings_of(results, "grad.anomaly")
        if f["evidence"].get("check") == "optimizer_recompute"
    ]
    assert recompute
    assert recompute[0]["evidence"]["median_ratio_actual_to_expected"] == pytest.approx(
        3.0, rel=1e-3
    )


def test_kernel_sign_flip_caught_without_code_checks(tmp_path: Path) -> None:
    """An 'edited kernel' whose Python looks pristine: only the re-computation sees it."""
    settings = json.dumps({"exclude_monitors": ["patches"], "audit_every": 3})
    results = job(tmp_path, 2, "kernel_sign", 30, "--optim", "adam", "--settings", settings)
    recompute = [
        f
        for f in findings_of(results, "grad.anomaly")
        if f["evidence"].get("check") == "optimizer_recompute"
    ]
    assert {f["rank"] for f in recompute} == {0, 1}
    assert all(f["evidence"]["diagnosis"] == "update sign flipped" for f in recompute)
    assert all(f["step"] > 10 for f in recompute)


def test_gradients_zeroed_for_a_layer_on_every_rank(tmp_path: Path) -> None:
    results = job(
        tmp_path, 2, "zero_grads", 35, "--settings", json.dumps({"dynamics_params_per_step": 8})
    )
    zero = [
        f
        for f in findings_of(results, "grad.anomaly")
        if f["evidence"].get("check") == "zero_gradient"
    ]
    assert {f["rank"] for f in zero} == {0, 1}
    assert {f["evidence"]["param"] for f in zero} == {"fc1.weight"}
    assert not findings_of(
        results, "grad.rank_outlier"
    )  # all ranks agree: relative checks are blind
