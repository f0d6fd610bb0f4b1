"""Per-step telemetry for the run report: ``step`` and ``env.summary`` ledger events.

The contract with the report (docs/guard.md, "Telemetry"):

- ``step`` (every rank, every optimizer step): ``{"step", "seconds", "loss",
  "grad_norm"}``. ``seconds`` is the wall time since the previous step ended (null on
  the first step after attach); ``loss`` the last value given to
  ``guard.observe(loss=...)`` after that step; ``grad_norm`` the global L2 norm of the
  gradients the optimizer saw (``observe(grad_norm=...)`` when the job passes one,
  e.g. the value ``clip_grad_norm_`` returned; otherwise measured by the guard every
  ``grad_norm_every`` steps, null on the others).
- ``env.summary`` (rank 0, once, at attach): interpreter, torch and package versions,
  the cheap start-up injection checks, the git state of the entry script's repository
  and the environment variables that change what runs.

Why batched: a loss or a norm on the GPU is a device tensor, and reading it is a host
sync. Step records keep the tensors and convert them in one copy every
``telemetry_flush`` steps, then go through the sink, which writes them in batches.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainguard.guard.base import EventSink

_logger = logging.getLogger(__name__)

VARIABLE_PREFIXES = (
    "CUDA_",
    "TORCH_",
    "NCCL_",
    "PYTORCH_",
    "TRAINGUARD_",
    "OMP_",
    "MKL_",
    "GLOO_",
)
"""Environment variables recorded in ``env.summary`` (by prefix)..."""
VARIABLE_NAMES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONNOUSERSITE",
    "PYTHONSAFEPATH",
    "PYTHONUSERBASE",
    "PYTHONPYCACHEPREFIX",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "LD_PRELOAD",
    "LD_AUDIT",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
)
"""...and by exact name."""
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "_KEY", "AUTH")
"""A variable whose name contains one of these is recorded as ``<redacted>``."""


class StepTelemetry:
    """Collects one ``step`` record per optimizer step and writes them in batches."""

    def __init__(self, sink: EventSink, *, flush_every: int, grad_norm_every: int) -> None:
        """Write to ``sink``; convert and write every ``flush_every`` steps.

        Args:
            sink: this rank's event sink.
            flush_every: steps between conversions of the buffered records.
            grad_norm_every: steps between the guard's own gradient-norm measurements
                (0: only values passed to ``observe(grad_norm=...)``).
        """
        self.sink = sink
        self.flush_every = max(int(flush_every), 1)
        self.grad_norm_every = max(int(grad_norm_every), 0)
        self._pending: list[dict[str, Any]] = []
        self._last_end: float | None = None
        self._grad_norm: Any = None
        self._lock = threading.Lock()
        self.records = 0
        """``step`` events written so far."""

    def before_step(self, step: int, optimizer: Any) -> None:
        """On measuring steps, take the global gradient norm (kept on the device)."""
        self._grad_norm = None
        if self.grad_norm_every <= 0 or step % self.grad_norm_every != 0:
            return
        grads = [
            p.grad
            for group in getattr(optimizer, "param_groups", ())
            for p in group.get("params", ())
            if p.grad is not None and not p.grad.is_sparse
        ]
        if not grads:
            return
        with torch.no_grad():
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for g in grads:
                by_device.setdefault(g.device, []).append(g)
            parts = [
                torch.stack(torch._foreach_norm(gs)).to(torch.float64).square().sum()
                for gs in by_device.values()
            ]
            first = parts[0].device
            self._grad_norm = torch.stack([p.to(first) for p in parts]).sum().sqrt()

    def after_step(self, step: int) -> None:
        """Close the record of ``step``; write a batch every ``flush_every`` steps."""
        now = time.perf_counter()
        seconds = None if self._last_end is None else now - self._last_end
        self._last_end = now
        with self._lock:
            self._pending.append(
                {"step": step, "seconds": seconds, "loss": None, "grad_norm": self._grad_norm}
            )
            self._grad_norm = None
            ready = len(self._pending) > self.flush_every
        if ready:
            self.flush(keep_last=True)

    def observe(self, values: Mapping[str, Any]) -> None:
        """Attach ``loss`` / ``grad_norm`` to the step that ended last."""
        with self._lock:
            if not self._pending:
                return
            record = self._pending[-1]
            for key in ("loss", "grad_norm"):
                value = values.get(key)
                if value is not None:
                    # Detached: a buffered loss must not keep its autograd graph alive
                    # for the flush_every steps it waits in the buffer.
                    record[key] = value.detach() if isinstance(value, torch.Tensor) else value

    def flush(self, *, keep_last: bool = False) -> None:
        """Convert buffered tensors in one host copy and send the records to the sink.

        ``keep_last`` holds back the newest record: ``observe(loss=...)`` for that step
        usually arrives after the step hook.
        """
        with self._lock:
            if keep_last:
                batch, self._pending = self._pending[:-1], self._pending[-1:]
            else:
                batch, self._pending = self._pending, []
        if not batch:
            return
        _to_floats(batch, ("loss", "grad_norm"))
        for record in batch:
            self.sink.record("step", record)
        self.records += len(batch)


def _to_floats(records: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """Replace tensors and numbers under ``keys`` by floats (None when unreadable).

    Device tensors are stacked per device and copied once: one sync per batch.
    """
    slots: dict[torch.device, list[tuple[dict[str, Any], str, torch.Tensor]]] = {}
    for record in records:
        for key in keys:
            value = record.get(key)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                if value.numel() == 0:
                    record[key] = None
                    continue
                slots.setdefault(value.device, []).append(
                    (record, key, value.detach().reshape(-1)[0])
                )
                continue
            try:
                record[key] = _finite_or_text(float(value))
            except (TypeError, ValueError):
                record[key] = None
    for items in slots.values():
        try:
            values = torch.stack([t.to(torch.float64) for _, _, t in items]).cpu().tolist()
        except RuntimeError:  # a broken tensor only loses its value
            values = [None] * len(items)
        for (record, key, _), value in zip(items, values, strict=True):
            record[key] = None if value is None else _finite_or_text(float(value))


def _finite_or_text(value: float) -> float | str:
    """JSON has no NaN/Inf: keep them as text (a non-finite loss is evidence)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return value


