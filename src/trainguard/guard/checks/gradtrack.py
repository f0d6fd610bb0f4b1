"""Each rank's own gradient trajectory: the tie-break when no majority can name a rank.

With two ranks, a corrupted local gradient and an honest one disagree symmetrically:
each is "the outlier" of the other. What is not symmetric is history. The corrupted
rank's local gradient leaves *its own* trajectory -- its norm jumps against its own
median (scaling, added noise), its direction turns away from the previous all-reduced
gradient (a sign flip gives a negative cosine, noise a cosine drop) -- while the honest
rank's stays where it was.

Everything here is built from the exchange's gathered fingerprints, so it costs no
extra work on the training step: the mean of the ranks' local sketches of a window is
the sketch of the all-reduced (mean) gradient, and the per-rank norms are the ones the
peer comparison already uses. Every rank sees the same gathers, so every rank keeps the
same histories and reaches the same verdict. Only clean windows (no disagreement)
enter the history, so a sustained attack does not become the reference.

Limits: the reference is the previous clean window (``exchange_every`` steps back);
corruption from the first window on leaves no clean history and is reported without a
rank. A real change of regime that hits one rank only (its data shard changes
distribution) can look like a departure; it must also disagree with the peers first.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainguard.guard.stats import MAD_TO_SIGMA

_HISTORY = 50
"""Clean windows kept per rank and layer."""


class Trajectory:
    """Per-rank, per-layer history of log-norms and of the cosine to the previous mean."""

    def __init__(
        self,
        world: int,
        seg: torch.Tensor,
        n_params: int,
        *,
        log_ratio: float,
        log_ratio_min: float,
        z: float,
        cos_margin: float,
    ) -> None:
        """Empty histories for ``world`` ranks; ``seg`` maps sketch coordinates to layers."""
        self.world = world
        self._seg = seg
        self._n = n_params
        self._log_ratio = log_ratio
        self._log_ratio_min = log_ratio_min
        self._z = z
        self._margin = cos_margin
        self._norms = torch.full((_HISTORY, world, n_params), math.nan, dtype=torch.float64)
        self._cos = torch.full((_HISTORY, world, n_params), math.nan, dtype=torch.float64)
        self._npos = 0
        self._cpos = 0
        self._ref: torch.Tensor | None = None
        sizes = torch.zeros(n_params, dtype=torch.long)
        sizes.index_add_(0, seg, torch.ones_like(seg))
        self._sizes = sizes

    def _segsum(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(values.shape[0], self._n, dtype=values.dtype)
        return out.index_add_(1, self._seg, values)

    def _cos_to_ref(self, sketch: torch.Tensor) -> torch.Tensor | None:
        """Per rank and layer: cosine of the local sketch with the previous mean's."""
        ref = self._ref
        if ref is None:
            return None
        num = self._segsum(sketch * ref)
        den = (self._segsum(sketch * sketch) * self._segsum((ref * ref).unsqueeze(0))).sqrt()
        usable = (den > 0) & (self._sizes >= 4).unsqueeze(0)
        return torch.where(usable, num / den.clamp_min(1e-300), torch.nan)

    def learn(self, log_norms: torch.Tensor, sketch: torch.Tensor, alive: torch.Tensor) -> None:
        """Record a clean window; its mean sketch becomes the next reference direction."""
        self._norms[self._npos] = log_norms.masked_fill(~alive.unsqueeze(0), math.nan)
        self._npos = (self._npos + 1) % _HISTORY
        cos = self._cos_to_ref(sketch)
        if cos is not None:
            self._cos[self._cpos] = cos
            self._cpos = (self._cpos + 1) % _HISTORY
        self._ref = sketch.mean(dim=0)

    def blame(
        self,
        log_norms: torch.Tensor,
        sketch: torch.Tensor,
        alive: torch.Tensor,
        layers: list[int],
        names: list[str],
    ) -> dict[str, Any]:
        """The one rank that left its own trajectory on the disagreeing ``layers``, if any.

        A layer departs for a rank when its log-norm is off its own median by more than
        ``grad_z`` robust sigmas of its own history (floor ``grad_log_ratio_min``;
        ``grad_log_ratio`` with fewer than 6 clean windows), or when its sketch has a
        negative cosine (below ``-grad_cos_margin / 2``) with the previous all-reduced
        gradient, or a cosine ``grad_cos_margin`` below its own usual one. Each departed
        layer scores how far past its threshold it went; the rank is named when it
        departed somewhere and its total is more than twice any other rank's (the
        honest rank's gradient moves a little too: the corrupted mean moved the model).
        """
        filled = (~torch.isnan(self._norms)).sum(dim=0)
        med = torch.nan_to_num(torch.nanquantile(self._norms, 0.5, dim=0), nan=0.0)
        spread = torch.nan_to_num(
            torch.nanquantile((self._norms - med.unsqueeze(0)).abs(), 0.5, dim=0), nan=0.0
        )
        threshold = torch.where(
            filled >= 6,
            (self._z * MAD_TO_SIGMA * spread).clamp_min(self._log_ratio_min),
            torch.full_like(spread, self._log_ratio),
        )
        dev = log_norms - med
        norm_out = (dev.abs() > threshold) & (filled > 0) & alive.unsqueeze(0)
        cos = self._cos_to_ref(sketch)
        dropped_by: torch.Tensor | None = None
        if cos is None:
            dir_out = torch.zeros_like(norm_out)
            cos = torch.full_like(dev, math.nan)
        else:
            cos_filled = (~torch.isnan(self._cos)).sum(dim=0)
            cos_med = torch.nan_to_num(torch.nanquantile(self._cos, 0.5, dim=0), nan=1.0)
            dropped = (cos_filled >= 3) & (cos < cos_med - self._margin)
            dropped_by = torch.where(dropped, (cos_med - cos) / self._margin, 0.0)
            dir_out = ((cos < -self._margin / 2) | dropped) & ~torch.isnan(cos)
        departed = norm_out | dir_out
        # How far past its threshold each layer went, per rank (0 when it stayed).
        score = torch.where(norm_out, dev.abs() / threshold.clamp_min(1e-12), 0.0)
        score = torch.maximum(score, torch.nan_to_num(-cos / (self._margin / 2)).clamp_min(0.0))
        if dropped_by is not None:
            score = torch.maximum(score, dropped_by)
        score = torch.where(departed, score, 0.0)
        cols = layers or [j for j in range(self._n) if bool(alive[j])]
        if not cols:
            return {"rank": None, "departed_layers": [0] * self.world, "why": "no usable layer"}
        counts = [int(departed[r, cols].sum()) for r in range(self.world)]
        totals = [float(score[r, cols].sum()) for r in range(self.world)]
        order = sorted(range(self.world), key=lambda r: totals[r], reverse=True)
        top = order[0]
        runner_up = max((totals[r] for r in order[1:]), default=0.0)
        culprit = top if counts[top] >= 1 and totals[top] > 2 * runner_up else None
        examples = []
        for j in cols:
            if culprit is not None and not bool(departed[culprit, j]):
                continue
            examples.append(
                {
                    "param": names[j],
                    "own_norm_ratio": [
                        round(math.exp(float(dev[r, j])), 4) if int(filled[r, j]) else None
                        for r in range(self.world)
                    ],
                    "cosine_to_previous_mean": [
                        None if math.isnan(float(cos[r, j])) else round(float(cos[r, j]), 4)
                        for r in range(self.world)
                    ],
                }
            )
            if len(examples) >= 5:
                break
        if culprit is None:
            why = (
                "no rank's local gradient left its own trajectory alone "
                f"(departed layers per rank {counts})"
            )
        else:
            others = [r for r in range(self.world) if r != culprit]
            why = (
                f"rank {culprit}'s local gradient left its own trajectory on "
                f"{counts[culprit]} of {len(cols)} disagreeing layers (own norm history, "
                f"cosine to the previous all-reduced gradient) while ranks {others} "
                f"stayed on theirs"
            )
        return {
            "rank": culprit,
            "departed_layers": counts,
            "departure_score": [round(t, 3) for t in totals],
            "layers_compared": len(cols),
            "examples": examples,
            "why": why,
        }
