"""Step timing: injected delays, stragglers and slowdowns.

Three findings, three different references, because an adaptive insider defeats any
single one (runtime.md §1.2):

- ``delay.injected`` -- *absolute* accounting on each rank: the stack sampler
  (sampler.py) splits each step's wall time into compute, collectives, data loading,
  optimizer, the guard itself and user Python frames. Time in user frames that are
  asleep in a system call, or busy outside forward/backward/optimizer, is where a
  step has no business; above ``delay_fraction`` of the step (and ``delay_min_ms``)
  for ``delay_windows`` consecutive windows it is reported with the ``file:line``
  holding most of it. This sees a delay applied to every rank from step 1, which no
  relative comparison can.
- ``rank.straggler`` -- *relative* to the peers: every ``exchange_every`` steps the
  ranks exchange their active time (wall minus time waiting in collectives and time
  serialising checkpoints, which one rank legitimately does for all). The
  rank whose active time exceeds the median of the others by ``straggler_fraction``
  of the step (and ``straggler_min_ms``), for ``straggler_windows`` exchanges, is
  named by every rank.
- ``step.slowdown`` -- *relative to the run's own past*: a window whose median step
  time exceeds the rolling baseline by ``slowdown_factor`` and ``slowdown_z``
  robust sigmas, after ``slowdown_warmup`` steps.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.sampler import (
    CHECKPOINT_BUCKET,
    PHASE_COMPUTE,
    PHASE_OUTSIDE,
    SUSPICIOUS_BUCKETS,
    WAIT_BUCKETS,
    FileClassifier,
    SampleAccumulator,
    StackSampler,
    location_function,
)
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import RollingBand, Throttle, median

_logger = logging.getLogger(__name__)

EXCHANGE_FIELDS = ("active_ms", "wait_ms", "wall_ms", "suspicious_ms", "steps")
"""Per-rank values exchanged every ``exchange_every`` steps (per-step averages)."""


class TimingMonitor:
    """Samples the training thread and accounts each step's wall time."""

    name = "timing"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.sampler: StackSampler | None = None
        self._hooks: list[Any] = []
        self._last_end = 0.0
        self._window = SampleAccumulator()
        self._window_wall = 0.0
        self._window_steps = 0
        self._xchg = SampleAccumulator()
        self._xchg_wall = 0.0
        self._xchg_steps = 0
        self._delay_streak = 0
        self._straggler_streak: dict[int, int] = {}
        self._baseline: RollingBand | None = None
        self._window_times: list[float] = []
        self._throttle = Throttle(100)
        self.windows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, ctx: GuardContext) -> None:
        """Start the sampler on the training thread and hook the model's forward."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        self._baseline = RollingBand(
            int(s["baseline_window"]), int(s["slowdown_warmup"]), rel_floor=0.05
        )
        stream = None
        module = s.get("_module") or ctx.model
        params = getattr(module, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        if first is not None and first.is_cuda:
            stream = torch.cuda.current_stream(first.device)
        self.sampler = StackSampler(
            int(s["_training_thread"]),
            int(s["_training_native_id"]),
            float(s["sample_hz"]),
            classifier=FileClassifier(),
            cuda_stream=stream,
        )
        if module is not None and hasattr(module, "register_forward_pre_hook"):
            self._hooks.append(module.register_forward_pre_hook(self._enter_compute))
            self._hooks.append(module.register_forward_hook(self._leave_compute))
        opt = ctx.optimizer
        if opt is not None:
            self._hooks.append(opt.register_step_pre_hook(self._enter_compute_opt))
            self._hooks.append(opt.register_step_post_hook(self._leave_compute_opt))
        self._last_end = time.perf_counter()
        self.sampler.start()

    def close(self, ctx: GuardContext) -> None:
        """Stop the sampler and remove the hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self.sampler is not None:
            self.sampler.stop()

    def _enter_compute(self, *args: Any) -> None:
        if self.sampler is not None:
            self.sampler.phase = PHASE_COMPUTE

    def _leave_compute(self, *args: Any) -> None:
        if self.sampler is not None:
            self.sampler.phase = PHASE_OUTSIDE

    def _enter_compute_opt(self, *args: Any) -> None:
        self._enter_compute()

    def _leave_compute_opt(self, *args: Any) -> None:
        self._leave_compute()

    # ------------------------------------------------------------------ per step
    def before_step(self, ctx: GuardContext) -> None:
        """Nothing to do before the step; the sampler runs continuously."""

    def after_step(self, ctx: GuardContext) -> None:
        """Close the step: account its wall time; evaluate every ``timing_window`` steps."""
        if self.sampler is None:
            return
        now = time.perf_counter()
        wall = now - self._last_end
        self._last_end = now
        acc = self.sampler.swap()
        s = ctx.settings
        if ctx.step <= int(s["timing_warmup"]):
            return
        self._window.merge(acc)
        self._window_wall += wall
        self._window_steps += 1
        self._window_times.append(wall)
        self._xchg.merge(acc)
        self._xchg_wall += wall
        self._xchg_steps += 1
        if self._window_steps >= int(s["timing_window"]):
            self._evaluate_window(ctx)

    def _evaluate_window(self, ctx: GuardContext) -> None:
        s = ctx.settings
        acc, wall, steps, times = (
            self._window,
            self._window_wall,
            self._window_steps,
            self._window_times,
        )
        self._window, self._window_wall, self._window_steps, self._window_times = (
            SampleAccumulator(),
            0.0,
            0,
            [],
        )
        allowed = tuple(s.get("delay_allow") or ())
        locations = {loc: t for loc, t in acc.locations.items() if not _allowed(loc, allowed)}
        allowed_time = sum(t for loc, t in acc.locations.items() if _allowed(loc, allowed))
        suspicious = sum(acc.buckets.get(b, 0.0) for b in SUSPICIOUS_BUCKETS) - allowed_time
        frac = suspicious / wall if wall > 0 else 0.0
        per_step_ms = 1000.0 * suspicious / steps
        breakdown = {k: round(1000.0 * v / steps, 3) for k, v in sorted(acc.buckets.items())}
        summary = {
            "step": ctx.step,
            "steps": steps,
            "wall_ms_per_step": round(1000.0 * wall / steps, 3),
            "suspicious_fraction": round(frac, 4),
            "breakdown_ms_per_step": breakdown,
            "samples": acc.samples,
        }
        self.windows.append(summary)
        ctx.sink.record("timing.window", summary)
        if (
            frac >= float(s["delay_fraction"])
            and per_step_ms >= float(s["delay_min_ms"])
            and locations
        ):
            self._delay_streak += 1
        else:
            self._delay_streak = 0
        if self._delay_streak >= int(s["delay_windows"]):
            self._report_delay(ctx, locations, acc, frac, per_step_ms, steps, breakdown)
        self._check_slowdown(ctx, times)

    def _report_delay(
        self,
        ctx: GuardContext,
        locations: dict[str, float],
        acc: SampleAccumulator,
        frac: float,
        per_step_ms: float,
        steps: int,
        breakdown: dict[str, float],
    ) -> None:
        ranked = sorted(locations.items(), key=lambda kv: kv[1], reverse=True)
        top, top_time = ranked[0]
        if not self._throttle.allow(("delay.injected", top), ctx.step):
            return
        blocked_share = acc.location_blocked.get(top, 0.0) / top_time if top_time > 0 else 0.0
        how = (
            "asleep in a blocking call"
            if blocked_share >= 0.5
            else "running Python outside the compute"
        )
        ctx.report(
            make_finding(
                ctx,
                "delay.injected",
                f"Rank {ctx.rank} spent {per_step_ms:.1f} ms per step "
                f"({100 * frac:.0f}% of the step) "
                f"{how} at {top}.",
                location=top,
                evidence={
                    "suspicious_fraction": round(frac, 4),
                    "suspicious_ms_per_step": round(per_step_ms, 3),
                    "top_locations": [
                        {"location": loc, "ms_per_step": round(1000.0 * t / steps, 3)}
                        for loc, t in ranked[:5]
                    ],
                    "blocked_share": round(blocked_share, 3),
                    "source_line": location_function(top),
                    "breakdown_ms_per_step": breakdown,
                    "samples": acc.samples,
                },
            )
        )

    def _check_slowdown(self, ctx: GuardContext, times: list[float]) -> None:
        band = self._baseline
        if band is None or not times:
            return
        s = ctx.settings
        window_median = median(times)
        flagged = False
        if band.ready:
            z = band.z(window_median)
            base = band.center()
            if (
                z is not None
                and z >= float(s["slowdown_z"])
                and window_median >= float(s["slowdown_factor"]) * base
                and 1000.0 * (window_median - base) >= float(s["slowdown_min_ms"])
            ):
                flagged = True
                if self._throttle.allow(("step.slowdown",), ctx.step):
                    ctx.report(
                        make_finding(
                            ctx,
                            "step.slowdown",
                            f"Rank {ctx.rank}: median step time {1000 * window_median:.1f} ms is "
                            f"{window_median / base:.1f}x the run's baseline {1000 * base:.1f} ms.",
                            evidence={
                                "window_median_ms": round(1000 * window_median, 3),
                                "baseline_ms": round(1000 * base, 3),
                                "robust_z": round(z, 2) if math.isfinite(z) else "inf",
                            },
                        )
                    )
        if not flagged:
            for t in times:
                band.add(t)

    # ------------------------------------------------------------------ exchange
    def exchange_size(self, ctx: GuardContext) -> int:
        """Five values: see :data:`EXCHANGE_FIELDS`."""
        return len(EXCHANGE_FIELDS)

    def exchange_payload(self, ctx: GuardContext) -> list[float]:
        """This rank's per-step active/wait/wall/suspicious milliseconds since the last exchange.

        Active time excludes checkpoint serialisation: "rank 0 saves every N steps" is
        the normal pattern, and its peers' matching wait is already excluded.
        """
        acc, wall, steps = self._xchg, self._xchg_wall, self._xchg_steps
        self._xchg, self._xchg_wall, self._xchg_steps = SampleAccumulator(), 0.0, 0
        if steps == 0:
            return [math.nan] * 4 + [0.0]
        wait = sum(acc.buckets.get(b, 0.0) for b in WAIT_BUCKETS)
        checkpoint = acc.buckets.get(CHECKPOINT_BUCKET, 0.0)
        suspicious = sum(acc.buckets.get(b, 0.0) for b in SUSPICIOUS_BUCKETS)
        k = 1000.0 / steps
        active = max(wall - wait - checkpoint, 0.0)
        return [k * active, k * wait, k * wall, k * suspicious, float(steps)]

    def on_exchange(self, ctx: GuardContext, gathered: torch.Tensor) -> None:
        """Name a rank whose active time exceeds its peers' (every rank reports it)."""
        world = gathered.shape[0]
        if world < 2:
            return
        rows = gathered.tolist()
        if any(row[4] == 0 or not all(math.isfinite(v) for v in row[:4]) for row in rows):
            return
        s = ctx.settings
        active = [row[0] for row in rows]
        wall = median(row[2] for row in rows)
        threshold = max(float(s["straggler_min_ms"]), float(s["straggler_fraction"]) * wall)
        for r in range(world):
            others = [a for i, a in enumerate(active) if i != r]
            excess = active[r] - median(others)
            if excess >= threshold:
                self._straggler_streak[r] = self._straggler_streak.get(r, 0) + 1
            else:
                self._straggler_streak[r] = 0
            if self._straggler_streak[r] >= int(s["straggler_windows"]) and self._throttle.allow(
                ("rank.straggler", r), ctx.step
            ):
                ctx.report(
                    make_finding(
                        ctx,
                        "rank.straggler",
                        f"Rank {r} is slower than its peers: {active[r]:.1f} ms of active time per "
                        f"step against a peer median of {median(others):.1f} ms; "
                        "the others wait for it.",
                        rank=r,
                        severity=Severity.HIGH,
                        evidence={
                            "active_ms_by_rank": [round(a, 3) for a in active],
                            "wait_ms_by_rank": [round(row[1], 3) for row in rows],
                            "suspicious_ms_by_rank": [round(row[3], 3) for row in rows],
                            "wall_ms_median": round(wall, 3),
                            "excess_ms": round(excess, 3),
                            "threshold_ms": round(threshold, 3),
                        },
                    )
                )


def _allowed(location: str, allowed: tuple[str, ...]) -> bool:
    """True when ``location`` matches an allowlist entry (exact ``file:line`` or prefix)."""
    return any(location == a or location.startswith(a) for a in allowed)
