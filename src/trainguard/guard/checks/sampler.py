"""Where the training thread's wall time goes: a low-rate stack sampler.

A background thread wakes ``sample_hz`` times a second, reads the training thread's
current Python stack with ``sys._current_frames()`` and two kernel facts about it:

- its scheduler state (``/proc/self/task/<tid>/stat``: ``R`` running or runnable,
  ``S``/``D`` sleeping in a system call), and
- its CPU clock (``pthread_getcpuclockid``), advanced or not since the last sample.

Each sample (weighted by the wall time since the previous one) goes to one bucket:

=================  ==========================================================
``guard``          a trainguard frame is on the stack (our own hooks; the
                   adapters in ``trainguard.integrations`` count as framework)
``checkpoint``     a checkpoint is being written or read (``torch.save`` /
                   ``torch.load``, safetensors, the guard's save/load_checkpoint)
                   and the innermost frame is not user code
``data``           a ``torch.utils.data`` frame is on the stack (loader, dataset)
``collective``     innermost non-stdlib frame in ``torch.distributed`` / DDP
``optimizer``      innermost non-stdlib frame in ``torch.optim``
``backward``       innermost non-stdlib frame in ``torch.autograd`` (C++ engine)
``compute``        innermost non-stdlib frame in torch or a framework package,
                   or user code running on the CPU inside forward / backward /
                   optimizer step (custom layers, custom optimizers)
``gpu_wait``       user frame, thread asleep, but the CUDA stream is still busy
``user_blocked``   user frame, thread asleep in a system call, nothing running
                   on its behalf: ``time.sleep``, ``select``, ``Event.wait``,
                   lock acquire, socket read...
``user_python``    user frame, thread on the CPU, outside forward / backward /
                   optimizer step: Python code between the training calls
                   (a busy-wait loop is here)
=================  ==========================================================

The decision does not depend on any function name: a sleep, a ``select`` or an
``Event().wait`` all leave the thread asleep in a user frame, and a busy loop leaves
it on the CPU in user bytecode outside the compute phases. Standard-library frames
(``threading.py``, ``selectors.py``...) are skipped when choosing the *location*, so
the blame lands on the user line that called them.

Cost: one ``sys._current_frames()`` call, a walk of one stack (cached per file), one
``pread`` and one ``clock_gettime`` per sample: about 20 us of CPU, 30-100 us with the
wake-up and the GIL hand-over when the training thread is busy in Python. At the
default 50 Hz that is 0.1-0.5 % of one core, and the training thread only swaps an
accumulator per step. Samples are weighted by the time since the previous one, so
the estimate is unbiased at any rate; the rate sets its variance (a 5-step window of
250 ms steps holds about 60 samples).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import secrets
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

_logger = logging.getLogger(__name__)

SUSPICIOUS_BUCKETS = ("user_blocked", "user_python")
"""Buckets where a training step has no business spending wall time."""
WAIT_BUCKETS = ("collective_wait", "backward_wait")
"""Buckets of time spent waiting for peers (used for straggler accounting)."""
CHECKPOINT_BUCKET = "checkpoint"
"""Time in checkpoint serialisation (``torch.save`` / ``torch.load``, safetensors, the
guard's ``save_checkpoint`` / ``load_checkpoint``): legitimate, and uneven between
ranks by design (rank 0 saves), so kept out of the straggler comparison."""

_CHECKPOINT_PACKAGES = ("safetensors",)
_TORCH_CHECKPOINT_FILES = ("serialization.py", "_weights_only_unpickler.py")
_GUARD_CHECKPOINT_FILES = (str(Path("guard", "checks", "lineage.py")),)

_FRAMEWORKS = (
    "numpy",
    "transformers",
    "accelerate",
    "lightning",
    "pytorch_lightning",
    "deepspeed",
    "megatron",
    "apex",
    "triton",
    "torchvision",
    "torchaudio",
    "torchtext",
    "timm",
    "einops",
    "flash_attn",
    "xformers",
)


def _package_dir(name: str) -> str | None:
    """Directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    locations = list(spec.submodule_search_locations)
    return os.path.realpath(locations[0]) + os.sep if locations else None


class FileClassifier:
    """Maps a code object's file name to a kind; cached, since files repeat."""

    def __init__(self, extra_frameworks: tuple[str, ...] = ()) -> None:
        """Resolve the directories of stdlib, torch, trainguard and frameworks once."""
        import torch

        import trainguard

        self.torch_dir = str(Path(torch.__file__).resolve().parent) + os.sep
        self.guard_dir = str(Path(trainguard.__file__).resolve().parent) + os.sep
        # The framework adapters (Lightning's eager closure, the HF callback) run the
        # user's training step beneath the guard's hook: their frames are framework
        # code, not the guard's own time, or a delay in the step would be invisible.
        self.integrations_dir = self.guard_dir + "integrations" + os.sep
        paths = sysconfig.get_paths()
        self.stdlib_dirs = tuple(
            {os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths}
        )
        self.site_dirs = tuple(
            {os.path.realpath(paths[k]) + os.sep for k in ("purelib", "platlib") if k in paths}
        )
        fw = []
        for name in (*_FRAMEWORKS, *extra_frameworks):
            d = _package_dir(name)
            if d:
                fw.append(d)
        self.framework_dirs = tuple(fw)
        self.checkpoint_dirs = tuple(
            d for d in (_package_dir(name) for name in _CHECKPOINT_PACKAGES) if d
        )
        self.checkpoint_files = frozenset(
            [self.torch_dir + f for f in _TORCH_CHECKPOINT_FILES]
            + [self.guard_dir + f for f in _GUARD_CHECKPOINT_FILES]
        )
        self._cache: dict[str, str] = {}
        self._torch_sub = (
            ("utils" + os.sep + "data" + os.sep, "data"),
            ("distributed" + os.sep, "collective"),
            ("nn" + os.sep + "parallel" + os.sep, "collective"),
            ("optim" + os.sep, "optimizer"),
            ("autograd" + os.sep, "autograd"),
        )

    def kind(self, filename: str) -> str:
        """``guard``, ``data``, ``collective``, ``optimizer``, ``autograd``, ``compute``,
        ``checkpoint``, ``framework``, ``stdlib`` or ``user``."""
        cached = self._cache.get(filename)
        if cached is not None:
            return cached
        result = self._classify(filename)
        if len(self._cache) < 20000:
            self._cache[filename] = result
        return result

    def _classify(self, filename: str) -> str:
        if filename.startswith("<frozen") or filename.startswith("<string"):
            return "stdlib"
        real = os.path.realpath(filename) if filename.startswith(os.sep) else filename
        if real in self.checkpoint_files or any(real.startswith(d) for d in self.checkpoint_dirs):
            return "checkpoint"
        if real.startswith(self.integrations_dir):
            return "framework"
        if real.startswith(self.guard_dir):
            return "guard"
        if real.startswith(self.torch_dir):
            rest = real[len(self.torch_dir) :]
            for prefix, kind in self._torch_sub:
                if rest.startswith(prefix):
                    return kind
            return "compute"
        if any(real.startswith(d) for d in self.framework_dirs):
            return "framework"
        in_site = any(real.startswith(d) for d in self.site_dirs)
        if not in_site and any(real.startswith(d) for d in self.stdlib_dirs):
            return "stdlib"
        return "user"


@dataclass
class SampleAccumulator:
    """Time per bucket and per suspicious location since the last swap."""

    buckets: dict[str, float] = field(default_factory=dict)
    """Seconds per bucket."""
    locations: dict[str, float] = field(default_factory=dict)
    """Seconds per ``file:line`` in the suspicious buckets."""
    location_blocked: dict[str, float] = field(default_factory=dict)
    """Of which asleep (blocked) rather than on the CPU."""
    samples: int = 0
    """Number of samples."""

    def add(self, bucket: str, seconds: float, location: str | None, blocked: bool) -> None:
        """Account ``seconds`` to ``bucket`` (and to ``location`` when suspicious)."""
        self.samples += 1
        self.buckets[bucket] = self.buckets.get(bucket, 0.0) + seconds
        if (
            location is not None
            and bucket in SUSPICIOUS_BUCKETS
            and (location in self.locations or len(self.locations) < 1000)
        ):
            self.locations[location] = self.locations.get(location, 0.0) + seconds
            if blocked:
                self.location_blocked[location] = self.location_blocked.get(location, 0.0) + seconds

    def merge(self, other: SampleAccumulator) -> None:
        """Add ``other`` into this accumulator."""
        self.samples += other.samples
        for k, v in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0.0) + v
        for k, v in other.locations.items():
            self.locations[k] = self.locations.get(k, 0.0) + v
        for k, v in other.location_blocked.items():
            self.location_blocked[k] = self.location_blocked.get(k, 0.0) + v


