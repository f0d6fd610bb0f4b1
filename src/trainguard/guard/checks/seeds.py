"""``seed.tampered``: random number generators reseeded after start by other code.

Two independent mechanisms:

1. **Wrappers on the seeding API.** When the guard attaches, ``torch.manual_seed``,
   ``torch.seed``, ``torch.set_rng_state`` (and their ``torch.random`` names), the
   ``torch.cuda`` seeding functions, ``numpy.random.seed`` / ``set_state`` and
   ``random.seed`` / ``setstate`` are replaced by thin wrappers that name the caller:
   the first frame outside torch, numpy, the standard library and trainguard. A call
   from the entry point (``__main__``'s file) or from a file in the ``seeds.allow``
   setting is recorded as telemetry (``seed.call``); any other caller is
   ``seed.tampered`` with its ``file:line``. Seeding before ``watch()`` is set-up and
   not judged. ``torch.random.fork_rng`` (which restores the state it saved) and
   trainguard's own calls pass. The wrappers are registered in
   :mod:`trainguard.guard.hooks.registry` so the code-integrity monitor verifies the
   torch/numpy/stdlib function behind them, and replacing a wrapper is still
   ``code.tampered``.
2. **State cross-check after the steps** (for reseeding that bypasses the wrappers:
   ``torch.default_generator.manual_seed``, ``numpy.random.mtrand._rand.seed``,
   ``random._inst.seed``...):

   - torch (every step): ``torch.initial_seed()`` (and the CUDA one once CUDA is
     initialised) must not change unless a wrapper saw the call;
   - Python ``random`` and numpy's global ``RandomState`` (both Mersenne Twister;
     every ``seeds.check_every`` steps, default 10): the new state must be
     *reachable* from the previous one by drawing numbers. The check replays the
     twister on a scratch generator for the number of 32-bit words implied by the
     index difference plus up to ``seeds.max_regenerations`` (default 256) full
     regenerations of 624 words; a state that is not reachable was set, not advanced.

Limits (documented in docs/guard-process.md): ``set_state`` on torch's generator
object directly keeps ``initial_seed`` and is caught only through the wrapper; a step
that draws more than ``max_regenerations * 624`` Python/numpy words between two checks
looks like a reseed (raise the setting for such jobs); local
``torch.Generator`` / ``numpy.random.Generator`` objects are the job's own business.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import make_finding
from trainguard.guard.hooks.registry import register_wrapper, unregister_wrapper
from trainguard.guard.stats import Throttle

_logger = logging.getLogger(__name__)

SEED_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("manual_seed", "seed", "set_rng_state")),
    ("torch.random", ("manual_seed", "seed", "set_rng_state")),
    (
        "torch.cuda",
        (
            "manual_seed",
            "manual_seed_all",
            "seed",
            "seed_all",
            "set_rng_state",
            "set_rng_state_all",
        ),
    ),
    (
        "torch.cuda.random",
        (
            "manual_seed",
            "manual_seed_all",
            "seed",
            "seed_all",
            "set_rng_state",
            "set_rng_state_all",
        ),
    ),
    ("numpy.random", ("seed", "set_state")),
    ("numpy.random.mtrand", ("seed", "set_state")),
    ("random", ("seed", "setstate")),
)
"""Module attributes wrapped (only modules already imported are touched)."""

_MT_WORDS = 624
_UNREACHABLE = (
    "state not reachable from the previous one by drawing up to {} x 624 numbers; "
    "raise seeds.max_regenerations if one step draws more"
)


def _dir_of(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return None
    return str(Path(path).resolve().parent) + os.sep


def _skip_dirs() -> tuple[tuple[str, ...], str]:
    """(library dirs whose frames are never the caller, trainguard's own dir)."""
    import trainguard

    paths = sysconfig.get_paths()
    site = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths}
    dirs = {
        os.path.realpath(paths[k]) + os.sep
        for k in ("stdlib", "platstdlib")
        if k in paths and os.path.realpath(paths[k]) not in site
    }
    for name in ("torch", "numpy"):
        mod = sys.modules.get(name)
        d = _dir_of(mod) if mod is not None else None
        if d:
            dirs.add(d)
    own = _dir_of(trainguard) or "\0"
    dirs.add(own)
    return tuple(sorted(dirs)), own


