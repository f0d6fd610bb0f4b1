"""``grad.rank_outlier``: the rank whose local gradient disagrees with all its peers.

Why before the all-reduce: corruption applied to one rank's gradient is averaged into
every replica by the all-reduce, after which all replicas agree and replica hashes
see nothing (runtime.md §2.3, the Megatron weight-hash blind spot). So each rank
fingerprints its *local* gradient before it is reduced:

- **DDP** (chosen mechanism): a DDP communication hook that wraps the default
  all-reduce (``default_hooks.allreduce_hook``). It sees each bucket exactly as it is
  about to be reduced -- after every tensor hook and gradient accumulation, so a
  tensor hook that corrupts the gradient is inside the fingerprint. The hook records
  per-parameter squared norms (one ``_foreach_norm`` per bucket) and a sketch (the
  values at ``grad_sketch`` coordinates per parameter drawn with a seed shared by
  every rank), then hands the bucket to the stock all-reduce. If the job already
  registered its own comm hook (DDP allows one), tensor hooks on the parameters are
  used instead (they run before DDP copies the gradient into its bucket).
- **manual all-reduce loops** (no DDP, several ranks): post-accumulate-grad hooks on
  the parameters, which run when backward has accumulated the local gradient and
  before the user's ``all_reduce`` call.

The fingerprints accumulate over every step (so corruption on only some steps still
weighs in) and are exchanged every ``exchange_every`` steps. Scoring per parameter:

- *norm*: ``log(norm) - median over ranks``; a rank is an outlier when this exceeds
  ``grad_z`` times the usual inter-rank spread of that layer (robust history), or
  ``grad_log_ratio`` before a history exists. Catches scaling, added noise, one layer.
- *direction*: cosine between the rank's sketch and the sum of its peers' sketches;
  a rank is an outlier when its cosine is negative and below the median of the
  others by ``grad_cos_margin``. Catches sign flips, which keep the norm.

With 3 or more ranks the outlier is named by majority. With 2 ranks the two disagree
symmetrically: the finding is reported without a rank.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import torch

from trainguard.core.findings import Severity
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.common import is_replicated, sample_indices, trainable_parameters
from trainguard.guard.findingutil import make_finding
from trainguard.guard.stats import MAD_TO_SIGMA, Throttle, median

_logger = logging.getLogger(__name__)


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
        self._plans: dict[tuple[int, int, int], Any] = {}
        self._handles: list[Any] = []
        self._sumsq = torch.zeros(0, dtype=torch.float64)
        self._sketch = torch.zeros(0, dtype=torch.float64)
        self._steps = 0
        self._seen = False
        self._history: list[deque[float]] = []
        self._streak: dict[int, int] = {}
        self._throttle = Throttle(100)
        self._failed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self, ctx: GuardContext) -> None:
        """Choose the hook point (DDP comm hook or parameter hooks) and install it."""
        s = ctx.settings
        self._throttle = Throttle(int(s["repeat_every"]))
        named = trainable_parameters(ctx)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._index = {id(p): j for j, p in enumerate(self._params)}
        gen = torch.Generator().manual_seed(int(s["sketch_seed"]))
        k = int(s["grad_sketch"])
        offset = 0
        for p in self._params:
            idx = sample_indices(p.numel(), k, gen, p.device)
            self._idx.append(idx)
            self._offsets.append(offset)
            offset += idx.numel()
        device = self._params[0].device if self._params else torch.device("cpu")
        self._sumsq = torch.zeros(len(self._params), dtype=torch.float64, device=device)
        self._sketch = torch.zeros(offset, dtype=torch.float64, device=device)
        self._history = [deque(maxlen=200) for _ in self._params]
        self.enabled = ctx.world_size > 1 and is_replicated(ctx) and bool(self._params)
        if not self.enabled:
            return
        ddp = s.get("_ddp")
        if ddp is not None:
            try:
                ddp.register_comm_hook(ctx.process_group, self._typed_comm_hook())
                self.mode = "ddp_comm_hook"
            except (RuntimeError, AssertionError) as exc:
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
        """Remove the parameter hooks (a DDP comm hook cannot be unregistered; it is inert)."""
        self.enabled = False
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

    # ------------------------------------------------------------------ hooks
    def _typed_comm_hook(self) -> Any:
        """The comm hook with real (not string) annotations: DDP inspects them."""
        import torch.distributed as dist

        def hook(state: Any, bucket: Any) -> Any:
            return self._comm_hook(state, bucket)

        hook.__annotations__ = {
            "state": object,
            "bucket": dist.GradBucket,  # type: ignore[attr-defined]
            "return": torch.futures.Future[torch.Tensor],
        }
        return hook

    def _comm_hook(self, state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        if self.enabled:
            try:
                self._fingerprint_bucket(bucket)
            except Exception:  # never break the all-reduce; log once
                if not self._failed:
                    _logger.exception("gradient fingerprint failed")
                    self._failed = True
        return default_hooks.allreduce_hook(state, bucket)

    def _fingerprint_bucket(self, bucket: Any) -> None:
        grads: list[torch.Tensor] = bucket.gradients()
        params = bucket.parameters()
        if not grads:
            return
        key = (int(bucket.index()), len(params), id(params[0]))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(bucket.buffer(), params, grads)
            self._plans[key] = plan
        js, buf_idx, dest, keep = plan
        if js.numel() == 0:
            return
        tracked = [grads[i] for i in keep]
        norms = torch.stack(torch._foreach_norm(tracked)).to(torch.float64)
        self._sumsq.index_add_(0, js, norms * norms)
        if buf_idx is not None:
            vals = bucket.buffer().reshape(-1).index_select(0, buf_idx).to(torch.float64)
        else:
            vals = torch.cat(
                [
                    tracked[n].reshape(-1).index_select(0, self._idx[int(j)])
                    for n, j in enumerate(js.tolist())
                ]
            ).to(torch.float64)
        self._sketch.index_add_(0, dest, vals)
        self._seen = True

    def _plan(self, buffer: torch.Tensor, params: list[Any], grads: list[torch.Tensor]) -> Any:
        """Index tensors that map a bucket's layout to our parameter slots (cached)."""
        js: list[int] = []
        keep: list[int] = []
        buf_parts: list[torch.Tensor] = []
        dest_parts: list[torch.Tensor] = []
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
        device = self._sumsq.device
        js_t = torch.tensor(js, dtype=torch.long, device=device)
        dest = (
            torch.cat(dest_parts).to(device)
            if dest_parts
            else torch.zeros(0, dtype=torch.long, device=device)
        )
        buf_idx = torch.cat(buf_parts).to(buffer.device) if (contiguous_ok and buf_parts) else None
        return js_t, buf_idx, dest, keep

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
        self._sumsq[j] += (
            g.to(torch.float64).pow(2).sum()
            if g.numel() < 4096
            else torch.linalg.vector_norm(g).to(torch.float64) ** 2
        )
        o = self._offsets[j]
        idx = self._idx[j]
        self._sketch[o : o + idx.numel()] += g.reshape(-1).index_select(0, idx).to(torch.float64)
        self._seen = True

    # ------------------------------------------------------------------ exchange
    def exchange_size(self, ctx: GuardContext) -> int:
        """Per-parameter RMS norm, the sketch, and the number of steps in the window."""
        return len(self._params) + int(self._sketch.numel()) + 1

    def exchange_payload(self, ctx: GuardContext) -> torch.Tensor:
        """This rank's window fingerprint (then reset)."""
        steps = max(self._steps, 1)
        vec = torch.cat(
            [
                (self._sumsq / steps).sqrt(),
                self._sketch / steps,
                torch.tensor([float(self._steps)], dtype=torch.float64, device=self._sumsq.device),
            ]
        )
        self._sumsq.zero_()
        self._sketch.zero_()
        self._steps = 0
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
        spreads: list[list[float] | None] = []
        log_norms = torch.log(norms.clamp_min(1e-30))
        for j in range(n_params):
            col = log_norms[:, j].tolist()
            if all(v <= math.log(1e-29) for v in col):
                spreads.append(None)
                continue
            med = median(col)
            devs = [v - med for v in col]
            spreads.append(devs)
            hist = self._history[j]
            if len(hist) >= 6:
                threshold = max(
                    float(s["grad_z"]) * MAD_TO_SIGMA * median(hist), float(s["grad_log_ratio_min"])
                )
            else:
                threshold = float(s["grad_log_ratio"])
            for i, d in enumerate(devs):
                if abs(d) > threshold and world >= 2:
                    flagged.setdefault(i, {"norm": [], "direction": []})["norm"].append(
                        {
                            "param": self.names[j],
                            "ratio_to_median": round(math.exp(d), 4),
                            "threshold_ratio": round(math.exp(threshold), 4),
                        }
                    )
            o = self._offsets[j]
            k = self._idx[j].numel()
            if k >= 4:
                self._direction(sketch[:, o : o + k], self.names[j], s, flagged)
        global_cos = self._global_cos(sketch, norms)
        names_rank = world >= int(s["grad_min_world"])
        if not flagged:
            for j, devs_j in enumerate(spreads):
                if devs_j is not None:
                    # Pool every rank's |deviation| except the median rank's exact zero.
                    self._history[j].extend(abs(d) for d in devs_j if d != 0.0)
            self._streak.clear()
            return
        if names_rank and len(flagged) * 2 >= world:
            # More than half the ranks disagree: no majority to name an outlier.
            names_rank = False
        for i, why in sorted(flagged.items()):
            self._streak[i] = self._streak.get(i, 0) + 1
            if self._streak[i] < int(s["grad_windows"]):
                continue
            kinds = tuple(k for k in ("norm", "direction") if why[k])
            about: int | None = i if names_rank else None
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
                    },
                )
            )

    def _direction(
        self, block: torch.Tensor, name: str, s: dict[str, Any], flagged: dict[int, Any]
    ) -> None:
        """Cosine of each rank's sketch with the sum of its peers'; flag the odd one out."""
        cos = _peer_cosines(block)
        if cos is None:
            return
        margin = float(s["grad_cos_margin"])
        for i, c in enumerate(cos):
            others = [x for n, x in enumerate(cos) if n != i]
            if c < -margin / 2 and median(others) - c >= margin:
                flagged.setdefault(i, {"norm": [], "direction": []})["direction"].append(
                    {
                        "param": name,
                        "cosine": round(c, 4),
                        "peer_median_cosine": round(median(others), 4),
                    }
                )

    def _global_cos(self, sketch: torch.Tensor, norms: torch.Tensor) -> list[float]:
        """Peer cosine over the whole sketch, each layer weighted equally."""
        parts = []
        for j in range(len(self._params)):
            o = self._offsets[j]
            k = self._idx[j].numel()
            block = sketch[:, o : o + k]
            scale = block.norm(dim=1).median().clamp_min(1e-30)
            parts.append(block / scale)
        if not parts:
            return []
        cos = _peer_cosines(torch.cat(parts, dim=1))
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
