"""Tunables of the guard: one validated, documented table (docs/guard.md mirrors it).

Every threshold is a robust statistic (median and MAD over the run's own history or
across ranks) with a warm-up, so that a clean run stays silent without per-model
tuning. A user overrides any value with ``trainguard.watch(..., name=value)`` or
``settings={"name": value}``; an unknown name is a :class:`GuardError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.errors import GuardError


@dataclass(frozen=True)
class GuardSettings:
    """Defaults of every tunable; see docs/guard.md for how to tune them."""

    monitors: tuple[str, ...] | None = None
    """Names of the monitors to run (None = every registered monitor)."""
    exclude_monitors: tuple[str, ...] = ()
    """Names of registered monitors to skip."""
    exchange_every: int = 5
    """Steps between cross-rank exchanges (one small all-gather each)."""

    # -- timing / stragglers / injected delays -------------------------------------
    sample_hz: float = 50.0
    """Mean stack samples per second of the training thread (background thread; the
    intervals are jittered so work cannot be timed between samples). Each sample costs
    30-60 us of CPU, most of it the thread's wake-up. 25 Hz halves that but starves the
    straggler rule's wait estimate on short steps (a 30-step test job missed it)."""
    timing_window: int = 5
    """Steps per local evaluation window of the time accounting."""
    timing_warmup: int = 3
    """First steps ignored by delay accounting (lazy init, first-touch allocations)."""
    delay_fraction: float = 0.2
    """Share of step wall time in non-compute Python frames that flags delay.injected."""
    delay_min_ms: float = 5.0
    """...and at least this many milliseconds per step."""
    delay_windows: int = 2
    """Consecutive windows above the threshold before delay.injected is reported."""
    delay_allow: tuple[str, ...] = ()
    """``file:line`` locations or path prefixes allowed to wait (e.g. your logger)."""
    straggler_fraction: float = 0.4
    """A rank whose active time exceeds its peers' by this share of the step is slow..."""
    straggler_min_ms: float = 10.0
    """...and by at least this many milliseconds per step."""
    straggler_windows: int = 3
    """Consecutive exchanges a rank must be slow before rank.straggler."""
    slowdown_factor: float = 1.5
    """step.slowdown when a window's median step exceeds the baseline median by this."""
    slowdown_z: float = 6.0
    """...and by this many robust standard deviations (1.4826 MAD)."""
    slowdown_min_ms: float = 20.0
    """...and by at least this many milliseconds (scheduler noise on tiny steps)."""
    slowdown_warmup: int = 20
    """Steps of baseline needed before step.slowdown can fire."""
    baseline_window: int = 200
    """Rolling window (steps) of the step-time baseline."""

    # -- gradients across ranks ----------------------------------------------------
    grad_fingerprint_steps: int = 2
    """Steps of every ``exchange_every`` whose local gradient is fingerprinted (drawn
    per window from a per-run secret shared by the ranks; ``exchange_every`` = all)."""
    grad_norm_stride: int = 8
    """Large gradients' norms are read one row of 128 values in every N (which row is
    drawn per step from the run's secret); small tensors and the rows at each tensor's
    ends are read fully. 1 = read every value (the cost of a full pass on each
    fingerprinted step); see docs/guard.md for what sampling gives up."""
    grad_sketch: int = 64
    """Coordinates per parameter in the gradient sketch (shared seed on every rank)."""
    grad_log_ratio: float = 1.0
    """Per-layer gradient norm ratio (natural log) to the rank median that flags a rank
    before any history exists (1.0 = e**1 = 2.7x)."""
    grad_log_ratio_min: float = 0.7
    """Floor of the history-based threshold (0.7 = 2x)."""
    grad_z: float = 8.0
    """Robust z over the usual inter-rank spread of per-layer norms (after warm-up)."""
    grad_cos_margin: float = 0.5
    """Cosine gap to every peer (sketch vs sum of peers) that flags a direction outlier."""
    grad_pair_direction: bool = False
    """With exactly 2 ranks, flag any layer whose pair cosine is below
    ``-grad_cos_margin`` (what a sign flip on one rank gives), however few. Off by
    default: two honest ranks on uncorrelated batches (random tokens, tiny batches)
    reach that on single layers (measured: cosines of -0.5 to -0.6 in a clean 2-rank
    GPT run); turn it on for jobs whose ranks' gradients agree in direction."""
    grad_pair_share: float = 0.5
    """With exactly 2 ranks, the layers below ``-grad_cos_margin`` are flagged when they
    are at least this share of the usable layers in one window: a whole-gradient sign
    flip on one rank, which the own-trajectory tie-break then names (or nothing is
    reported). 1.01 turns it off."""
    grad_min_world: int = 3
    """Ranks needed to name the outlier by majority (2 ranks: reported unnamed)."""
    grad_windows: int = 1
    """Consecutive exchanges a rank must disagree before grad.rank_outlier."""
    sketch_seed: int = 0x7A11
    """Shared seed of the sampled coordinates (must be equal on every rank)."""
    data_parallel: str = "auto"
    """``auto`` (DDP or a plain replicated model), ``on`` or ``off``: whether ranks hold
    replicas, which gradient and replica agreement checks assume."""

    # -- replicas ------------------------------------------------------------------
    replica_sample: int = 32
    """Coordinates per parameter summed (and squared) for the replica fingerprint."""
    replica_slices: int = 16
    """Parameters are hashed bitwise one slice at a time; full coverage every N checks."""
    replica_self_check: bool = True
    """Each rank also compares its parameters (version counters and the sampled
    coordinates) between its post-step and its next pre-step, so that a rank whose
    parameters changed outside the optimizer is named even without a majority (2 ranks)."""

    # -- training dynamics ---------------------------------------------------------
    dynamics_params_per_step: int = 4
    """Parameters visited per step by the dynamics monitor (rotating)."""
    dynamics_coords: int = 32
    """Coordinates per parameter sampled by the dynamics monitor."""
    dynamics_warmup: int = 10
    """Observations of a series before its band is used."""
    dynamics_window: int = 200
    """Rolling window of each series."""
    dynamics_every: int = 5
    """Steps between host-side evaluations (no device sync in between)."""
    loss_z: float = 8.0
    """Robust z of a loss spike; also the rising-trend test."""
    grad_norm_z: float = 10.0
    """Robust z of a per-layer gradient norm jump."""
    update_z: float = 10.0
    """Robust z of the update/parameter ratio (per unit learning rate)."""
    update_consensus: float = 0.5
    """Fraction of an evaluation's sampled tensors whose update ratio must move the same
    way before it is reported: a changed learning rate moves every tensor, Adam's
    update of one small tensor legitimately collapses when its gradient changes sign."""

    # -- optimizer re-computation --------------------------------------------------
    audit_every: int = 20
    """Mean steps between optimizer audits (drawn at random; the first is step 2)."""
    audit_coords: int = 16
    """Coordinates per parameter re-computed."""
    audit_params: int = 64
    """Parameters per audit (random subset when there are more)."""
    audit_rtol: float = 1e-3
    """Relative tolerance on the update, on top of 8 float32 ulps of the parameter."""
    audit_mismatch_fraction: float = 0.25
    """Share of audited coordinates that must disagree before grad.anomaly."""

    # -- code integrity ------------------------------------------------------------
    patch_check_every: int = 20
    """Steps between identity re-checks of the patched-function table."""
    patch_check_seconds: float = 2.0
    """Seconds between re-checks from the background thread (0 = off)."""
    patch_extra_targets: tuple[str, ...] = ()
    """More dotted names to protect (``package.module.func`` or ``...Class.method``)."""

    # -- reporting -------------------------------------------------------------------
    repeat_every: int = 100
    """Steps before the same finding (kind, rank, location) is reported again."""
    telemetry_flush: int = 50
    """Telemetry events buffered before a batch write (findings are written at once)."""
    step_events: bool = True
    """Write a ``step`` event per optimizer step (seconds, loss, grad_norm) for reports."""
    grad_norm_every: int = 25
    """Steps between the guard's own global gradient-norm measurements for the ``step``
    events (0 = only values passed to ``observe(grad_norm=...)``)."""
    env_summary: bool = True
    """Rank 0 records an ``env.summary`` event at attach (versions, start-up checks, git)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Settings of monitors registered by other packages (free-form, by monitor)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``GuardContext.settings`` and the ``run.start`` event."""
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return out

    @classmethod
    def build(
        cls, settings: Mapping[str, Any] | None, overrides: Mapping[str, Any]
    ) -> GuardSettings:
        """Merge ``settings`` and keyword ``overrides``; reject unknown or bad values.

        Raises:
            GuardError: a name is unknown or a value has the wrong type or range.
        """
        merged: dict[str, Any] = {}
        merged.update(settings or {})
        merged.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        extra: dict[str, Any] = dict(merged.pop("extra", {}) or {})
        values: dict[str, Any] = {}
        defaults = cls()
        for name, value in merged.items():
            if name not in known:
                if "." in name or name.startswith("x_"):
                    # Namespaced settings of third-party monitors ("seeds.allow", "x_...").
                    extra[name] = value
                    continue
                raise GuardError(f"unknown guard setting {name!r}; see docs/guard.md for the list")
            default = getattr(defaults, name)
            values[name] = _coerce(name, value, default)
        return cls(**values, extra=extra)

    def __post_init__(self) -> None:
        """Reject nonsense values early, with the setting's name."""
        positive_ints = (
            "exchange_every",
            "timing_window",
            "delay_windows",
            "straggler_windows",
            "grad_sketch",
            "grad_norm_stride",
            "grad_fingerprint_steps",
            "replica_sample",
            "replica_slices",
            "dynamics_params_per_step",
            "dynamics_coords",
            "dynamics_every",
            "audit_every",
            "audit_coords",
            "audit_params",
            "patch_check_every",
            "repeat_every",
            "telemetry_flush",
            "grad_windows",
            "baseline_window",
            "dynamics_window",
        )
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise GuardError(f"guard setting {name} must be >= 1")
        if int(self.grad_norm_every) < 0:
            raise GuardError("guard setting grad_norm_every must be >= 0")
        if not 0.0 < self.sample_hz <= 2000.0:
            raise GuardError("guard setting sample_hz must be in (0, 2000]")
        if self.data_parallel not in ("auto", "on", "off"):
            raise GuardError("guard setting data_parallel must be auto, on or off")
        if not 0.0 < self.delay_fraction < 1.0:
            raise GuardError("guard setting delay_fraction must be in (0, 1)")
        if not 0.0 < self.grad_pair_share <= 1.01:
            raise GuardError("guard setting grad_pair_share must be in (0, 1.01]")
        if not 0.0 < self.update_consensus <= 1.0:
            raise GuardError("guard setting update_consensus must be in (0, 1]")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of the setting's default, or raise GuardError."""
    try:
        if isinstance(default, bool):
            return bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
        if isinstance(default, tuple) or default is None:
            if value is None:
                return None
            if isinstance(value, str):
                return tuple(v for v in value.split(",") if v)
            return tuple(str(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise GuardError(f"guard setting {name}: cannot use {value!r} ({exc})") from exc
    return value
