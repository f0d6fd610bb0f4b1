"""The drill's scenarios: the clean control run and one sabotage per move of the incident.

Each scenario is data: what the insider did (``move``), how the drill reproduces it
inside its own small job (``how``), which finding kinds count as catching it
(``expected``), and how long the job runs. The sabotage code itself lives in the
job's shared helper module (``job/team_utils.py``, switched on by the scenario's
name) or, for the moves that come from outside the job (a stranger's SIGTERM, a
SIGKILL), in the drill runner. Names are stable: ``--only NAME`` and the JSON output
use them.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

from trainguard.core.errors import UsageError


class Resume(enum.StrEnum):
    """How a scenario's job resumes from the clean run's checkpoints (in a copy of its run
    directory, so the guard sees the recorded lineage and data order)."""

    NONE = "none"
    """Start from scratch in a fresh run directory."""
    NEWEST = "newest"
    """Resume from the newest checkpoint (a legitimate resume)."""
    OLDEST = "oldest"
    """Resume from an older checkpoint than the newest recorded one (rollback)."""
    ALTERED = "altered"
    """Resume from the newest checkpoint after one byte of a tensor was changed on disk."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One run of the drill."""

    name: str
    """Stable identifier (``--only NAME``)."""
    move: str
    """The incident's move, as the scorecard names it."""
    how: str
    """How the drill injects it, harmlessly and inside its own job only."""
    expected: tuple[str, ...]
    """Finding kinds that count as catching it (empty: the clean control run)."""
    steps: int
    """Optimizer steps the job runs (at least)."""
    inject_step: int = 5
    """Step after which the sabotage fires."""
    min_seconds: float = 0.0
    """Keep training at least this long (checks that run on a clock need the time)."""
    resume: Resume = Resume.NONE
    """Start point of the job (see :class:`Resume`)."""
    stranger_signal: signal.Signals | None = None
    """Signal a process outside the job sends to the target rank at ``inject_step``."""

    @property
    def is_control(self) -> bool:
        """True for the clean run, which must raise no alarm."""
        return not self.expected


CLEAN_SAVE_AT = (15, 30)
"""Steps at which the clean run saves signed checkpoints (the resume scenarios use them)."""

CLEAN = Scenario(
    name="clean",
    move="no sabotage (control run)",
    how="the same job with every sabotage dormant; it saves two signed checkpoints",
    expected=(),
    steps=CLEAN_SAVE_AT[-1],
)
"""The control run: any finding of severity medium or above in it is a false alarm."""

SABOTAGES: tuple[Scenario, ...] = (
    Scenario(
        name="backdoored-checkpoint",
        move="backdoored checkpoint (pickle payload)",
        how="torch.load(weights_only=False) of a planted checkpoint whose payload would "
        "write a marker file; the drill checks the marker was never written",
        expected=("load.unsafe_global",),
        steps=6,
        inject_step=3,
    ),
    Scenario(
        name="tampered-optimizer",
        move="tampered optimizer (shared PyTorch code)",
        how="the shared module replaces torch.optim.sgd._single_tensor_sgd with a version "
        "that reverses every update, on every rank",
        expected=("code.tampered", "grad.anomaly"),
        steps=22,
    ),
    Scenario(
        name="reseeding",
        move="random seeds reset",
        how="the shared module calls torch.manual_seed(1234) in the middle of training",
        expected=("seed.tampered",),
        steps=8,
        inject_step=3,
    ),
    Scenario(
        name="data-order",
        move="data order changed",
        how="resume from the newest checkpoint with the shared loader code's shuffle seed changed",
        expected=("data.order_changed",),
        steps=4,
        inject_step=0,
        resume=Resume.NEWEST,
    ),
    Scenario(
        name="delay-large-jobs",
        move="sleeps injected on one rank of large jobs",
        how="time.sleep(0.03) per step on rank 1, gated on a job size of 256 GPUs or more "
        "(the drill's job reports 512 to the gate)",
        expected=("delay.injected", "rank.straggler"),
        steps=30,
    ),
    Scenario(
        name="gradient-corruption",
        move="gradients corrupted on one rank",
        how="a tensor hook scales rank 1's local gradients by 10 before the all-reduce",
        expected=("grad.rank_outlier",),
        steps=12,
    ),
    Scenario(
        name="replica-corruption",
        move="replica weights altered in memory",
        how="rank 1 scales one weight matrix by 1.001 after an optimizer step",
        expected=("replica.divergence",),
        steps=12,
    ),
    Scenario(
        name="rollback",
        move="training rolled back to an old checkpoint",
        how="resume from the older of the clean run's two checkpoints",
        expected=("step.rollback",),
        steps=4,
        inject_step=0,
        resume=Resume.OLDEST,
    ),
    Scenario(
        name="weights-on-disk",
        move="weights altered on disk",
        how="one byte of a tensor in the newest checkpoint is changed, then the job resumes "
        "from it",
        expected=("weights.tampered",),
        steps=4,
        inject_step=0,
        resume=Resume.ALTERED,
    ),
    Scenario(
        name="sigterm-stranger",
        move="SIGTERM from a process outside the job",
        how="a separate process sends SIGTERM to rank 1",
        expected=("process.signal",),
        steps=100_000,
        stranger_signal=signal.SIGTERM,
    ),
    Scenario(
        name="killed-rank",
        move="a rank killed (SIGKILL)",
        how="a separate process sends SIGKILL to rank 1",
        expected=("process.killed",),
        steps=100_000,
        stranger_signal=signal.SIGKILL,
    ),
    Scenario(
        name="hung-rank",
        move="a rank hung",
        how="rank 1 sleeps for an hour inside the training loop",
        expected=("rank.hang",),
        steps=100_000,
    ),
    Scenario(
        name="disable-guard",
        move="an attempt to disable the guard",
        how="the shared module finds the active guard and removes its optimizer hooks",
        expected=("guard.disabled",),
        steps=8,
        min_seconds=1.5,
    ),
)
"""Every documented sabotage, in the order the drill runs them."""


def select(names: list[str] | None) -> tuple[Scenario, ...]:
    """The sabotages named by ``--only`` (all when none), in the drill's order.

    Raises:
        UsageError: a name is not a sabotage of the drill.
    """
    if not names:
        return SABOTAGES
    known = {s.name for s in SABOTAGES}
    for name in names:
        if name not in known:
            raise UsageError(
                f"--only {name}: no such sabotage; choose from {', '.join(sorted(known))} "
                "(see trainguard drill --list)"
            )
    wanted = set(names)
    return tuple(s for s in SABOTAGES if s.name in wanted)
