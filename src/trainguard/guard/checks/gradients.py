"""``grad.rank_outlier``: the rank whose local gradient disagrees with all its peers.

Why before the all-reduce: corruption applied to one rank's gradient is averaged into
every replica by the all-reduce, after which all replicas agree and replica hashes
see nothing (runtime.md §2.3, the Megatron weight-hash blind spot). So each rank
fingerprints its *local* gradient before it is reduced:

- **DDP** (chosen mechanism): a DDP communication hook that wraps the default
  all-reduce (``default_hooks.allreduce_hook``). It sees each bucket exactly as it is
  about to be reduced -- after every tensor hook and gradient accumulation, so a
  tensor hook that corrupts the gradient is inside the fingerprint. The hook records
  per-parameter squared norms (sampled rows of the bucket buffer for large tensors,
  :mod:`trainguard.guard.checks.gradnorm`) and a sketch (the
  values at ``grad_sketch`` coordinates per parameter drawn with a seed shared by
  every rank), then hands the bucket to the stock all-reduce. If the job already
  registered its own comm hook (DDP allows one), tensor hooks on the parameters are
  used instead (they run before DDP copies the gradient into its bucket).
- **manual all-reduce loops** (no DDP, several ranks): post-accumulate-grad hooks on
  the parameters, which run when backward has accumulated the local gradient and
  before the user's ``all_reduce`` call.

What is taken when: the sketch (a few thousand coordinates, one ``index_select`` per
bucket) on every step; the per-parameter norms on ``grad_fingerprint_steps`` of every
``exchange_every`` steps (default 2 of 5), chosen per window by a keyed draw from a
secret rank 0 shares at attach, which also picks the rows the norms read. Every rank
measures the same steps and rows (so the comparison is fair), and the schedule, the
rows and the sketch coordinates cannot be read from trainguard's source.
The fingerprints of a window accumulate and are exchanged every ``exchange_every``
steps. Scoring per parameter (vectorised over parameters: one tensor expression per check, no Python
loop per layer on clean exchanges):

- *norm*: ``log(norm) - median over ranks``; a rank is an outlier when this exceeds
  ``grad_z`` times the usual inter-rank spread of that layer (robust history), or
  ``grad_log_ratio`` before a history exists. Catches scaling, added noise, one layer.
- *direction*: cosine between the rank's sketch and the sum of its peers' sketches;
  a rank is an outlier when its cosine is negative and below the median of the
  others by ``grad_cos_margin``. Catches sign flips, which keep the norm.

With 3 or more ranks the outlier is named by majority. With 2 ranks (or no majority)
the two disagree symmetrically, so the tie is broken by each rank's own trajectory
(:mod:`trainguard.guard.checks.gradtrack`): the rank whose local gradient departs from
its own recent norms and from the previous all-reduced direction while the other's does
not is named; when neither or both depart, the finding is reported without a rank.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import weakref
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import is_replicated, sample_indices, trainable_parameters
from trainguard.guard.checks.gradnorm import BucketNormPlan
from trainguard.guard.checks.gradtrack import Trajectory
from trainguard.guard.findingutil import check_failed, make_finding
from trainguard.guard.stats import MAD_TO_SIGMA, Throttle, median

_logger = logging.getLogger(__name__)

_DECIDE_WINDOWS = 2
"""Disagreeing windows (no majority) in which the own-trajectory tie-break may decide."""

_UNNAMED_WINDOWS = 2
"""Consecutive disagreeing windows before a disagreement no rank is named for is reported."""


class _CommHookSlot:
    """The one comm hook trainguard registers on a DDP model, and who it reports to.

    DDP accepts one comm hook per model and cannot remove it. The hook therefore calls
    whichever guard currently holds the slot (none after ``close``: a plain
    all-reduce), so a guard attached again to the same model (a new run segment, a
    callback per phase) uses the comm hook again rather than slower tensor hooks.
    """

    def __init__(self) -> None:
        self.monitor: GradientMonitor | None = None


_SLOTS: weakref.WeakKeyDictionary[Any, _CommHookSlot] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def _comm_hook_slot(ddp: Any, process_group: Any) -> _CommHookSlot:
    """The slot of ``ddp``'s trainguard comm hook, registering the hook on first use.

    Raises:
        RuntimeError: DDP refused the hook (the job registered its own).
    """
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    with _SLOTS_LOCK:
        slot = _SLOTS.get(ddp)
        if slot is not None:
            return slot
        slot = _CommHookSlot()

        def hook(state: Any, bucket: Any) -> Any:
            monitor = slot.monitor
            if monitor is not None:
                monitor.on_bucket(bucket)
            return default_hooks.allreduce_hook(state, bucket)

        # Real (not string) annotations: DDP inspects them.
        hook.__annotations__ = {
            "state": object,
            "bucket": dist.GradBucket,  # type: ignore[attr-defined]
            "return": torch.futures.Future[torch.Tensor],
        }
        ddp.register_comm_hook(process_group, hook)
        _SLOTS[ddp] = slot
        return slot


class GradientMonitor:
    """Fingerprints each rank's local gradient before the all-reduce; compares ranks."""

    name = "gradients"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.enabled = False
        self.mode = "off"
        self.names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._index: dict[int, int] = {}
        self._idx: list[torch.Tensor] = []
        self._offsets: list[int] = []
        self._plans: dict[tuple[int, int, int, int], Any] = {}
        self._phases: list[int] = []
        self._handles: list[Any] = []
        self._sumsq = torch.zeros(0, dtype=torch.float64)
        self._sketch = torch.zeros(0, dtype=torch.float32)
        """Sum of the sampled gradient values over the window (float32: the gradients'
        own precision; no conversion pass on the backward of every step)."""
        self._steps = 0
        self._norm_steps = 0
        self._seen = False
        self._seen_norm = False
        self._history = torch.zeros(0, 0, dtype=torch.float64)
        self._hist_pos = 0
        self._seg = torch.zeros(0, dtype=torch.long)
        self._big_enough = torch.zeros(0, dtype=torch.bool)
        self._trajectory: Trajectory | None = None
        self._episode: dict[str, Any] | None = None
        """The current run of disagreeing windows without a majority, and its verdict."""
        self._streak: dict[int, int] = {}
        self._ctx: GuardContext | None = None
        self._secret = 0
        self._every = 5
        self._per_window = 2
        self._window = -1
        self._window_steps: frozenset[int] = frozenset()
        self._stride = 1
        self._phase = 0
        """Which row of every ``grad_norm_stride`` the step being fingerprinted reads."""
        self.fingerprints = 0
        """Steps whose norms were measured so far (for tests and cost accounting)."""
        self.seconds = 0.0
        """Wall time spent fingerprinting inside the DDP comm hook (cost accounting)."""
        self.cpu_seconds = 0.0
        """CPU time of the same (not inflated by other processes on the cores)."""
        self.norm_cpu_seconds = 0.0
        """Of which on the steps whose norms were measured."""
        self._slot: _CommHookSlot | None = None
        self._throttle = Throttle(100)
        self._failed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self, ctx: GuardContext) -> None:
        """Choose the hook point (DDP comm hook or parameter hooks) and install it."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        self._ctx = ctx
        self._secret = int(s.get("_secret", 0))
        self._every = int(s["exchange_every"])
        self._per_window = min(int(s["grad_fingerprint_steps"]), self._every)
        self._stride = int(s["grad_norm_stride"])
        named = trainable_parameters(ctx)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._index = {id(p): j for j, p in enumerate(self._params)}
        gen = torch.Generator().manual_seed((int(s["sketch_seed"]) + self._secret) % (1 << 62))
        k = int(s["grad_sketch"])
        offset = 0
        for p in self._params:
            idx = sample_indices(p.numel(), k, gen, p.device)
            self._idx.append(idx)
            self._offsets.append(offset)
            offset += idx.numel()
        device = self._params[0].device if self._params else torch.device("cpu")
        self._sumsq = torch.zeros(len(self._params), dtype=torch.float64, device=device)
        self._sketch = torch.zeros(offset, dtype=torch.float32, device=device)
        # Ring buffer of |log-norm deviation| per parameter (NaN = empty slot).
        self._history = torch.full((200, len(self._params)), math.nan, dtype=torch.float64)
        self._seg = (
            torch.cat(
                [torch.full((idx.numel(),), j, dtype=torch.long) for j, idx in enumerate(self._idx)]
            )
            if self._idx
            else torch.zeros(0, dtype=torch.long)
        )
        # Layers with fewer than 4 sketch coordinates give no usable cosine.
        self._big_enough = torch.tensor([idx.numel() >= 4 for idx in self._idx], dtype=torch.bool)
        self.enabled = ctx.world_size > 1 and is_replicated(ctx) and bool(self._params)
        if not self.enabled:
            return
        ddp = s.get("_ddp")
        if ddp is not None:
            try:
                self._slot = _comm_hook_slot(ddp, ctx.process_group)
                if self._slot.monitor is not None:
                    raise RuntimeError("another open guard holds this DDP model's comm hook")
                self._slot.monitor = self
                self.mode = "ddp_comm_hook"
            except (RuntimeError, AssertionError) as exc:
                self._slot = None
                _logger.info("DDP comm hook unavailable (%s); using tensor hooks", exc)
                self._install_tensor_hooks()
                self.mode = "tensor_hooks"
        else:
            for p in self._params:
                register = p.register_post_accumulate_grad_hook
                self._handles.append(register(self._post_accumulate))  # type: ignore[no-untyped-call]
            self.mode = "post_accumulate_grad_hooks"
        ctx.sink.record("gradients.mode", {"mode": self.mode, "params": len(self._params)})

    def close(self, ctx: GuardContext) -> None:
        """Remove the parameter hooks and leave the DDP comm hook's slot.

        DDP cannot unregister a comm hook: ours stays, as a plain all-reduce, and the
        next guard attached to the same model takes the slot over.
        """
        self.enabled = False
        if self._slot is not None and self._slot.monitor is self:
            self._slot.monitor = None
        self._slot = None
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing: fingerprints were taken during backward."""

    def after_step(self, ctx: GuardContext) -> None:
        """Count the step into the window when backward produced a fingerprint."""
        if self._seen:
            self._steps += 1
            self._seen = False
        if self._seen_norm:
            self._norm_steps += 1
            self.fingerprints += 1
            self._seen_norm = False

    # ------------------------------------------------------------------ hooks
    def scheduled(self) -> bool:
        """Whether the step being computed now (``ctx.step + 1``) is fingerprinted.

        The ``grad_fingerprint_steps`` steps of each window of ``exchange_every`` are
        drawn from the shared secret and the window number: equal on every rank,
        unknown to code that only knows trainguard's source.
        """
        ctx = self._ctx
        if ctx is None:
            return False
        step = ctx.step + 1
        window = (step - 1) // self._every
        if window != self._window:
            # Not for cryptography: a schedule keyed by a per-run secret.
            draw = random.Random(self._secret * 1_000_003 + window)  # noqa: S311
            self._window = window
            self._window_steps = frozenset(
                window * self._every + 1 + k
                for k in draw.sample(range(self._every), self._per_window)
            )
            self._phases = [draw.randrange(self._stride) for _ in range(self._every)]
        self._phase = self._phases[(step - 1) % self._every]
        return step in self._window_steps

    def on_bucket(self, bucket: Any) -> None:
        """Fingerprint one DDP bucket before its all-reduce (called by the comm hook)."""
        if not self.enabled:
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        with_norms = self.scheduled()
        try:
            self._fingerprint_bucket(bucket, with_norms)
        except Exception as exc:  # never break the all-reduce; report once
            if not self._failed:
                _logger.exception("gradient fingerprint failed")
                self._failed = True
                if self._ctx is not None:
                    self._ctx.report(check_failed(self._ctx, self.name, "the DDP comm hook", exc))
        self.seconds += time.perf_counter() - t0
        cpu = time.thread_time() - c0
        self.cpu_seconds += cpu
        if with_norms:
            self.norm_cpu_seconds += cpu

    def _fingerprint_bucket(self, bucket: Any, with_norms: bool) -> None:
        params = bucket.parameters()
        if not params:
            return
        buffer = bucket.buffer()
        # DDP rebuilds its buckets after the first iteration (parameter order changes,
        # and a new buffer may reuse the old one's address): the key names the layout.
        key = (int(bucket.index()), len(params), id(params[0]), id(params[-1]))
        plan = self._plans.get(key)
        grads: list[torch.Tensor] | None = None
        if plan is None:
            grads = bucket.gradients()
            plan = self._plan(buffer, params, grads)
            if len(self._plans) > 64:  # buckets rebuilt many times: keep the cache small
                self._plans.clear()
            self._plans[key] = plan
        js, buf_idx, dest, keep, norm_plan = plan
        if js.numel() == 0:
            return
        if with_norms and norm_plan is not None:
            norm_plan.accumulate(buffer, self._phase, self._sumsq)
            self._seen_norm = True
        elif with_norms or buf_idx is None:
            # bucket.gradients() builds one view per parameter: only when needed.
            if grads is None:
                grads = bucket.gradients()
            tracked = [grads[i] for i in keep]
            if with_norms:
                norms = torch.stack(torch._foreach_norm(tracked)).to(torch.float64)
                self._sumsq.index_add_(0, js, norms * norms)
                self._seen_norm = True
        if buf_idx is not None:
            vals = buffer.reshape(-1).index_select(0, buf_idx)
        else:
            vals = torch.cat(
                [
                    tracked[n].reshape(-1).index_select(0, self._idx[int(j)])
                    for n, j in enumerate(js.tolist())
                ]
            )
        if vals.dtype != torch.float32:
            vals = vals.to(torch.float32)
        self._sketch.index_add_(0, dest, vals)
        self._seen = True

    def _plan(self, buffer: torch.Tensor, params: list[Any], grads: list[torch.Tensor]) -> Any:
        """Index tensors that map a bucket's layout to our parameter slots (cached)."""
        js: list[int] = []
        keep: list[int] = []
        buf_parts: list[torch.Tensor] = []
        dest_parts: list[torch.Tensor] = []
        elem_offsets: list[int] = []
        numels: list[int] = []
        contiguous_ok = True
        base = buffer.data_ptr()
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            j = self._index.get(id(p))
            if j is None:
                continue
            js.append(j)
            keep.append(i)
            idx = self._idx[j]
            dest_parts.append(
                torch.arange(self._offsets[j], self._offsets[j] + idx.numel(), device=idx.device)
            )
            off_bytes = g.data_ptr() - base
            if not g.is_contiguous() or off_bytes % g.element_size() != 0 or off_bytes < 0:
                contiguous_ok = False
            else:
                buf_parts.append(idx + off_bytes // g.element_size())
                elem_offsets.append(off_bytes // g.element_size())
                numels.append(g.numel())
        device = self._sumsq.device
        js_t = torch.tensor(js, dtype=torch.long, device=device)
        dest = (
            torch.cat(dest_parts).to(device)
            if dest_parts
            else torch.zeros(0, dtype=torch.long, device=device)
        )
        buf_idx = torch.cat(buf_parts).to(buffer.device) if (contiguous_ok and buf_parts) else None
        norm_plan = (
            BucketNormPlan(js, elem_offsets, numels, buffer.numel(), self._stride, buffer.device)
            if self._stride > 1
            and buf_idx is not None
            and buffer.is_contiguous()
            and buffer.is_floating_point()
            else None
        )
        return js_t, buf_idx, dest, keep, norm_plan

    def _install_tensor_hooks(self) -> None:
        for j, p in enumerate(self._params):
            hook = self._make_tensor_hook(j)
            self._handles.append(p.register_hook(hook))  # type: ignore[no-untyped-call]

    def _make_tensor_hook(self, j: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self._accumulate(j, grad)

        return hook

    def _post_accumulate(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._accumulate(self._index[id(p)], p.grad)

    def _accumulate(self, j: int, grad: torch.Tensor) -> None:
        if not self.enabled:
            return
        g = grad.detach()
        if self.scheduled():
            self._sumsq[j] += (
                g.to(torch.float64).pow(2).sum()
                if g.numel() < 4096
                else torch.linalg.vector_norm(g).to(torch.float64) ** 2
            )
            self._seen_norm = True
        o = self._offsets[j]
        idx = self._idx[j]
        self._sketch[o : o + idx.numel()] += g.reshape(-1).index_select(0, idx).to(torch.float32)
        self._seen = True

    # ------------------------------------------------------------------ exchange
    def exchange_size(self, ctx: GuardContext) -> int:
        """Per-parameter RMS norm, the sketch, and the number of steps in the window."""
        return len(self._params) + int(self._sketch.numel()) + 1

    def exchange_payload(self, ctx: GuardContext) -> torch.Tensor:
        """This rank's window fingerprint (then reset)."""
        steps = max(self._steps, 1)
        norm_steps = max(self._norm_steps, 1)
        vec = torch.cat(
            [
                (self._sumsq / norm_steps).sqrt(),
                self._sketch.to(torch.float64) / steps,
                torch.tensor([float(self._steps)], dtype=torch.float64, device=self._sumsq.device),
            ]
        )
        self._sumsq.zero_()
        self._sketch.zero_()
        self._steps = 0
        self._norm_steps = 0
        return vec

    def on_exchange(self, ctx: GuardContext, gathered: torch.Tensor) -> None:
        """Score every rank against its peers; report the outlier(s)."""
        world = gathered.shape[0]
        if not self.enabled or world < 2:
            return
        n_params = len(self._params)
        counts = gathered[:, -1]
        if bool((counts <= 0).any()) or not bool(torch.isfinite(gathered).all()):
            return
        norms = gathered[:, :n_params]
        sketch = gathered[:, n_params:-1]
        s = ctx.settings
        flagged: dict[int, dict[str, list[dict[str, Any]]]] = {}
        # -- norm: deviation of each rank's log-norm from the rank median, per layer.
        log_norms = torch.log(norms.clamp_min(1e-30))
        alive = (log_norms > math.log(1e-29)).any(dim=0)
        med = (  # the mean of the middle two
            log_norms.mean(dim=0, keepdim=True)
            if world == 2
            else torch.quantile(log_norms, 0.5, dim=0, keepdim=True)
        )
        devs = log_norms - med
        hist = self._history
        floor = min(float(s["grad_log_ratio_min"]), float(s["grad_log_ratio"]))
        if bool((devs.abs() > floor).any()):
            filled = (~torch.isnan(hist)).sum(dim=0)
            spread = torch.nan_to_num(torch.nanquantile(hist, 0.5, dim=0), nan=0.0)
            threshold = torch.where(
                filled >= 6,
                (float(s["grad_z"]) * MAD_TO_SIGMA * spread).clamp_min(
                    float(s["grad_log_ratio_min"])
                ),
                torch.full_like(spread, float(s["grad_log_ratio"])),
            )
            norm_hits = (devs.abs() > threshold) & alive
            for i, j in norm_hits.nonzero().tolist():
                flagged.setdefault(i, {"norm": [], "direction": []})["norm"].append(
                    {
                        "param": self.names[j],
                        "ratio_to_median": round(math.exp(float(devs[i, j])), 4),
                        "threshold_ratio": round(math.exp(float(threshold[j])), 4),
                    }
                )
        else:
            # Every threshold is at least the smaller of the two floors: no deviation
            # reaches one, so the history's median (half this check's cost) is not needed.
            norm_hits = torch.zeros_like(devs, dtype=torch.bool)
        # -- direction: cosine of each rank's per-layer sketch with its peers' sum.
        self._direction(sketch, alive, norm_hits, s, flagged)
        names_rank = world >= int(s["grad_min_world"])
        trajectory = self._trajectory_for(world, s)
        if not flagged:
            # Pool every rank's |deviation| except the median rank's exact zero.
            rows = devs.abs().masked_fill(devs == 0.0, math.nan)
            rows = rows.masked_fill(~alive.unsqueeze(0), math.nan)
            for row in rows:
                hist[self._hist_pos] = row
                self._hist_pos = (self._hist_pos + 1) % hist.shape[0]
            trajectory.learn(log_norms, sketch, alive)
            self._episode = None
            self._streak.clear()
            return
        if names_rank and len(flagged) * 2 >= world:
            # More than half the ranks disagree: no majority to name an outlier.
            names_rank = False
        tie: dict[str, Any] | None = None
        if not names_rank:
            # No majority (2 ranks): the rank that left its own trajectory is named.
            where = {name: j for j, name in enumerate(self.names)}
            layers = sorted(
                {where[e["param"]] for w in flagged.values() for e in w["norm"] + w["direction"]}
            )
            tie = self._tie_break(ctx, trajectory, log_norms, sketch, alive, layers)
            culprit = tie.get("rank")
            if culprit in flagged:
                flagged = {culprit: flagged[culprit]}
            elif culprit is not None:
                # A rank the peer comparison did not flag cannot be named by the tie-break.
                tie = {**tie, "rank": None}
            if tie.get("rank") is None:
                # Two honest ranks on different data can point a small layer in opposite
                # directions (seen on a bias in a clean Trainer job); a direction-only
                # disagreement that no rank's own history corroborates is not reported.
                flagged = {i: w for i, w in flagged.items() if w["norm"]}
                if not flagged:
                    return
        global_cos = self._global_cos(sketch)  # evidence only: not on clean exchanges
        for i, why in sorted(flagged.items()):
            self._streak[i] = self._streak.get(i, 0) + 1
            about: int | None = i if names_rank or (tie is not None and tie["rank"] == i) else None
            needed = int(s["grad_windows"])
            if about is None:
                # Unattributed (2 ranks, no own-trajectory verdict): one window is not
                # enough. Two honest ranks' bias gradients differed 8x in one early window
                # of a clean Trainer job; corruption persists, noise does not.
                needed = max(needed, _UNNAMED_WINDOWS)
            if self._streak[i] < needed:
                continue
            kinds = tuple(k for k in ("norm", "direction") if why[k])
            if not self._throttle.allow(("grad.rank_outlier", about, kinds), ctx.step):
                continue
            first = (why["norm"] or why["direction"])[0]
            if why["norm"]:
                ratio = first["ratio_to_median"]
                detail = f"{first['param']} gradient norm {ratio:.2f}x the rank median"
            else:
                cosine = first["cosine"]
                detail = (
                    f"{first['param']} gradient points away from its peers (cosine {cosine:.2f})"
                )
            who = f"Rank {i}" if about is not None else f"One of ranks {list(range(world))}"
            if tie is not None:
                detail += "; " + str(tie["why"])
            ctx.report(
                make_finding(
                    ctx,
                    "grad.rank_outlier",
                    f"{who}'s local gradient disagrees with all {world - 1} peers before the "
                    f"all-reduce: {detail}.",
                    rank=about,
                    severity=Severity.CRITICAL if about is not None else Severity.HIGH,
                    evidence={
                        "norm_outliers": why["norm"][:10],
                        "direction_outliers": why["direction"][:10],
                        "global_cosine_by_rank": [round(c, 4) for c in global_cos],
                        "steps_in_window": counts.tolist(),
                        "hook": self.mode,
                        **({"own_trajectory": tie} if tie is not None else {}),
                    },
                )
            )

    def _tie_break(
        self,
        ctx: GuardContext,
        trajectory: Trajectory,
        log_norms: torch.Tensor,
        sketch: torch.Tensor,
        alive: torch.Tensor,
        layers: list[int],
    ) -> dict[str, Any]:
        """Who left its own trajectory, decided in the first windows of a disagreement.

        Only the first ``_DECIDE_WINDOWS`` windows of an episode decide: later, the
        corrupted all-reduce has moved the model and every rank's gradient has left the
        pre-attack history. The verdict then holds until a window is clean again.
        """
        episode = self._episode
        if episode is None:
            episode = self._episode = {"since_step": ctx.step, "windows": 0, "verdict": None}
        episode["windows"] += 1
        verdict = episode["verdict"]
        if verdict is not None:
            return {
                **verdict,
                "decided_at_step": episode["decided_at_step"],
                "disagreeing_since_step": episode["since_step"],
            }
        if episode["windows"] > _DECIDE_WINDOWS:
            return {
                "rank": None,
                "why": "no rank left its own trajectory alone when the disagreement began",
                "disagreeing_since_step": episode["since_step"],
            }
        tie = trajectory.blame(log_norms, sketch, alive, layers, self.names)
        if tie.get("rank") is not None:
            episode["verdict"] = tie
            episode["decided_at_step"] = ctx.step
            return {
                **tie,
                "decided_at_step": ctx.step,
                "disagreeing_since_step": episode["since_step"],
            }
        return {**tie, "disagreeing_since_step": episode["since_step"]}

    def _trajectory_for(self, world: int, s: dict[str, Any]) -> Trajectory:
        """Every rank's own history (identical on every rank: built from the gathers)."""
        if self._trajectory is None or self._trajectory.world != world:
            self._trajectory = Trajectory(
                world,
                self._seg,
                len(self._params),
                log_ratio=float(s["grad_log_ratio"]),
                log_ratio_min=float(s["grad_log_ratio_min"]),
                z=float(s["grad_z"]),
                cos_margin=float(s["grad_cos_margin"]),
            )
        return self._trajectory

    def _segment_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per-parameter sums of a ``[world, sketch]`` tensor: ``[world, params]``."""
        out = torch.zeros(values.shape[0], len(self._params), dtype=values.dtype)
        return out.index_add_(1, self._seg, values)

    def _direction(
        self,
        sketch: torch.Tensor,
        alive: torch.Tensor,
        norm_hits: torch.Tensor,
        s: dict[str, Any],
        flagged: dict[int, Any],
    ) -> None:
        """Cosine of each rank's sketch with the sum of its peers'; flag the odd one out.

        A rank already flagged on a layer's norm is left out of that layer's peer sum:
        a huge corrupted gradient would otherwise *be* the peer direction, and honest
        ranks would look like they point away from it.
        """
        weight = (~norm_hits).to(sketch.dtype)[:, self._seg]
        peers = (sketch * weight).sum(dim=0, keepdim=True) - sketch * weight
        num = self._segment_sums(sketch * peers)
        den = (self._segment_sums(sketch * sketch) * self._segment_sums(peers * peers)).sqrt()
        usable = self._big_enough & alive & (den > 0).all(dim=0)
        cos = num / den.clamp_min(1e-300)
        margin = float(s["grad_cos_margin"])
        candidates = (cos < -margin / 2) & usable.unsqueeze(0)
        pair_rule = bool(s["grad_pair_direction"])
        if cos.shape[0] == 2 and not pair_rule:
            # Two ranks are each other's only peer: a sign flip of one rank's gradient
            # turns the pair's cosine negative on nearly every layer at once, while two
            # honest ranks on unrelated batches reach it on a few layers at most.
            opposed = (cos[0] < -margin) & usable
            share = float(opposed.sum()) / max(int(usable.sum()), 1)
            pair_rule = int(usable.sum()) >= 4 and share >= float(s["grad_pair_share"])
        for i, j in candidates.nonzero().tolist():
            column = cos[:, j].tolist()
            c = column[i]
            others = [x for n, x in enumerate(column) if n != i]
            # With two ranks a sign flip makes both cosines negative, so the pair is
            # flagged (the tie-break names one) when it is clearly negative; with more
            # ranks the odd one out must stand apart.
            pair = pair_rule and len(column) == 2 and c < -margin
            if pair or median(others) - c >= margin:
                flagged.setdefault(i, {"norm": [], "direction": []})["direction"].append(
                    {
                        "param": self.names[j],
                        "cosine": round(c, 4),
                        "peer_median_cosine": round(median(others), 4),
                    }
                )

    def _global_cos(self, sketch: torch.Tensor) -> list[float]:
        """Peer cosine over the whole sketch, each layer weighted equally."""
        if not self._params or sketch.shape[1] == 0:
            return []
        block_norms = self._segment_sums(sketch * sketch).sqrt()
        scale = block_norms.median(dim=0).values.clamp_min(1e-30)
        cos = _peer_cosines(sketch / scale[self._seg])
        return cos or []


def _peer_cosines(block: torch.Tensor) -> list[float] | None:
    """For each row: cosine with the sum of the other rows (None when degenerate)."""
    total = block.sum(dim=0, keepdim=True)
    peers = total - block
    num = (block * peers).sum(dim=1)
    den = block.norm(dim=1) * peers.norm(dim=1)
    if bool((den <= 0).any()):
        return None
    return [float(v) for v in (num / den).tolist()]
