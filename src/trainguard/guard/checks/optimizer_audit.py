"""Independent re-computation of the optimizer update on sampled coordinates.

Why: an insider who edits a C++ kernel, a compiled extension or a Python function
whose source we do not compare can make ``optimizer.step()`` do anything while every
Python object still looks pristine. The only check that does not trust the code is to
do the arithmetic again. On audit steps (random, mean gap ``audit_every``; the first
at step 2) the pre-step hook snapshots, for ``audit_coords`` random coordinates of up
to ``audit_params`` parameters: the parameter, the gradient, the optimizer state
(momentum buffer; Adam's moments and step) and the group's hyper-parameters. After
the step we compute the expected new values in float64 with our own implementation
of the update rule and compare:

    |actual - expected| <= 8 * eps(dtype) * max(|p_old|, |p_new|) + audit_rtol * |expected - p_old|

A parameter fails when at least ``max(2, audit_mismatch_fraction * k)`` of its ``k``
coordinates disagree; any failing parameter is a ``grad.anomaly`` whose evidence
gives the median ratio actual/expected update (``-1``: sign flipped; ``0``: no update;
``c``: learning rate scaled by ``c``).

Supported: ``torch.optim.SGD`` (momentum, dampening, nesterov, weight decay,
maximize), ``Adam`` and ``AdamW`` (weight decay coupled or decoupled, amsgrad,
maximize), any of their implementations (single-tensor, foreach, fused). Other
optimizers are recorded as not audited (``optimizer_audit.unsupported`` event).
The audit schedule is drawn from a private random source so a saboteur who knows the
code still cannot predict which steps are checked.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from dataclasses import dataclass
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import Throttle, median

_logger = logging.getLogger(__name__)


@dataclass
class _Snap:
    """Sampled values of one parameter before the step."""

    name: str
    param: torch.Tensor
    idx: torch.Tensor
    p: torch.Tensor
    g: torch.Tensor
    state: dict[str, torch.Tensor | None]
    step: float
    hyper: dict[str, Any]
    group: int = 0
    """Identity of the parameter group: snapshots sharing group, state keys and step
    are re-computed together, as one float64 vector."""


def _kind(optimizer: Any) -> str | None:
    t = type(optimizer)
    if t is torch.optim.SGD:
        return "sgd"
    if t is torch.optim.AdamW:
        return "adamw"
    if t is torch.optim.Adam:
        return "adam"
    return None


def _num(v: Any) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def expected_sgd(s: _Snap) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New parameter values under torch's SGD rule (float64)."""
    h = s.hyper
    lr, mom, damp, wd = (
        _num(h["lr"]),
        _num(h.get("momentum", 0.0)),
        _num(h.get("dampening", 0.0)),
        _num(h.get("weight_decay", 0.0)),
    )
    g = -s.g if h.get("maximize", False) else s.g
    if wd != 0.0:
        g = g + wd * s.p
    buf_new = None
    if mom != 0.0:
        buf = s.state.get("momentum_buffer")
        buf_new = g.clone() if buf is None else mom * buf + (1.0 - damp) * g
        g = g + mom * buf_new if h.get("nesterov", False) else buf_new
    return s.p - lr * g, buf_new


def expected_adam(s: _Snap, decoupled_default: bool) -> torch.Tensor:
    """New parameter values under torch's Adam/AdamW rule (float64)."""
    h = s.hyper
    lr, wd, eps = _num(h["lr"]), _num(h.get("weight_decay", 0.0)), _num(h.get("eps", 1e-8))
    beta1, beta2 = (_num(b) for b in h.get("betas", (0.9, 0.999)))
    decoupled = bool(h.get("decoupled_weight_decay", decoupled_default))
    g = -s.g if h.get("maximize", False) else s.g
    p = s.p
    if wd != 0.0:
        if decoupled:
            p = p * (1.0 - lr * wd)
        else:
            g = g + wd * p
    zeros = torch.zeros_like(g)
    m = s.state.get("exp_avg")
    v = s.state.get("exp_avg_sq")
    m = zeros if m is None else m
    v = zeros if v is None else v
    step = s.step + 1.0
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    if h.get("amsgrad", False):
        vmax = s.state.get("max_exp_avg_sq")
        vmax = v if vmax is None else torch.maximum(vmax, v)
        denom = vmax.sqrt() / math.sqrt(bc2) + eps
    else:
        denom = v.sqrt() / math.sqrt(bc2) + eps
    result: torch.Tensor = p - (lr / bc1) * m / denom
    return result


