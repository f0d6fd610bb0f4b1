"""``grad.anomaly`` / ``loss.anomaly`` from the training dynamics.

Catches corruption that every rank shares (tampered shared code), which no cross-rank
comparison can see. Per step, on a rotating subset of ``dynamics_params_per_step``
parameters and ``dynamics_coords`` sampled coordinates each (cheap index ops, no
device sync), it records:

- the gradient RMS per parameter (band in log space: a jump of ``grad_norm_z``
  robust sigmas; exactly zero where it was not: "gradients zeroed for a layer";
  non-finite: NaN/Inf);
- the update/parameter ratio per unit learning rate (band in log space: a silently
  scaled learning rate or a missing update moves it by orders of magnitude);
- the loss from ``guard.observe(loss=...)``: non-finite, or a spike of ``loss_z``
  robust sigmas above its rolling median.

Values are pulled to the host once every ``dynamics_every`` steps. Every band has a
warm-up of ``dynamics_warmup`` observations; flagged values are kept out of the
history so a sustained attack does not become the new normal.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import flat_view, sample_indices, trainable_parameters
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import RollingBand, Throttle


class DynamicsMonitor:
    """Robust bands over gradient norms, update ratios and the loss."""

    name = "dynamics"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._idx: list[torch.Tensor] = []
        self._cursor = 0
        self._current: tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, float] | None = (
            None
        )
        self._pending: list[tuple[int, list[int], torch.Tensor, float]] = []
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._grad_bands: list[RollingBand] = []
        self._update_bands: list[RollingBand] = []
        self._loss_band: RollingBand | None = None
        self._throttle = Throttle(100)
        self._groups: dict[int, dict[str, Any]] = {}
        self._segments: dict[tuple[int, ...], torch.Tensor] = {}

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
        k = int(s["dynamics_coords"])
        self._idx = [sample_indices(p.numel(), k, gen, p.device) for p in self._params]
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
            if p.grad is not None and not p.grad.is_sparse:
                chosen.append(j)
            if len(chosen) >= per:
                break
        if not chosen:
            self._current = None
            return
        with torch.no_grad():
            grads = torch.cat(
                [_grad(self._params[j]).index_select(0, self._idx[j]) for j in chosen]
            )
            before = torch.cat(
                [flat_view(self._params[j]).index_select(0, self._idx[j]) for j in chosen]
            )
        key = tuple(chosen)
        seg = self._segments.get(key)
        if seg is None:
            seg = torch.cat(
                [
                    torch.full((self._idx[j].numel(),), i, dtype=torch.long, device=grads.device)
                    for i, j in enumerate(chosen)
                ]
            )
            if len(self._segments) > 4096:
                self._segments.clear()
            self._segments[key] = seg
        lr = _group_lr(self._groups.get(id(self._params[chosen[0]])))
        self._current = (chosen, seg, grads, before, lr)

    def after_step(self, ctx: GuardContext) -> None:
        """Measure the update of the snapshot subset; evaluate every ``dynamics_every`` steps."""
        cur, self._current = self._current, None
        if cur is not None:
            chosen, seg, g, before, lr = cur
            with torch.no_grad():
                after = torch.cat(
                    [flat_view(self._params[j]).index_select(0, self._idx[j]) for j in chosen]
                )
                m = len(chosen)
                # One index_add over [g^2, d^2, p^2, 1] columns: per-parameter sums in a
                # single kernel; float32 on the device, read as float64 on the host.
                d = after - before
                cols = torch.stack([g * g, d * d, before * before, torch.ones_like(g)], dim=1)
                sums = torch.zeros(m, 4, dtype=cols.dtype, device=cols.device).index_add_(
                    0, seg, cols
                )
            self._pending.append((ctx.step, chosen, sums.t().reshape(-1), lr))
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
            flat = torch.cat([t.reshape(-1) for _, _, t, _ in pending]).cpu().tolist()
            pos = 0
            for step, chosen, t, lr in pending:
                n = t.numel()
                self._check_step(ctx, step, chosen, flat[pos : pos + n], lr)
                pos += n
        if losses:
            values = torch.cat([t for _, t in losses]).cpu().tolist()
            for (step, _), v in zip(losses, values, strict=True):
                self._check_loss(ctx, step, v)

    def _check_step(
        self, ctx: GuardContext, step: int, chosen: list[int], vals: list[float], lr: float
    ) -> None:
        s = ctx.settings
        m = len(chosen)
        gsq, dsq, psq, cnt = vals[:m], vals[m : 2 * m], vals[2 * m : 3 * m], vals[3 * m : 4 * m]
        for i, j in enumerate(chosen):
            k = max(cnt[i], 1.0)
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
                    uz = ub.z(lu)
                    if uz is not None and abs(uz) >= float(s["update_z"]):
                        self._report(
                            ctx,
                            step,
                            "grad.anomaly",
                            ("update_ratio", name),
                            f"Update of {name} is {math.exp(lu - ub.center()):.2g}x its usual size "
                            "per unit "
                            "learning rate (learning rate silently changed?).",
                            {
                                "param": name,
                                "check": "update_ratio",
                                "robust_z": round(uz, 2),
                                "lr": lr,
                            },
                            Severity.HIGH,
                        )
                    else:
                        ub.add(lu)
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


def _grad(p: torch.Tensor) -> torch.Tensor:
    """Flat view of ``p``'s gradient (zeros when it has none)."""
    return flat_view(p.grad if p.grad is not None else torch.zeros_like(p))