# ---------------------------------------------------------------------- env.summary
_SUMMARY_CACHE: dict[str, Any] = {}
_SUMMARY_LOCK = threading.Lock()


def _redact(name: str, value: str) -> str:
    upper = name.upper()
    if any(marker in upper for marker in _SECRET_MARKERS):
        return "<redacted>"
    return value[:2000]


def relevant_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that change what a training process runs."""
    out = {}
    for name in sorted(environ):
        if name in VARIABLE_NAMES or name.startswith(VARIABLE_PREFIXES):
            out[name] = _redact(name, environ[name])
    return out


def installed_packages() -> dict[str, str]:
    """``{distribution name: version}`` of every installed distribution (metadata only)."""
    import importlib.metadata

    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except (KeyError, OSError):
            continue
        if name and name not in out:
            out[str(name)] = str(dist.version)
    return dict(sorted(out.items()))


def startup_summary() -> list[Any]:
    """The cheap start-up injection checks (full check: ``trainguard env verify``).

    The complete check (``trainguard.env.startup.check_startup``) reads every RECORD
    to attribute ``.pth`` files to their owners and takes seconds; at attach we run the
    parts that take milliseconds: loader and interpreter variables and
    ``/etc/ld.so.preload`` as findings, and each ``.pth`` file with executable lines as
    a string naming it (its verdict needs the owner: ``trainguard env``).
    """
    from trainguard.env import startup
    from trainguard.env.interpreter import current_interpreter

    out: list[Any] = [
        finding.to_dict()
        for finding in (
            *startup.check_environment_variables(os.environ),
            *startup.check_ld_so_preload(),
        )
    ]
    for site_dir in current_interpreter().site_dirs():
        try:
            names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth"))  # noqa: PTH208
        except OSError as exc:
            out.append(f"{site_dir}: cannot list ({exc.strerror})")
            continue
        for name in names:
            path = site_dir / name
            try:
                text = path.read_bytes()[: startup.MAX_PTH_BYTES].decode("utf-8", "replace")
            except OSError as exc:
                out.append(f"{path}: unreadable ({exc.strerror})")
                continue
            lines = startup.executable_pth_lines(text)
            if lines:
                out.append(f"{path}: {len(lines)} executable line(s)")
    return out


def _git_root(start: Path) -> Path | None:
    """The working tree holding ``start`` (a ``.git`` entry above it), without running git."""
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return None


def git_summary(entry: str | None) -> dict[str, Any] | None:
    """Commit and branch of the entry script's repository, read from ``.git`` files.

    No ``git`` process is started: a child process forked from a guard thread in the
    first seconds of a job would open a window in the signal watcher's coverage, and
    ``git status`` on a large tree is not cheap. Whether the tree is dirty, and which
    files differ, is ``trainguard env``'s git check (``dirty`` is null here).
    """
    if not entry:
        return None
    root = _git_root(Path(entry).resolve().parent)
    if root is None:
        return None
    git_dir = root / ".git"
    try:
        if git_dir.is_file():  # a worktree or submodule: "gitdir: <path>"
            pointer = git_dir.read_text(encoding="utf-8", errors="replace").strip()
            git_dir = (root / pointer.partition("gitdir:")[2].strip()).resolve()
        head = (git_dir / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        return {"root": str(root), "error": f"cannot read .git ({exc.strerror})"}
    branch: str | None = None
    commit: str | None = head if not head.startswith("ref:") else None
    if head.startswith("ref:"):
        ref = head.partition("ref:")[2].strip()
        branch = ref.removeprefix("refs/heads/")
        commit = _resolve_ref(git_dir, ref)
    return {"root": str(root), "commit": commit, "branch": branch, "dirty": None}


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    """The commit a ref names: its loose file, else ``packed-refs``."""
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():
        common = (git_dir / commondir.read_text(encoding="utf-8").strip()).resolve()
    for base in (git_dir, common):
        try:
            return (base / ref).read_text(encoding="utf-8", errors="replace").strip() or None
        except OSError:
            continue
    try:
        packed = (common / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref:
            return sha
    return None


def env_summary() -> dict[str, Any]:
    """The ``env.summary`` payload; the slow parts are computed once per process."""
    with _SUMMARY_LOCK:
        if "packages" not in _SUMMARY_CACHE:
            t0 = time.perf_counter()
            _SUMMARY_CACHE["packages"] = _safe(installed_packages, {})
            _SUMMARY_CACHE["startup"] = _safe(startup_summary, ["startup check failed"])
            main = sys.modules.get("__main__")
            entry = getattr(main, "__file__", None)
            _SUMMARY_CACHE["entry_point"] = entry
            _SUMMARY_CACHE["git"] = _safe(lambda: git_summary(entry), None)
            _SUMMARY_CACHE["seconds"] = round(time.perf_counter() - t0, 4)
        cached = dict(_SUMMARY_CACHE)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "executable": sys.executable,
        "packages": cached["packages"],
        "startup": cached["startup"],
        "git": cached["git"],
        "variables": relevant_variables(os.environ),
        "entry_point": cached["entry_point"],
        "collect_seconds": cached["seconds"],
    }


def _safe(func: Any, default: Any) -> Any:
    try:
        return func()
    except Exception:  # the summary is context, never a reason to fail an attach
        _logger.debug("env.summary part failed", exc_info=True)
        return default


class EnvSummaryWriter:
    """Computes ``env.summary`` on a background thread and records it once."""

    def __init__(self, sink: EventSink) -> None:
        """Start collecting for ``sink`` at once (daemon thread)."""
        # Every module the collection needs is imported here, on the attaching thread
        # (about 20 ms, once). An import on another thread while the main thread is
        # ending with an uncaught KeyboardInterrupt makes CPython 3.11 exit with status
        # 1 instead of 130 (observed with SIGINT right after attach): the job's exit
        # status must not depend on the guard.
        importlib.import_module("importlib.metadata")
        importlib.import_module("trainguard.env.interpreter")
        importlib.import_module("trainguard.env.startup")
        self.sink = sink
        self.done = threading.Event()
        # Not named "trainguard-...": the heartbeat's integrity check expects those
        # threads to live as long as the guard, and this one ends after one event.
        self.thread = threading.Thread(target=self._run, name="trainguard.envsummary", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.record("env.summary", env_summary())
        except Exception:  # best effort: logged, never raised into training
            _logger.exception("env.summary failed")
        finally:
            self.done.set()

    def wait(self, timeout: float) -> None:
        """Wait (bounded) for the event to be recorded, e.g. before the sink closes."""
        with contextlib.suppress(RuntimeError):
            self.thread.join(timeout=timeout)
