"""The own-trajectory tie-break on synthetic windows (no processes): who left its path."""

from __future__ import annotations

import math

import torch

from trainguard.guard.checks.gradtrack import Trajectory

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
