"""Two ranks, no majority: grad.rank_outlier and replica.divergence still name the rank.

Real 2-rank gloo DDP jobs (tests/guard/jobs/train_job.py). With two ranks a corrupted
rank and an honest one disagree symmetrically; the guard breaks the tie with each
rank's own record: its gradient trajectory (norm history, cosine to the previous
all-reduced gradient) and its parameters between its post-step and its next pre-step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.guard.jobs.runner import findings_of, run_job

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def job(
    tmp_path: Path, name: str, steps: int, target: int = 1, settings: str = "{}"
) -> list[dict[str, Any]]:
    return run_job(
        tmp_path,
        2,
        ["--memory-sink", "--sabotage", name, "--steps", str(steps), "--settings", settings],
        env={"SABOTAGE_RANK": str(target)},
    )


PAIR_DIRECTION = '{"grad_pair_direction": true}'
"""The opt-in rule that flags single layers whose pair cosine is clearly negative."""

NO_PAIR_RULES = '{"grad_pair_share": 1.01}'
"""Neither 2-rank direction rule: a norm-keeping sign flip is then invisible to the pair."""


@pytest.mark.parametrize(
    ("how", "target", "settings"),
    [
        ("scale", 1, "{}"),
        ("sign", 1, "{}"),
        ("noise", 1, "{}"),
        ("sign", 0, "{}"),
        ("scale", 0, "{}"),
        ("sign", 1, PAIR_DIRECTION),
    ],
)
def test_two_rank_gradient_outlier_is_named(
    tmp_path: Path, how: str, target: int, settings: str
) -> None:
    results = job(tmp_path, f"grad_tie_{how}", 30, target, settings)
    outliers = findings_of(results, "grad.rank_outlier")
    assert outliers, "no grad.rank_outlier"
    assert {f["rank"] for f in outliers} == {target}, [f["message"] for f in outliers]
    assert {f["evidence"]["observed_by_rank"] for f in outliers} == {0, 1}
    first = outliers[0]
    assert first["message"].startswith(f"Rank {target}'s local gradient")
    assert first["step"] >= 20  # corruption starts at the window ending at step 20
    tie = first["evidence"]["own_trajectory"]
    assert tie["rank"] == target
    # The honest rank may leave its own trajectory a little too (the corrupted mean moved
    # the model; which steps are fingerprinted is drawn per run): the culprit's departure
    # must dominate, as the documented rule (more than twice the other's score) says.
    departed, score = tie["departed_layers"], tie["departure_score"]
    assert departed[target] > departed[1 - target]
    assert score[target] > 2 * score[1 - target]


def test_sign_flip_on_two_ranks_needs_a_pair_rule(tmp_path: Path) -> None:
    """Both 2-rank direction rules off: a norm-keeping sign flip is not named by
    grad.rank_outlier (and the honest rank is not blamed in its place)."""
    results = job(tmp_path, "grad_tie_sign", 30, 1, NO_PAIR_RULES)
    assert not [f for f in findings_of(results, "grad.rank_outlier") if f["rank"] == 0]


@pytest.mark.parametrize("settings", ["{}", PAIR_DIRECTION])
def test_two_rank_clean_run_names_nobody(tmp_path: Path, settings: str) -> None:
    results = job(tmp_path, "none", 40, settings=settings)
    assert not findings_of(results, "grad.rank_outlier")
    assert not findings_of(results, "replica.divergence")


@pytest.mark.parametrize("target", [1, 0])
def test_two_rank_replica_write_is_named(tmp_path: Path, target: int) -> None:
    results = job(tmp_path, "param_tie", 25, target)
    divergences = findings_of(results, "replica.divergence")
    assert divergences, "no replica.divergence"
    assert {f["rank"] for f in divergences} == {target}, [f["message"] for f in divergences]
    assert {f["evidence"]["observed_by_rank"] for f in divergences} == {0, 1}
    written = divergences[0]["evidence"]["written_outside_optimizer"]
    assert [w["param"] for w in written] == ["fc3.weight"]
    assert written[0]["version_changed"] and written[0]["sampled_values_changed"]
    # The rank that did it also knows when: the pre-step right after loop step 12.
    own = [f for f in divergences if f["evidence"]["observed_by_rank"] == target]
    assert own[0]["evidence"]["first_seen_at_pre_step"] == 14


def test_same_write_on_every_rank_is_no_finding(tmp_path: Path) -> None:
    """A legitimate in-place change made everywhere (a reload, pruning) keeps replicas equal."""
    results = job(tmp_path, "param_all", 25)
    assert not findings_of(results, "replica.divergence")
