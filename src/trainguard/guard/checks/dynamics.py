"""``grad.anomaly`` / ``loss.anomaly`` from the training dynamics.

Catches corruption that every rank shares (tampered shared code), which no cross-rank
comparison can see. Per step, on a rotating subset of ``dynamics_params_per_step``
parameters and ``dynamics_coords`` sampled coordinates each (cheap index ops, no
device sync), it records:

- the gradient RMS per parameter (band in log space: a jump of ``grad_norm_z``
  robust sigmas; exactly zero where it was not: "gradients zeroed for a layer";
  non-finite: NaN/Inf);
- the update/parameter ratio per unit learning rate (band in log space: a silently
  scaled learning rate or a missing update moves it by orders of magnitude),
  reported when at least ``update_consensus`` of an evaluation's observations moved
  the same way (one small tensor's Adam update legitimately collapses now and then);
- the loss from ``guard.observe(loss=...)``: non-finite, or a spike of ``loss_z``
  robust sigmas above its rolling median.

Values are pulled to the host once every ``dynamics_every`` steps. Every band has a
warm-up of ``dynamics_warmup`` observations; flagged values are kept out of the
history so a sustained attack does not become the new normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import sample_indices, trainable_parameters
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import RollingBand, Throttle


@dataclass(frozen=True)
class _UpdateObs:
    """One tensor's update/parameter ratio on one step, judged against its band."""

    step: int
    param: int
    log_ratio: float
    z: float | None
    center: float
    lr: float


