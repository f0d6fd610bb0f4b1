"""The own-trajectory tie-break on synthetic windows (no processes): who left its path."""

from __future__ import annotations

import math
from typing import Any

import torch

from tests.factories.guard_training import guard_context
from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.gradients import GradientMonitor
from trainguard.guard.checks.gradtrack import Trajectory
from trainguard.guard.sink import MemorySink

LAYERS = 3
K = 16
NAMES = [f"layer{j}" for j in range(LAYERS)]


def _trajectory() -> tuple[Trajectory, torch.Generator, torch.Tensor]:
    seg = torch.arange(LAYERS).repeat_interleave(K)
    traj = Trajectory(2, seg, LAYERS, log_ratio=1.0, log_ratio_min=0.7, z=8.0, cos_margin=0.5)
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(LAYERS * K, generator=gen, dtype=torch.float64)
    return traj, gen, direction


def _window(gen: torch.Generator, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two honest ranks: the shared direction plus a little per-rank noise."""
    noise = 0.2 * torch.randn(2, LAYERS * K, generator=gen, dtype=torch.float64)
    sketch = direction.unsqueeze(0) + noise
    norms = torch.zeros(2, LAYERS, dtype=torch.float64).index_add_(
        1, torch.arange(LAYERS).repeat_interleave(K), sketch * sketch
    )
    return norms.sqrt().log(), sketch


def _trained() -> tuple[Trajectory, torch.Generator, torch.Tensor, torch.Tensor]:
    traj, gen, direction = _trajectory()
    alive = torch.ones(LAYERS, dtype=torch.bool)
    for _ in range(8):
        log_norms, sketch = _window(gen, direction)
        traj.learn(log_norms, sketch, alive)
    return traj, gen, direction, alive


def test_scaled_rank_is_named() -> None:
    traj, gen, direction, alive = _trained()
    log_norms, sketch = _window(gen, direction)
    log_norms[1] += math.log(10.0)
    sketch[1] *= 10.0
    verdict = traj.blame(log_norms, sketch, alive, list(range(LAYERS)), NAMES)
    assert verdict["rank"] == 1 and verdict["departed_layers"] == [0, LAYERS]


def test_sign_flipped_rank_is_named() -> None:
    traj, gen, direction, alive = _trained()
    log_norms, sketch = _window(gen, direction)
    sketch[0] = -sketch[0]
    verdict = traj.blame(log_norms, sketch, alive, list(range(LAYERS)), NAMES)
    assert verdict["rank"] == 0
    assert all(
        e["cosine_to_previous_mean"][0] < 0 < e["cosine_to_previous_mean"][1]
        for e in verdict["examples"]
    )


def test_both_ranks_moving_alike_names_nobody() -> None:
    traj, gen, direction, alive = _trained()
    log_norms, sketch = _window(gen, direction)
    log_norms += math.log(10.0)
    sketch *= 10.0
    assert traj.blame(log_norms, sketch, alive, list(range(LAYERS)), NAMES)["rank"] is None


def test_no_history_names_nobody() -> None:
    traj, gen, direction = _trajectory()
    alive = torch.ones(LAYERS, dtype=torch.bool)
    log_norms, sketch = _window(gen, direction)
    log_norms[1] += math.log(10.0)
    assert traj.blame(log_norms, sketch, alive, [], NAMES)["rank"] is None


def _monitor(world: int) -> tuple[GradientMonitor, GuardContext, MemorySink]:
    """A started gradient monitor of a plain 2-parameter model (no collectives run)."""
    ctx = guard_context(torch.nn.Linear(8, 4), world=world)
    monitor = GradientMonitor()
    monitor.start(ctx)
    assert monitor.enabled
    assert isinstance(ctx.sink, MemorySink)
    return monitor, ctx, ctx.sink


def _gathered(monitor: GradientMonitor, world: int, bias_scale: list[float]) -> torch.Tensor:
    """One exchange: every rank's norms and sketch agree except the bias norm's scale."""
    gen = torch.Generator().manual_seed(5)
    sketch = torch.randn(sum(i.numel() for i in monitor._idx), generator=gen, dtype=torch.float64)
    rows = []
    for r in range(world):
        norms = torch.tensor([1.0, 0.5 * bias_scale[r]], dtype=torch.float64)
        rows.append(torch.cat([norms, sketch, torch.tensor([2.0], dtype=torch.float64)]))
    return torch.stack(rows)


def test_two_rank_unnamed_disagreement_needs_two_windows() -> None:
    """A clean Trainer job's biases once differed 8x between its 2 ranks in one early
    window; an unattributed one-window disagreement is noise, a lasting one is not."""
    monitor, ctx, sink = _monitor(2)
    ctx.step = 5
    monitor.on_exchange(ctx, _gathered(monitor, 2, [1.0, 9.0]))
    ctx.step = 10
    monitor.on_exchange(ctx, _gathered(monitor, 2, [1.0, 1.0]))  # gone in the next window
    assert sink.findings == []

    monitor, ctx, sink = _monitor(2)
    ctx.step = 5
    monitor.on_exchange(ctx, _gathered(monitor, 2, [1.0, 9.0]))
    assert sink.findings == []
    ctx.step = 10
    monitor.on_exchange(ctx, _gathered(monitor, 2, [1.0, 9.0]))
    (finding,) = sink.findings  # it lasted: reported, though no rank can be named yet
    assert finding.rule == "grad.rank_outlier" and finding.rank is None
    assert finding.severity == Severity.HIGH and finding.step == 10


def test_majority_names_the_outlier_in_the_first_window() -> None:
    monitor, ctx, sink = _monitor(3)
    ctx.step = 5
    monitor.on_exchange(ctx, _gathered(monitor, 3, [1.0, 9.0, 1.0]))
    (finding,) = sink.findings
    assert finding.rank == 1 and finding.severity == Severity.CRITICAL


def _pair_flags(opposed_layers: int, **overrides: Any) -> dict[int, Any]:
    """Layers flagged on direction when rank 1's sketch is rank 0's negated on the first
    ``opposed_layers`` of six layers (and equal on the rest)."""
    layers = [torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)]
    ctx = guard_context(torch.nn.Sequential(*layers), **overrides)
    monitor = GradientMonitor()
    monitor.start(ctx)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(int(monitor._seg.numel()), generator=gen, dtype=torch.float64)
    other = base.clone()
    for j in range(opposed_layers):
        other[monitor._seg == j] *= -1
    sketch = torch.stack([base, other])
    alive = torch.ones(len(monitor.names), dtype=torch.bool)
    hits = torch.zeros(2, len(monitor.names), dtype=torch.bool)
    flagged: dict[int, Any] = {}
    monitor._direction(sketch, alive, hits, ctx.settings, flagged)
    return flagged


def test_two_rank_whole_gradient_sign_flip_is_flagged_by_default() -> None:
    flagged = _pair_flags(6)
    assert set(flagged) == {0, 1}
    assert len(flagged[0]["direction"]) == 6


def test_two_rank_single_opposed_layer_needs_the_opt_in_rule() -> None:
    """Honest ranks on unrelated batches oppose on a layer or two: not by default."""
    assert _pair_flags(2) == {}
    flagged = _pair_flags(2, grad_pair_direction=True)
    assert set(flagged) == {0, 1} and len(flagged[1]["direction"]) == 2
    assert _pair_flags(6, grad_pair_share=1.01) == {}
