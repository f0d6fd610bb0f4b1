"""The Guard: attaches the monitors to a model and optimizer, in one or many processes.

Usage (the same code runs in a single process and under ``torchrun``)::

    guard = trainguard.watch(model, optimizer, run_dir="runs/exp1")
    for batch in loader:
        ...; loss.backward(); optimizer.step()
        guard.observe(loss=loss)
    guard.close()

How it hooks in, and why:

- ``optimizer.register_step_pre_hook`` / ``register_step_post_hook`` on the optimizer
  *instance*: every ``optimizer.step()`` reaches the guard without any change to the
  training loop. The handles are kept, so a monitor can check that the hooks are
  still installed (removing them is ``guard.disabled``).
- DDP-aware: a ``DistributedDataParallel`` model is unwrapped for the parameter
  checks; the DDP object itself is kept so the gradient monitor can wrap its
  all-reduce in a communication hook (see checks/gradients.py).
- Cross-rank checks use the job's own process group (the default group unless one is
  given), with one fixed-size float64 all-gather every ``exchange_every`` steps
  (guard/collectives.py). No object collectives, no second rendezvous.
- Every rank writes its own findings to the ledger (guard/sink.py).
- ``close()`` is idempotent; it runs from the context manager and from ``atexit``.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from trainguard.core.errors import GuardError
from trainguard.core.findings import Finding, Severity
from trainguard.guard.base import GuardContext, Monitor
from trainguard.guard.collectives import Exchanger, distributed_ready
from trainguard.guard.findingutil import check_failed, make_finding
from trainguard.guard.monitors import DEFAULT_MONITORS, MonitorFactory
from trainguard.guard.settings import GuardSettings
from trainguard.guard.sink import LedgerSink, TeeSink, default_ledger_url
from trainguard.guard.telemetry import EnvSummaryWriter, StepTelemetry

_logger = logging.getLogger(__name__)

_ACTIVE: list[Guard] = []
_ACTIVE_LOCK = threading.Lock()


def active_guard() -> Guard | None:
    """The most recently attached guard of this process that is still open."""
    with _ACTIVE_LOCK:
        return _ACTIVE[-1] if _ACTIVE else None


def unwrap_model(model: Any) -> tuple[Any, Any]:
    """``(ddp_or_None, inner_module)`` for a possibly DDP-wrapped model."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return None, model
    if isinstance(model, DistributedDataParallel):
        return model, model.module
    return None, model