class DynamicsMonitor:
    """Robust bands over gradient norms, update ratios and the loss."""

    name = "dynamics"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._idx: list[torch.Tensor] = []
        self._cursor = 0
        self._k = 1
        self._current: tuple[list[int], torch.Tensor, float] | None = None
        self._pending: list[tuple[int, list[int], torch.Tensor, torch.Tensor, float]] = []
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._grad_bands: list[RollingBand] = []
        self._update_bands: list[RollingBand] = []
        self._loss_band: RollingBand | None = None
        self._throttle = Throttle(100)
        self._groups: dict[int, dict[str, Any]] = {}

    def start(self, ctx: GuardContext) -> None:
        """Draw sampled coordinates (private seed) and create the bands."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        named = trainable_parameters(ctx)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        for group in getattr(ctx.optimizer, "param_groups", []):
            for p in group.get("params", []):
                self._groups[id(p)] = group
        gen = torch.Generator().manual_seed(int(s["sketch_seed"]) + 2 + ctx.rank)
        k = self._k = int(s["dynamics_coords"])
        self._idx = [_exactly(sample_indices(p.numel(), k, gen, p.device), k) for p in self._params]
        window, warmup = int(s["dynamics_window"]), int(s["dynamics_warmup"])
        self._grad_bands = [
            RollingBand(window, warmup, rel_floor=0.0, abs_floor=0.25) for _ in self._params
        ]
        self._update_bands = [
            RollingBand(window, warmup, rel_floor=0.0, abs_floor=0.25) for _ in self._params
        ]
        self._loss_band = RollingBand(window, warmup, rel_floor=0.02, abs_floor=1e-8)

    def close(self, ctx: GuardContext) -> None:
        """Evaluate what is pending."""
        self._evaluate(ctx)

    # ------------------------------------------------------------------ per step
    def before_step(self, ctx: GuardContext) -> None:
        """Snapshot gradients and parameters of this step's parameter subset."""
        n = len(self._params)
        if n == 0:
            return
        per = min(int(ctx.settings["dynamics_params_per_step"]), n)
        chosen: list[int] = []
        for _ in range(n):
            j = self._cursor
            self._cursor = (self._cursor + 1) % n
            p = self._params[j]
            if p.grad is not None and not p.grad.is_sparse and p.numel() > 0:
                chosen.append(j)
            if len(chosen) >= per:
                break
        if not chosen:
            self._current = None
            return
        # One copy of this step's sampled gradient and parameter values; all arithmetic
        # is deferred to the evaluation, batched over its steps (fewer kernel launches).
        params, idx = self._params, self._idx
        with torch.no_grad():  # reshape under no_grad: no autograd bookkeeping to detach
            snap = torch.cat(
                [_grad(params[j]).reshape(-1).index_select(0, idx[j]) for j in chosen]
                + [params[j].reshape(-1).index_select(0, idx[j]) for j in chosen]
            )
        lr = _group_lr(self._groups.get(id(self._params[chosen[0]])))
        self._current = (chosen, snap, lr)

    def after_step(self, ctx: GuardContext) -> None:
        """Copy the subset's new values; evaluate every ``dynamics_every`` steps."""
        cur, self._current = self._current, None
        if cur is not None:
            chosen, snap, lr = cur
            params, idx = self._params, self._idx
            with torch.no_grad():
                after = torch.cat([params[j].reshape(-1).index_select(0, idx[j]) for j in chosen])
            self._pending.append((ctx.step, chosen, snap, after, lr))
        if ctx.step % int(ctx.settings["dynamics_every"]) == 0:
            self._evaluate(ctx)

    def on_observe(self, ctx: GuardContext, values: dict[str, Any]) -> None:
        """Keep the loss (no sync; read at the next evaluation)."""
        loss = values.get("loss")
        if loss is None:
            return
        t = (
            loss.detach().reshape(-1)[:1].to(torch.float64)
            if isinstance(loss, torch.Tensor)
            else torch.tensor([float(loss)], dtype=torch.float64)
        )
        self._losses.append((ctx.step, t))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, ctx: GuardContext) -> None:
        pending, self._pending = self._pending, []
        losses, self._losses = self._losses, []
        if pending:
            k = self._k
            with torch.no_grad():
                # Every sampled parameter has exactly k coordinates: the steps stack into
                # (rows, k) blocks, reduced per row in one pass, one host copy.
                snaps = torch.cat([snap.view(2, -1, k) for _, _, snap, _, _ in pending], dim=1)
                after = torch.cat([a.view(-1, k) for _, _, _, a, _ in pending])
                grads, before = snaps[0], snaps[1]
                sums = torch.stack(
                    [
                        grads.square().sum(1),
                        (after - before).square().sum(1),
                        before.square().sum(1),
                    ]
                )
                flat = sums.to(torch.float64).cpu().tolist()
            gsq, dsq, psq = flat
            pos = 0
            updates: list[_UpdateObs] = []
            for step, chosen, _, _, lr in pending:
                m = len(chosen)
                vals = (gsq[pos : pos + m], dsq[pos : pos + m], psq[pos : pos + m])
                self._check_step(ctx, step, chosen, vals, lr, updates)
                pos += m
            self._judge_updates(ctx, updates)
        if losses:
            values = torch.cat([t for _, t in losses]).cpu().tolist()
            for (step, _), v in zip(losses, values, strict=True):
                self._check_loss(ctx, step, v)

    def _check_step(
        self,
        ctx: GuardContext,
        step: int,
        chosen: list[int],
        vals: tuple[list[float], list[float], list[float]],
        lr: float,
        updates: list[_UpdateObs],
    ) -> None:
        """Gradient checks of one step; its update ratios are appended to ``updates``.

        ``vals``: per chosen parameter, the sums of squares of the sampled gradient,
        update and parameter values.
        """
        s = ctx.settings
        gsq, dsq, psq = vals
        k = float(self._k)
        for i, j in enumerate(chosen):
            grms = math.sqrt(gsq[i] / k) if math.isfinite(gsq[i]) else math.inf
            band = self._grad_bands[j]
            name = self.names[j]
            if not math.isfinite(grms):
                self._report(
                    ctx,
                    step,
                    "grad.anomaly",
                    ("nonfinite", name),
                    f"Non-finite gradient in {name}.",
                    {"param": name},
                    Severity.HIGH,
                )
                continue
            if grms == 0.0:
                if band.ready and math.exp(band.center()) > 0.0:
                    self._report(
                        ctx,
                        step,
                        "grad.anomaly",
                        ("zero", name),
                        f"The gradient of {name} is exactly zero on every sampled coordinate, "
                        f"where its RMS was {math.exp(band.center()):.3g}: "
                        "gradients zeroed for this layer.",
                        {
                            "param": name,
                            "check": "zero_gradient",
                            "baseline_rms": math.exp(band.center()),
                        },
                        Severity.HIGH,
                    )
                continue
            lg = math.log(grms)
            z = band.z(lg)
            if z is not None and z >= float(s["grad_norm_z"]):
                self._report(
                    ctx,
                    step,
                    "grad.anomaly",
                    ("spike", name),
                    f"Gradient RMS of {name} jumped to {grms:.3g} "
                    f"({math.exp(lg - band.center()):.1f}x its median).",
                    {"param": name, "check": "grad_spike", "robust_z": round(z, 2), "rms": grms},
                    Severity.HIGH,
                )
            else:
                band.add(lg)
            if lr > 0.0 and psq[i] > 0.0:
                ratio = math.sqrt(dsq[i] / psq[i]) / lr
                ub = self._update_bands[j]
                if ratio > 0.0 and math.isfinite(ratio):
                    lu = math.log(ratio)
                    updates.append(_UpdateObs(step, j, lu, ub.z(lu), ub.center(), lr))
                elif ratio == 0.0 and ub.ready and grms > 0.0:
                    self._report(
                        ctx,
                        step,
                        "grad.anomaly",
                        ("no_update", name),
                        f"{name} did not change in the optimizer step although its "
                        "gradient is non-zero.",
                        {"param": name, "check": "no_update", "lr": lr},
                        Severity.HIGH,
                    )

    def _judge_updates(self, ctx: GuardContext, updates: list[_UpdateObs]) -> None:
        """Report update ratios that moved together; grow the bands with the rest.

        A silently changed learning rate (or a scaled update kernel) moves the update
        of every tensor it touches by the same factor, so a report needs at least
        ``update_consensus`` of the evaluation's judged observations (and two of
        them) beyond ``update_z`` in the same direction. One tensor alone is not
        enough: Adam's update of a small tensor collapses by orders of magnitude,
        legitimately, on the steps where its first moment changes sign. Outlying
        observations never enter the bands, confirmed or not, so a sustained attack
        does not become the new normal. A tampering confined to a few tensors is the
        optimizer re-computation's to find.
        """
        if not updates:
            return
        limit = float(ctx.settings["update_z"])
        judged = [u for u in updates if u.z is not None]
        need = max(2, math.ceil(float(ctx.settings["update_consensus"]) * len(judged)))
        for sign, direction in ((1.0, "larger"), (-1.0, "smaller")):
            moved = [u for u in judged if u.z is not None and sign * u.z >= limit]
            if len(moved) < need:
                continue
            factors = sorted(math.exp(u.log_ratio - u.center) for u in moved)
            factor = factors[len(factors) // 2]
            names = sorted({self.names[u.param] for u in moved})
            zs = sorted(abs(u.z) for u in moved if u.z is not None)
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            self._report(
                ctx,
                max(u.step for u in moved),
                "grad.anomaly",
                ("update_ratio", direction),
                f"Updates of {len(moved)} of {len(judged)} sampled tensor observations "
                f"({shown}) are {factor:.2g}x their usual size per unit learning rate "
                "(learning rate silently changed?).",
                {
                    "params": names,
                    "check": "update_ratio",
                    "factor": factor,
                    "robust_z": round(zs[len(zs) // 2], 2),
                    "moved": len(moved),
                    "judged": len(judged),
                    "lr": moved[-1].lr,
                },
                Severity.HIGH,
            )
        for u in updates:
            if u.z is None or abs(u.z) < limit:
                self._update_bands[u.param].add(u.log_ratio)

    def _check_loss(self, ctx: GuardContext, step: int, value: float) -> None:
        band = self._loss_band
        if band is None:
            return
        if not math.isfinite(value):
            self._report(
                ctx,
                step,
                "loss.anomaly",
                ("nonfinite",),
                f"Loss is {value} at step {step}.",
                {"loss": str(value)},
                Severity.HIGH,
            )
            return
        z = band.z(value)
        if z is not None and z >= float(ctx.settings["loss_z"]):
            self._report(
                ctx,
                step,
                "loss.anomaly",
                ("spike",),
                f"Loss {value:.4g} is {z:.1f} robust sigmas above its rolling median "
                f"{band.center():.4g}.",
                {
                    "loss": value,
                    "median": band.center(),
                    "robust_z": round(z, 2),
                    "check": "loss_spike",
                },
                None,
            )
            return
        band.add(value)

    def _report(
        self,
        ctx: GuardContext,
        step: int,
        kind: str,
        key: tuple[Any, ...],
        message: str,
        evidence: dict[str, Any],
        severity: Severity | None,
    ) -> None:
        if not self._throttle.allow((kind, *key), ctx.step):
            return
        ev = dict(evidence)
        ev["at_step"] = step
        ctx.report(make_finding(ctx, kind, message, severity=severity, evidence=ev))


def _group_lr(group: dict[str, Any] | None) -> float:
    """The learning rate of a parameter group (0.0 when unknown)."""
    if group is None:
        return 0.0
    lr = group.get("lr", 0.0)
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def _exactly(idx: torch.Tensor, k: int) -> torch.Tensor:
    """``idx`` repeated cyclically to exactly ``k`` entries (a parameter with fewer
    elements than ``k``), so every sampled parameter has the same number of rows."""
    if idx.numel() >= k:
        return idx[:k]
    reps = -(-k // max(idx.numel(), 1))
    return idx.repeat(reps)[:k]


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p``'s gradient (zeros when it has none)."""
    return p.grad if p.grad is not None else torch.zeros_like(p)