class OptimizerAuditMonitor:
    """Re-computes sampled coordinates of the optimizer update in float64."""

    name = "optimizer_audit"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.kind: str | None = None
        # Not for cryptography: an unpredictable schedule, seeded from the OS.
        self._rng = random.Random(secrets.randbits(64))  # noqa: S311
        self._gen = torch.Generator().manual_seed(secrets.randbits(62))
        self._next = 2
        self._snaps: list[_Snap] = []
        self._names: dict[int, str] = {}
        self._throttle = Throttle(100)
        self.audits = 0

    def start(self, ctx: GuardContext) -> None:
        """Identify the optimizer's update rule (or record that it is not audited)."""
        self._throttle = Throttle(int(ctx.settings["repeat_every"]))
        self.kind = _kind(ctx.optimizer)
        module = ctx.settings.get("_module") or ctx.model
        self._names = {id(p): n for n, p in module.named_parameters()}
        self._next = ctx.step + 2
        if self.kind is None:
            ctx.sink.record(
                "optimizer_audit.unsupported", {"optimizer": type(ctx.optimizer).__qualname__}
            )

    def close(self, ctx: GuardContext) -> None:
        """Nothing to remove."""

    def before_step(self, ctx: GuardContext) -> None:
        """On an audit step, snapshot the sampled coordinates."""
        self._snaps = []
        if self.kind is None or ctx.step + 1 != self._next:
            return
        s = ctx.settings
        k = int(s["audit_coords"])
        candidates: list[tuple[torch.Tensor, dict[str, Any]]] = [
            (p, group)
            for group in ctx.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and not p.grad.is_sparse and not p.is_complex()
        ]
        limit = int(s["audit_params"])
        if len(candidates) > limit:
            candidates = self._rng.sample(candidates, limit)
        # Gather every sampled value on its device first and copy to the host once:
        # one device sync per audit, not one per tensor. The coordinates of every
        # candidate are drawn in one call (with replacement, as before).
        keys = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        pieces: list[torch.Tensor] = []
        layout: list[tuple[torch.Tensor, dict[str, Any], torch.Tensor, list[str], float]] = []
        if not candidates:
            return
        numels = torch.tensor([p.numel() for p, _ in candidates], dtype=torch.float64)
        draws = torch.rand(len(candidates), k, generator=self._gen, dtype=torch.float64)
        drawn = torch.minimum((draws * numels[:, None]).long(), numels.long()[:, None] - 1)
        with torch.no_grad():
            for row, (p, group) in enumerate(candidates):
                n = p.numel()
                idx = drawn[row, : min(k, n)].to(p.device)
                state = ctx.optimizer.state.get(p, {})
                present = [key for key in keys if isinstance(state.get(key), torch.Tensor)]
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                pieces.extend(
                    t.reshape(-1).index_select(0, idx)
                    for t in (p, grad, *(state[key] for key in present))
                )
                layout.append((p, group, idx, present, _num(state.get("step", 0.0))))
            device = pieces[0].device
            host = torch.cat([t.to(device) for t in pieces]).to(torch.float64).cpu()
        pos = 0
        for p, group, idx, present, step in layout:
            k_p = idx.numel()
            values = [host[pos + i * k_p : pos + (i + 1) * k_p] for i in range(2 + len(present))]
            pos += k_p * (2 + len(present))
            sampled: dict[str, torch.Tensor | None] = dict.fromkeys(keys)
            sampled.update(zip(present, values[2:], strict=True))
            self._snaps.append(
                _Snap(
                    name=self._names.get(id(p), f"param{len(self._snaps)}"),
                    param=p,
                    idx=idx,
                    p=values[0],
                    g=values[1],
                    state=sampled,
                    step=step,
                    hyper={key: v for key, v in group.items() if key != "params"},
                    group=id(group),
                )
            )

    def _expected(self, batch: list[_Snap]) -> torch.Tensor:
        """Expected new values of a batch of snapshots sharing group, state keys and step."""
        first = batch[0]
        merged = _Snap(
            name=first.name,
            param=first.param,
            idx=first.idx,
            p=torch.cat([snap.p for snap in batch]),
            g=torch.cat([snap.g for snap in batch]),
            state={
                key: None if value is None else torch.cat(_present(batch, key))
                for key, value in first.state.items()
            },
            step=first.step,
            hyper=first.hyper,
            group=first.group,
        )
        if self.kind == "sgd":
            return expected_sgd(merged)[0]
        return expected_adam(merged, decoupled_default=self.kind == "adamw")

    def after_step(self, ctx: GuardContext) -> None:
        """Compare the actual update with the re-computed one."""
        snaps, self._snaps = self._snaps, []
        if not snaps:
            return
        self._next = (
            ctx.step + 1 + self._rng.randint(1, max(2 * int(ctx.settings["audit_every"]) - 1, 1))
        )
        self.audits += 1
        s = ctx.settings
        failing: list[dict[str, Any]] = []
        ratios: list[float] = []
        # Snapshots sharing group, state keys and step are re-computed as one vector.
        batches: dict[tuple[int, tuple[str, ...], float], list[_Snap]] = {}
        for snap in snaps:
            present = tuple(key for key, v in snap.state.items() if v is not None)
            batches.setdefault((snap.group, present, snap.step), []).append(snap)
        snaps = [snap for batch in batches.values() for snap in batch]
        counts = [snap.idx.numel() for snap in snaps]
        with torch.no_grad():
            device = snaps[0].param.device
            new_all = (
                torch.cat(
                    [snap.param.reshape(-1).index_select(0, snap.idx).to(device) for snap in snaps]
                )
                .to(torch.float64)
                .cpu()
            )
        exp_all = torch.cat([self._expected(batch) for batch in batches.values()])
        old_all = torch.cat([snap.p for snap in snaps])
        eps_all = torch.repeat_interleave(
            torch.tensor([_eps(snap.param) for snap in snaps], dtype=torch.float64),
            torch.tensor(counts),
        )
        exp_delta_all = exp_all - old_all
        tol_all = (
            8 * eps_all * torch.maximum(old_all.abs(), new_all.abs())
            + float(s["audit_rtol"]) * exp_delta_all.abs()
            + 1e-12
        )
        bad_all = (new_all - exp_all).abs() > tol_all
        seg = torch.repeat_interleave(torch.arange(len(snaps)), torch.tensor(counts))
        nbad_per = (
            torch.zeros(len(snaps), dtype=torch.float64).index_add_(0, seg, bad_all.double())
        ).tolist()
        total = sum(counts)
        mismatched = int(sum(nbad_per))
        offset = 0
        for snap, k, nbad_f in zip(snaps, counts, nbad_per, strict=True):
            part = slice(offset, offset + k)
            offset += k
            nbad = int(nbad_f)
            if nbad < max(2, math.ceil(float(s["audit_mismatch_fraction"]) * k)) and not (
                k < 2 and nbad
            ):
                continue
            new, exp, exp_delta = new_all[part], exp_all[part], exp_delta_all[part]
            act_delta = new - snap.p
            meaningful = exp_delta.abs() > tol_all[part]
            r = (
                (act_delta[meaningful] / exp_delta[meaningful]).tolist()
                if bool(meaningful.any())
                else []
            )
            ratio = median(r) if r else math.nan
            ratios.extend(r)
            failing.append(
                {
                    "param": snap.name,
                    "mismatched": nbad,
                    "coords": k,
                    "median_ratio_actual_to_expected": round(ratio, 6)
                    if math.isfinite(ratio)
                    else None,
                    "example": {
                        "old": float(snap.p[0]),
                        "expected": float(exp[0]),
                        "actual": float(new[0]),
                    },
                }
            )
        ctx.sink.record(
            "optimizer_audit",
            {"step": ctx.step, "coords": total, "mismatched": mismatched, "params": len(snaps)},
        )
        if not failing:
            return
        overall = median(ratios) if ratios else math.nan
        diagnosis = _diagnose(overall)
        if not self._throttle.allow(("grad.anomaly", "optimizer_recompute"), ctx.step):
            return
        ctx.report(
            make_finding(
                ctx,
                "grad.anomaly",
                f"The {type(ctx.optimizer).__name__} update disagrees with an independent "
                "re-computation "
                f"on {len(failing)} of {len(snaps)} audited parameters ({diagnosis}).",
                severity=Severity.HIGH,
                evidence={
                    "check": "optimizer_recompute",
                    "optimizer": type(ctx.optimizer).__qualname__,
                    "median_ratio_actual_to_expected": round(overall, 6)
                    if math.isfinite(overall)
                    else None,
                    "diagnosis": diagnosis,
                    "params": failing[:20],
                    "coords_checked": total,
                    "coords_mismatched": mismatched,
                },
            )
        )


def _present(batch: list[_Snap], key: str) -> list[torch.Tensor]:
    """The state tensor ``key`` of every snapshot of a batch (all have it: same keys)."""
    return [t for snap in batch if (t := snap.state.get(key)) is not None]


def _eps(param: torch.Tensor) -> float:
    """Machine epsilon of the parameter's dtype (0 for integer parameters)."""
    return torch.finfo(param.dtype).eps if param.is_floating_point() else 0.0


def _diagnose(ratio: float) -> str:
    """Words for the median ratio actual/expected update."""
    if not math.isfinite(ratio):
        return "update where none was expected, or non-finite values"
    if abs(ratio + 1.0) < 0.05:
        return "update sign flipped"
    if abs(ratio) < 0.05:
        return "update missing"
    if ratio < 0:
        return f"update reversed and scaled by {ratio:.3g}"
    return f"update scaled by {ratio:.3g} (learning rate silently changed?)"