def _shared_identity(exchanger: Exchanger) -> tuple[str, int]:
    """``(run id, schedule secret)``, equal on every rank; one tiny broadcast at attach.

    The run id comes from the launcher's environment when it names one, else from rank
    0's random words. The secret is always rank 0's: it keys the sampled coordinates
    and the fingerprint schedule of the cross-rank checks, so that code written
    against trainguard's public source (and its default ``sketch_seed``) cannot know
    which coordinates or steps are looked at in a given run.
    """
    words = [secrets.randbits(48) for _ in range(3)]
    if exchanger.world_size > 1:
        words = exchanger.broadcast_words(words, src=0)
    run_id = f"{words[0]:012x}{words[1]:012x}"
    for var in ("TRAINGUARD_RUN_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var)
        if value and value != "none":
            run_id = value
            break
    return run_id, words[2]


RUN_DIR_ENV = "TRAINGUARD_RUN_DIR"
"""Default run directory of :func:`watch` when none is passed (set by ``trainguard run``)."""
LEDGER_ENV = "TRAINGUARD_LEDGER"
"""Default ledger URL of :func:`watch` when none is passed."""
DEFAULT_RUN_DIR = "runs/exp1"
"""Run directory when neither the argument nor ``TRAINGUARD_RUN_DIR`` names one."""


def resolve_run_dir(run_dir: str | os.PathLike[str] | None) -> Path:
    """The argument, else ``$TRAINGUARD_RUN_DIR``, else ``runs/exp1``.

    The variable lets a job started under ``trainguard run`` (or a launcher script)
    write into the run the supervisor watches without changing the training script.
    """
    if run_dir is not None:
        return Path(run_dir)
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


class Guard:
    """The training guard of one process (one rank)."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        ledger: str | None = None,
        sink: Any = None,
        process_group: Any = None,
        monitors: Sequence[MonitorFactory] | None = None,
        settings: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        """Attach to ``model`` and ``optimizer``; see :func:`watch`."""
        if not isinstance(model, torch.nn.Module):
            raise GuardError(
                f"watch(model=...): expected a torch.nn.Module, got {type(model).__name__}"
            )
        if not hasattr(optimizer, "register_step_pre_hook"):
            raise GuardError(
                "watch(optimizer=...): expected a torch.optim.Optimizer, "
                f"got {type(optimizer).__name__}"
            )
        self.settings = GuardSettings.build(settings, overrides)
        self.ddp, self.module = unwrap_model(model)
        if process_group is None and distributed_ready():
            import torch.distributed as dist

            process_group = dist.group.WORLD
        self.exchanger = Exchanger(process_group)
        self.rank = self.exchanger.rank
        if distributed_ready():
            import torch.distributed as dist

            self.rank = dist.get_rank()
        self.world_size = self.exchanger.world_size
        self.run_dir = resolve_run_dir(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GuardError(f"{self.run_dir}: cannot create the run directory ({exc})") from exc
        self.run_id, secret = _shared_identity(self.exchanger)
        if sink is None:
            sink = LedgerSink(
                ledger or os.environ.get(LEDGER_ENV) or default_ledger_url(self.run_dir),
                run_id=self.run_id,
                rank=self.rank,
                flush_every=self.settings.telemetry_flush,
            )
        self._sink = TeeSink(sink)
        self.ctx = GuardContext(
            run_id=self.run_id,
            run_dir=self.run_dir,
            rank=self.rank,
            world_size=self.world_size,
            sink=self._sink,
            model=model,
            optimizer=optimizer,
            process_group=process_group,
            settings=self.settings.to_dict(),
        )
        self.optimizer = optimizer
        self.training_thread = threading.get_ident()
        self.training_native_id = threading.get_native_id()
        self.ctx.settings["_training_thread"] = self.training_thread
        self.ctx.settings["_training_native_id"] = self.training_native_id
        self.ctx.settings["_ddp"] = self.ddp
        self.ctx.settings["_secret"] = secret
        self.ctx.settings["_module"] = self.module
        self._failed_checks: set[tuple[str, str]] = set()
        self.monitors: list[Monitor] = self._build_monitors(monitors)
        self._closed = False
        self._lock = threading.RLock()
        self.step_hooks_fired = 0
        self.exchanges = 0
        self.hook_seconds = 0.0
        """Wall time spent inside the guard's step hooks and observe() (cost accounting)."""
        self.hook_cpu_seconds = 0.0
        """CPU time of the training thread inside the same calls: unlike the wall time,
        not inflated when other processes compete for the cores."""
        self._started: list[Monitor] = []
        for monitor in self.monitors:
            try:
                monitor.start(self.ctx)
                self._started.append(monitor)
            except GuardError:
                self._close_started()
                raise
            except Exception as exc:  # a monitor that cannot start is reported, not hidden
                _logger.exception("rank %d: monitor %s failed to start", self.rank, monitor.name)
                self.ctx.report(
                    make_finding(
                        self.ctx,
                        "guard.disabled",
                        f"Guard monitor {monitor.name} could not start on rank {self.rank}: {exc}",
                        severity=Severity.HIGH,
                        evidence={"monitor": monitor.name, "error": repr(exc)},
                    )
                )
        self.monitors = self._started
        self._exchanging = [m for m in self.monitors if hasattr(m, "exchange_size")]
        self._sizes = [int(m.exchange_size(self.ctx)) for m in self._exchanging]  # type: ignore[attr-defined]
        self._check_exchange_layout()
        self.telemetry: StepTelemetry | None = None
        if self.settings.step_events:
            self.telemetry = StepTelemetry(
                self.ctx.sink,
                flush_every=self.settings.telemetry_flush,
                grad_norm_every=self.settings.grad_norm_every,
            )
        self._env_summary: EnvSummaryWriter | None = None
        if self.settings.env_summary and self.rank == 0:
            self._env_summary = EnvSummaryWriter(self.ctx.sink)
        self.pre_hook_handle = optimizer.register_step_pre_hook(self._on_pre_step)
        self.post_hook_handle = optimizer.register_step_post_hook(self._on_post_step)
        atexit.register(self.close)
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        self.ctx.sink.record(
            "run.start",
            {
                "run": self.run_id,
                "rank": self.rank,
                "world_size": self.world_size,
                "monitors": [m.name for m in self.monitors],
                "ddp": self.ddp is not None,
                "torch": torch.__version__,
                "settings": {
                    k: _jsonable(v) for k, v in self.ctx.settings.items() if not k.startswith("_")
                },
            },
        )
        _logger.info("rank %d: guard attached (%d monitors)", self.rank, len(self.monitors))

    # ------------------------------------------------------------------ monitors
    def _build_monitors(self, factories: Sequence[MonitorFactory] | None) -> list[Monitor]:
        chosen = list(factories) if factories is not None else list(DEFAULT_MONITORS)
        built = [factory() for factory in chosen]
        names = self.settings.monitors
        excluded = set(self.settings.exclude_monitors)
        known = {m.name for m in built}
        for name in (*(names or ()), *excluded):
            if name not in known:
                raise GuardError(
                    f"unknown guard monitor {name!r}; registered: {', '.join(sorted(known))}"
                )
        return [m for m in built if (names is None or m.name in names) and m.name not in excluded]

    def monitor(self, name: str) -> Monitor | None:
        """The running monitor called ``name`` (None when it is not running)."""
        for m in self.monitors:
            if m.name == name:
                return m
        return None

    def _call(self, monitor: Monitor, method: str, *args: Any) -> None:
        try:
            getattr(monitor, method)(self.ctx, *args)
        except Exception as exc:  # one broken check must not stop training or the others
            _logger.exception(
                "rank %d: monitor %s.%s failed at step %d",
                self.rank,
                monitor.name,
                method,
                self.ctx.step,
            )
            if (monitor.name, method) not in self._failed_checks:
                self._failed_checks.add((monitor.name, method))
                self.ctx.report(check_failed(self.ctx, monitor.name, method, exc))

    # --------------------------------------------------------------------- hooks
    def _on_pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        for monitor in self.monitors:
            self._call(monitor, "before_step")
        if self.telemetry is not None:
            try:
                self.telemetry.before_step(self.ctx.step + 1, optimizer)
            except Exception:  # telemetry must never stop training
                _logger.exception("rank %d: step telemetry failed", self.rank)
        self.hook_seconds += time.perf_counter() - t0
        self.hook_cpu_seconds += time.thread_time() - c0

    def _on_post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        self.step_hooks_fired += 1
        self.ctx.step += 1
        for monitor in self.monitors:
            self._call(monitor, "after_step")
        if self.telemetry is not None:
            try:
                self.telemetry.after_step(self.ctx.step)
            except Exception:  # telemetry must never stop training
                _logger.exception("rank %d: step telemetry failed", self.rank)
        if (
            self.ctx.step % self.settings.exchange_every == 0
            and self._exchanging
            and self.world_size > 1
        ):
            self._exchange()
        self.hook_seconds += time.perf_counter() - t0
        self.hook_cpu_seconds += time.thread_time() - c0

    def _check_exchange_layout(self) -> None:
        """All ranks must exchange the same number of values, or the collective would
        mismatch the job's own collectives (a hang). Checked once at attach; on a
        mismatch (different models per rank: pipeline stages) the exchange is off."""
        if self.world_size < 2 or not self._exchanging:
            return
        layout = torch.tensor(
            [float(sum(self._sizes)), float(len(self._sizes))], dtype=torch.float64
        )
        gathered = self.exchanger.all_gather(layout)
        if bool((gathered == gathered[0]).all()):
            return
        self._exchanging = []
        self._sizes = []
        self.ctx.report(
            make_finding(
                self.ctx,
                "guard.disabled",
                "Cross-rank checks are off: ranks hold different models (exchange sizes "
                f"{gathered[:, 0].tolist()}); pass the data-parallel group as process_group.",
                rank=None,
                severity=Severity.MEDIUM,
                evidence={"sizes_by_rank": gathered[:, 0].tolist()},
            )
        )

    def _exchange(self) -> None:
        """One all-gather carrying every exchanging monitor's payload."""
        # Payloads stay on the collective's device (no per-monitor host sync with NCCL).
        device = self.exchanger.device
        parts: list[torch.Tensor] = [
            torch.tensor(
                [float(self.ctx.step), float(sum(self._sizes))], dtype=torch.float64, device=device
            )
        ]
        for monitor, size in zip(self._exchanging, self._sizes, strict=True):
            try:
                payload = monitor.exchange_payload(self.ctx)  # type: ignore[attr-defined]
                vec = torch.as_tensor(payload, dtype=torch.float64).detach().reshape(-1)
                vec = vec.to(device)
                if vec.numel() != size:
                    raise GuardError(
                        f"{monitor.name}: payload of {vec.numel()} values, declared {size}"
                    )
            except Exception:  # keep the collective's shape identical on every rank
                _logger.exception("rank %d: %s payload failed", self.rank, monitor.name)
                vec = torch.full((size,), float("nan"), dtype=torch.float64, device=device)
            parts.append(vec)
        gathered = self.exchanger.all_gather(torch.cat(parts))
        self.exchanges += 1
        steps = gathered[:, 0].tolist()
        if len(set(steps)) > 1:
            self.ctx.report(
                make_finding(
                    self.ctx,
                    "guard.disabled",
                    f"Ranks disagree on the step count at the guard exchange (steps {steps}); "
                    "a rank skipped optimizer steps or its guard hooks.",
                    rank=None,
                    severity=Severity.HIGH,
                    evidence={"steps_by_rank": steps},
                )
            )
        offset = 2
        for monitor, size in zip(self._exchanging, self._sizes, strict=True):
            self._call(monitor, "on_exchange", gathered[:, offset : offset + size])
            offset += size

    # ------------------------------------------------------------------- public
    @property
    def findings(self) -> list[Finding]:
        """Findings this rank reported so far (also in the ledger)."""
        return list(self._sink.findings)

    @property
    def step(self) -> int:
        """Optimizer steps seen by the guard in this process."""
        return self.ctx.step

    def observe(self, loss: Any = None, **values: Any) -> None:
        """Pass training values (``loss`` first of all) to the anomaly checks.

        Tensors are kept as they are (no device sync here); the checks read them in
        batches every few steps.
        """
        if self._closed:
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        if loss is not None:
            values["loss"] = loss
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                values[key] = value.detach()
        self.ctx.observed.update(values)
        if self.telemetry is not None:
            self.telemetry.observe(values)
        for monitor in self.monitors:
            if hasattr(monitor, "on_observe"):
                self._call(monitor, "on_observe", values)
        self.hook_seconds += time.perf_counter() - t0
        self.hook_cpu_seconds += time.thread_time() - c0

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Save a checkpoint through the lineage monitor (records it in the ledger)."""
        return self._delegate("save_checkpoint", args, kwargs)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Load a checkpoint through the lineage monitor (checks rollback and manifest)."""
        return self._delegate("load_checkpoint", args, kwargs)

    def watch_dataloader(self, loader: Iterable[Any]) -> Iterable[Any]:
        """Wrap ``loader`` so the data-order monitor fingerprints what it yields."""
        return self._delegate("watch_dataloader", (loader,), {})  # type: ignore[no-any-return]

    def _delegate(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for monitor in self.monitors:
            impl: Callable[..., Any] | None = getattr(monitor, method, None)
            if impl is not None:
                return impl(self.ctx, *args, **kwargs)
        raise GuardError(
            f"guard.{method}: no running monitor provides it (is it excluded in settings?)"
        )

    def close(self) -> None:
        """Remove the hooks, stop the monitors and flush the ledger (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for handle in (self.pre_hook_handle, self.post_hook_handle):
            handle.remove()
        self._close_started()
        if self.telemetry is not None:
            try:
                self.telemetry.flush()
            except Exception:  # telemetry must never mask the close
                _logger.exception("rank %d: step telemetry flush failed", self.rank)
        if self._env_summary is not None:
            self._env_summary.wait(timeout=30.0)
        self.ctx.sink.record(
            "run.close", {"step": self.ctx.step, "exchanges": self.exchanges, "time": time.time()}
        )
        self._sink.flush()
        self._sink.close()
        with _ACTIVE_LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        atexit.unregister(self.close)

    def _close_started(self) -> None:
        for monitor in reversed(self._started):
            self._call(monitor, "close")

    def __enter__(self) -> Guard:
        """Context manager: the guard closes on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the guard."""
        self.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def watch(
    model: Any,
    optimizer: Any,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    ledger: str | None = None,
    sink: Any = None,
    process_group: Any = None,
    monitors: Sequence[MonitorFactory] | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Guard:
    """Attach the training guard; returns the :class:`Guard` (also a context manager).

    Args:
        model: the model, plain or ``DistributedDataParallel``-wrapped.
        optimizer: its optimizer; the guard hooks its ``step``.
        run_dir: directory of the run's ledger and state (default:
            ``$TRAINGUARD_RUN_DIR``, else ``runs/exp1``).
        ledger: ledger URL (default: ``$TRAINGUARD_LEDGER``, else
            ``sqlite:///<run_dir>/ledger.sqlite``; ``postgresql://...`` for a cluster).
        sink: an EventSink to use instead of the ledger (embedding, tests).
        process_group: group for the guard's collectives (default: the job's default group).
        monitors: monitor factories (default :data:`DEFAULT_MONITORS`).
        settings: tunables (docs/guard.md); keyword ``overrides`` win over it.

    Raises:
        GuardError: bad arguments, unknown settings, or an unusable ledger.
    """
    return Guard(
        model,
        optimizer,
        run_dir,
        ledger=ledger,
        sink=sink,
        process_group=process_group,
        monitors=monitors,
        settings=settings,
        **overrides,
    )


def watch_dataloader(loader: Iterable[Any], guard: Guard | None = None) -> Iterable[Any]:
    """Wrap ``loader`` for the data-order checks of ``guard`` (default: the active one).

    Raises:
        GuardError: no guard is attached in this process.
    """
    target = guard or active_guard()
    if target is None:
        raise GuardError("watch_dataloader: call trainguard.watch(model, optimizer) first")
    return target.watch_dataloader(loader)