class _ThreadState:
    """Reads the training thread's scheduler state and CPU clock (Linux; else None)."""

    def __init__(self, ident: int, native_id: int):
        self.clock: int | None = None
        try:
            self.clock = time.pthread_getcpuclockid(ident)
            time.clock_gettime(self.clock)
        except (AttributeError, OSError, OverflowError):
            self.clock = None
        self.fd: int | None = None
        try:
            self.fd = os.open(f"/proc/self/task/{native_id}/stat", os.O_RDONLY)
        except OSError:
            self.fd = None

    def cpu(self) -> float | None:
        if self.clock is None:
            return None
        try:
            return time.clock_gettime(self.clock)
        except OSError:
            return None

    def state(self) -> str | None:
        if self.fd is None:
            return None
        try:
            raw = os.pread(self.fd, 512, 0)
        except OSError:
            return None
        end = raw.rfind(b")")
        if end < 0 or end + 2 >= len(raw):
            return None
        return chr(raw[end + 2])

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


_BUSY = 0.3
"""Share of the wall time between two samples the thread must have spent on the CPU to
count as running (below it, the scheduler state decides)."""

PHASE_OUTSIDE = 0
"""Between the training calls (the loop body)."""
PHASE_COMPUTE = 1
"""Inside the model's forward or the optimizer step."""