def entry_point_file() -> str | None:
    """Real path of the entry script (``__main__.__file__``), None when there is none."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.realpath(path) if isinstance(path, str) else None


class SeedMonitor:
    """Wraps the seeding API and cross-checks the generators' states every step."""

    name = "seeds"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` installs the wrappers."""
        self.ctx: GuardContext | None = None
        self.installed: list[tuple[Any, str, Any, Any]] = []
        self.allow: tuple[str, ...] = ()
        self.entry: str | None = None
        self.max_regen = 256
        self.check_every = 10
        self.calls = 0
        self.tampered = 0
        self._local = threading.local()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._skip: tuple[str, ...] = ()
        self._own = "\0"
        self._throttle = Throttle(100)
        self._active = False
        self._torch_seed: int | None = None
        self._cuda_seed: int | None = None
        self._py_state: Any = None
        self._np_state: Any = None
        self._scratch = random.Random(0)  # noqa: S311 - replays the job's own MT19937

    # -------------------------------------------------------------------- start
    def start(self, ctx: GuardContext) -> None:
        """Install the wrappers and take the reference states."""
        self.ctx = ctx
        self._throttle = Throttle(int(ctx.settings.get("repeat_every", 100)))
        allow = ctx.settings.get("seeds.allow", ())
        if isinstance(allow, str):
            allow = tuple(a for a in allow.split(",") if a)
        self.allow = tuple(os.path.realpath(a) for a in allow)
        self.max_regen = int(ctx.settings.get("seeds.max_regenerations", 256))
        self.check_every = max(1, int(ctx.settings.get("seeds.check_every", 10)))
        self.entry = entry_point_file()
        self._skip, self._own = _skip_dirs()
        self._install()
        self._snapshot()
        self._active = True

    def _install(self) -> None:
        made: dict[int, Any] = {}
        for module_name, attrs in SEED_TARGETS:
            module = sys.modules.get(module_name)
            if module is None:
                continue
            for attr in attrs:
                original = getattr(module, attr, None)
                if original is None or not callable(original):
                    continue
                wrapper = made.get(id(original))
                if wrapper is None:
                    wrapper = self._wrap(original, f"{module_name}.{attr}")
                    made[id(original)] = wrapper
                    register_wrapper(wrapper, original)
                setattr(module, attr, wrapper)
                self.installed.append((module, attr, original, wrapper))

    def _wrap(self, original: Callable[..., Any], label: str) -> Callable[..., Any]:
        monitor = self

        def trainguard_seed_wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(monitor._local, "depth", 0)
            if depth == 0 and monitor._active and os.getpid() == monitor._pid:
                try:
                    monitor._on_call(label, args, kwargs, sys._getframe(1))
                except Exception:  # judging a call must never break the job's seeding
                    _logger.exception("seed call check failed")
            monitor._local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                monitor._local.depth = depth
                if depth == 0 and monitor._active and os.getpid() == monitor._pid:
                    monitor._snapshot()

        try:
            functools.update_wrapper(trainguard_seed_wrapper, original)
        except (AttributeError, TypeError):  # some builtins lack attributes; not needed
            trainguard_seed_wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        return trainguard_seed_wrapper

    # -------------------------------------------------------------------- calls
    def _judge_caller(self, frame: FrameType | None) -> tuple[str | None, str | None, bool]:
        """``(file, location, allowed_by_library)`` of the code that asked for the seed."""
        depth = 0
        while frame is not None and depth < 64:
            filename = frame.f_code.co_filename
            real = os.path.realpath(filename) if filename.startswith(os.sep) else filename
            if real.startswith(self._own):
                return real, f"{filename}:{frame.f_lineno}", True
            if frame.f_code.co_name == "fork_rng" and real.startswith(self._skip):
                return real, f"{filename}:{frame.f_lineno}", True
            if not filename.startswith("<frozen") and not real.startswith(self._skip):
                return real, f"{filename}:{frame.f_lineno}", False
            frame = frame.f_back
            depth += 1
        return None, None, False

    def allowed_file(self, real: str | None) -> bool:
        """The entry point and the configured files / directories may seed."""
        if real is None:
            return False
        if self.entry is not None and real == self.entry:
            return True
        return any(real == a or real.startswith(a.rstrip(os.sep) + os.sep) for a in self.allow)

    def _on_call(
        self, label: str, args: tuple[Any, ...], kwargs: dict[str, Any], frame: FrameType | None
    ) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        self.calls += 1
        real, location, library = self._judge_caller(frame)
        shown = _short_args(args, kwargs)
        if library or self.allowed_file(real):
            ctx.sink.record(
                "seed.call",
                {"function": label, "args": shown, "location": location, "allowed": True},
            )
            return
        self.tampered += 1
        if not self._throttle.allow(("seed.tampered", label, location), ctx.step):
            return
        module = _module_of(frame, real)
        ctx.report(
            make_finding(
                ctx,
                "seed.tampered",
                f"{label}({shown}) called after start by {location} "
                f"(module {module}), not by the entry point {self.entry}.",
                location=location,
                evidence={
                    "function": label,
                    "args": shown,
                    "caller": location,
                    "caller_module": module,
                    "entry_point": self.entry,
                    "via": "wrapper",
                },
            )
        )

    # -------------------------------------------------------------- cross-check
    def _snapshot(self) -> None:
        with self._lock:
            torch = sys.modules.get("torch")
            if torch is not None:
                self._torch_seed = int(torch.initial_seed())
                self._cuda_seed = _cuda_seed(torch)
            self._py_state = random.getstate()
            self._np_state = _np_state()

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing before the step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Cross-check the generators against the last state the guard saw."""
        with self._lock:
            self._check_torch(ctx)  # one integer: every step
            if ctx.step % self.check_every == 0:  # ~40 us of state copies: every N steps
                self._check_python(ctx)
                self._check_numpy(ctx)

    def _state_finding(self, ctx: GuardContext, generator: str, detail: str) -> None:
        self.tampered += 1
        if not self._throttle.allow(("seed.tampered", generator, "state"), ctx.step):
            return
        ctx.report(
            make_finding(
                ctx,
                "seed.tampered",
                f"The {generator} generator was reseeded or its state replaced without "
                f"going through the seeding API ({detail}); a direct call on the "
                "generator object bypassed the guard's wrappers.",
                evidence={"generator": generator, "detail": detail, "via": "state-check"},
            )
        )

    def _check_torch(self, ctx: GuardContext) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        seed = int(torch.initial_seed())
        if self._torch_seed is not None and seed != self._torch_seed:
            self._state_finding(ctx, "torch CPU", f"initial_seed {self._torch_seed} -> {seed}")
        self._torch_seed = seed
        cuda = _cuda_seed(torch)
        if cuda is not None and self._cuda_seed is not None and cuda != self._cuda_seed:
            self._state_finding(ctx, "torch CUDA", f"initial_seed {self._cuda_seed} -> {cuda}")
        self._cuda_seed = cuda

    def _check_python(self, ctx: GuardContext) -> None:
        current = random.getstate()
        previous = self._py_state
        self._py_state = current
        if previous is None or current[1] == previous[1]:
            return
        if not _mt_reachable_py(self._scratch, previous, current, self.max_regen):
            self._state_finding(ctx, "Python random", _UNREACHABLE.format(self.max_regen))

    def _check_numpy(self, ctx: GuardContext) -> None:
        current = _np_state()
        previous = self._np_state
        self._np_state = current
        if previous is None or current is None:
            return
        if current[0] == previous[0] and current[1] == previous[1]:
            return
        if not _mt_reachable_np(previous, current, self.max_regen):
            self._state_finding(ctx, "numpy.random", _UNREACHABLE.format(self.max_regen))

    # -------------------------------------------------------------------- close
    def integrity(self, ctx: GuardContext) -> dict[str, bool]:
        """Bit for the heartbeat: every wrapper still in place."""
        return {"seed_wrappers": all(getattr(m, a, None) is w for m, a, _, w in self.installed)}

    def close(self, ctx: GuardContext) -> None:
        """Restore the originals where our wrapper is still in place."""
        self._active = False
        for module, attr, original, wrapper in reversed(self.installed):
            if getattr(module, attr, None) is wrapper:
                setattr(module, attr, original)
        for _, _, _, wrapper in self.installed:
            unregister_wrapper(wrapper)
        self.installed = []


def _short_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = []
    for a in args:
        text = repr(a) if isinstance(a, (int, float, str)) else f"<{type(a).__name__}>"
        parts.append(text[:60])
    parts.extend(f"{k}=<{type(v).__name__}>" for k, v in kwargs.items())
    return ", ".join(parts)


def _module_of(frame: FrameType | None, real: str | None) -> str | None:
    depth = 0
    while frame is not None and depth < 64:
        filename = frame.f_code.co_filename
        if real is not None and os.path.realpath(filename) == real:
            name = frame.f_globals.get("__name__")
            return str(name) if name is not None else None
        frame = frame.f_back
        depth += 1
    return Path(real).stem if real else None


def _cuda_seed(torch: Any) -> int | None:
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.initial_seed())
    except Exception:  # noqa: BLE001 - a CUDA error only skips the CUDA cross-check
        return None
    return None


def _np_state() -> tuple[int, bytes] | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    try:
        bitgen = numpy.random.mtrand._rand._bit_generator
        state = bitgen.state["state"]
        return int(state["pos"]), bytes(state["key"].tobytes())
    except Exception:  # noqa: BLE001 - a numpy without the legacy global RandomState
        return None


def _first_gap(prev_index: int, cur_index: int) -> int:
    """Words drawn modulo one regeneration (the index runs 0..624, 624 = regenerate next)."""
    gap = cur_index - prev_index
    return gap if gap >= 0 else gap + _MT_WORDS


def _mt_reachable_py(scratch: random.Random, previous: Any, current: Any, max_regen: int) -> bool:
    """True when ``current`` is ``previous`` advanced by drawing (within the budget)."""
    cur_index = current[1][-1]
    target = current[1]
    scratch.setstate(previous)
    step = _first_gap(previous[1][-1], cur_index)
    for _ in range(max_regen + 1):
        if step:
            scratch.getrandbits(32 * step)
        if scratch.getstate()[1] == target:
            return True
        step = _MT_WORDS
    return False


def _mt_reachable_np(
    previous: tuple[int, bytes], current: tuple[int, bytes], max_regen: int
) -> bool:
    """The same replay for numpy's legacy global MT19937."""
    import numpy as np

    bitgen = np.random.MT19937()
    prev_pos, prev_key = previous
    cur_pos, cur_key = current
    bitgen.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.frombuffer(prev_key, dtype=np.uint32).copy(), "pos": prev_pos},
    }
    step = _first_gap(prev_pos, cur_pos)
    for _ in range(max_regen + 1):
        if step:
            bitgen.random_raw(step)
        state = bitgen.state["state"]
        if int(state["pos"]) == cur_pos and state["key"].tobytes() == cur_key:
            return True
        step = _MT_WORDS
    return False