class StackSampler:
    """Background sampler of one thread's stack; see the module docstring."""

    def __init__(
        self,
        ident: int,
        native_id: int,
        hz: float,
        *,
        classifier: FileClassifier | None = None,
        cuda_stream: Any = None,
    ):
        """Prepare to sample thread ``ident`` (``threading.get_ident()``) at ``hz``."""
        self.ident = ident
        self.native_id = native_id
        self.interval = 1.0 / hz
        self.classifier = classifier or FileClassifier()
        self.cuda_stream = cuda_stream
        self.acc = SampleAccumulator()
        self.phase = PHASE_OUTSIDE
        self.samples_taken = 0
        self.last_sample_time = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trainguard-sampler", daemon=True)
        self._tstate = _ThreadState(ident, native_id)
        self._own = threading.get_ident

    def start(self) -> None:
        """Start the sampling thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop the sampling thread and release its file descriptor."""
        self._stop.set()
        if self.thread.is_alive() and threading.get_ident() != self.thread.ident:
            self.thread.join(timeout=2.0)
        self._tstate.close()

    def swap(self) -> SampleAccumulator:
        """Hand the accumulated samples to the caller and start a fresh accumulator."""
        acc = self.acc
        self.acc = SampleAccumulator()
        return acc

    def _run(self) -> None:
        last = time.perf_counter()
        last_cpu = self._tstate.cpu()
        # Jittered intervals (uniform in [0.5, 1.5] x the mean, from a private OS-seeded
        # source): code that knows the rate still cannot time its work between samples.
        # time.sleep rather than Event.wait(timeout): half the CPU per wake-up; stop()
        # waits at most one interval for the loop to notice the flag.
        jitter = random.Random(secrets.randbits(64))  # noqa: S311 - not cryptography
        while True:
            time.sleep(self.interval * (0.5 + jitter.random()))
            if self._stop.is_set():
                break
            now = time.perf_counter()
            cpu = self._tstate.cpu()
            dt = now - last
            cpu_dt = (cpu - last_cpu) if (cpu is not None and last_cpu is not None) else None
            # The scheduler state (a /proc read, a third of a sample's cost) only decides
            # between asleep and running when the CPU clock did not show the thread busy.
            state = self._tstate.state() if cpu_dt is None or cpu_dt < _BUSY * dt else None
            frame = sys._current_frames().get(self.ident)
            if frame is None:  # the training thread is gone
                last = now
                continue
            try:
                bucket, location, blocked = self.classify(frame, dt, cpu_dt, state)
                self.acc.add(bucket, dt, location, blocked)
            except Exception:  # sampling must never take the job down
                _logger.debug("sample failed", exc_info=True)
            finally:
                del frame
            self.samples_taken += 1
            self.last_sample_time = now
            last = now
            last_cpu = cpu

    def classify(
        self, frame: FrameType, dt: float, cpu_dt: float | None, state: str | None
    ) -> tuple[str, str | None, bool]:
        """``(bucket, location, blocked)`` for one sample of ``frame``'s stack."""
        kind_of = self.classifier.kind
        inner: FrameType | None = None
        inner_kind = "user"
        has_guard = has_data = has_compute_ctx = has_checkpoint = False
        f: FrameType | None = frame
        depth = 0
        while f is not None and depth < 128:
            k = kind_of(f.f_code.co_filename)
            if inner is None and k != "stdlib":
                inner, inner_kind = f, k
            if k == "guard":
                has_guard = True
            elif k == "checkpoint":
                has_checkpoint = True
            elif k == "data":
                has_data = True
            elif k in ("autograd", "optimizer"):
                has_compute_ctx = True
            f = f.f_back
            depth += 1
        if cpu_dt is None:
            idle = state in ("S", "D") if state is not None else False
        else:
            busy_cpu = cpu_dt >= _BUSY * dt
            idle = (not busy_cpu) and (state in ("S", "D", None))
        # Serialising a checkpoint, unless user code runs inside it (a __reduce__, a
        # file object's write): that code is classified like any other user frame.
        if has_checkpoint and inner_kind != "user":
            return CHECKPOINT_BUCKET, None, idle
        if has_guard:
            return "guard", None, idle
        if has_data:
            return "data", None, idle
        if inner_kind == "collective":
            return ("collective_wait" if idle else "collective"), None, idle
        if inner_kind == "optimizer":
            return "optimizer", None, idle
        if inner_kind == "autograd":
            return ("backward_wait" if idle else "backward"), None, idle
        if inner_kind in ("compute", "framework"):
            return ("torch_wait" if idle else "compute"), None, idle
        location = f"{inner.f_code.co_filename}:{inner.f_lineno}" if inner is not None else None
        if idle:
            if self.cuda_stream is not None and not _stream_idle(self.cuda_stream):
                return "gpu_wait", None, idle
            return "user_blocked", location, True
        if self.phase == PHASE_COMPUTE or has_compute_ctx:
            return "compute", None, False
        return "user_python", location, False


def _stream_idle(stream: Any) -> bool:
    try:
        return bool(stream.query())
    except RuntimeError:  # a CUDA error here only loses the gpu_wait distinction
        return True


def location_function(location: str) -> str | None:
    """Best-effort name of the source line at ``location`` (for messages)."""
    path, _, line = location.rpartition(":")
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        return lines[int(line) - 1].strip()[:200]
    except (OSError, ValueError, IndexError):
        return None
