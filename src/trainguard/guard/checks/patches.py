"""``code.tampered``: functions the training relies on, replaced at run time.

At attach the monitor resolves a table of targets (the optimizers' ``step`` and
functional implementations, ``torch.nn.functional``, every ``torch.nn`` module's
``forward``, autograd, the distributed collectives and DDP's hooks, the RNG seeding
functions, the data loader and samplers, torch.load/save, the ``_foreach_*`` kernels
and the in-place Tensor methods the optimizers use, plus the watched optimizer's own
class and instance), and for each one:

1. **Is it what the installed source says?** A Python function must come from a file
   under torch's package directory (or the standard library / numpy for their
   functions), and its code object must equal the code compiled from that file on
   disk (same bytecode, names and constants, found by qualified name and first line).
   Closure cells holding functions (decorators such as ``torch.no_grad()`` and the
   optimizer's ``profile_hook_step`` wrapper keep the real function there) are
   checked the same way, recursively. A builtin stays a builtin. This catches a
   function that was replaced *before* the guard started, and a ``__code__`` swap
   that pretends to come from torch. (An edited file on disk is ``env verify``'s
   finding; an edited C++ kernel is the optimizer re-computation's.)
2. **Is it still the same object?** Every ``patch_check_every`` steps and every
   ``patch_check_seconds`` from a background thread (so a patch that also stops the
   optimizer hooks from firing is still seen), identity, ``__code__`` and closure
   contents are compared with the snapshot.

Each finding names the target, where the replacement was defined
(``inspect.getsourcefile`` + ``co_firstlineno``) and its module.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
import sysconfig
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import check_failed, code_location, format_location, make_finding
from trainguard.guard.hooks.registry import trusted_original
from trainguard.guard.stats import Throttle

_logger = logging.getLogger(__name__)

_OPTIMIZERS = (
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "LBFGS",
    "SparseAdam",
)
_FOREACH = (
    "_foreach_add_",
    "_foreach_mul_",
    "_foreach_addcdiv_",
    "_foreach_addcmul_",
    "_foreach_lerp_",
    "_foreach_sqrt",
    "_foreach_div_",
    "_foreach_maximum_",
    "_foreach_neg",
    "_foreach_norm",
    "_foreach_sub_",
    "_foreach_sign_",
)
_TENSOR_METHODS = (
    "add_",
    "addcdiv_",
    "addcmul_",
    "lerp_",
    "mul_",
    "sqrt",
    "div_",
    "copy_",
    "zero_",
    "sub_",
    "maximum",
    "sign",
    "clamp_",
    "neg",
    "backward",
    "register_hook",
)

BASE_TARGETS: tuple[str, ...] = (
    "torch.optim.Optimizer.zero_grad",
    "torch.optim.Optimizer.profile_hook_step",
    "torch.optim.Optimizer._patch_step_function",
    "torch.optim.Optimizer.register_step_pre_hook",
    "torch.optim.Optimizer.register_step_post_hook",
    *(f"torch.optim.{name}.step" for name in _OPTIMIZERS),
    "torch.optim.sgd.sgd",
    "torch.optim.sgd._single_tensor_sgd",
    "torch.optim.sgd._multi_tensor_sgd",
    "torch.optim.sgd._fused_sgd",
    "torch.optim.adam.adam",
    "torch.optim.adam._single_tensor_adam",
    "torch.optim.adam._multi_tensor_adam",
    "torch.optim.adam._fused_adam",
    "torch.optim.adamw.adamw",
    "torch.autograd.backward",
    "torch.autograd.grad",
    "torch.nn.utils.clip_grad_norm_",
    "torch.nn.utils.clip_grad.clip_grad_norm_",
    "torch.nn.Module.__call__",
    "torch.nn.Module._call_impl",
    "torch.nn.Module.zero_grad",
    "torch.distributed.all_reduce",
    "torch.distributed.all_gather",
    "torch.distributed.all_gather_into_tensor",
    "torch.distributed.all_gather_single",
    "torch.distributed.broadcast",
    "torch.distributed.reduce_scatter",
    "torch.distributed.barrier",
    "torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook",
    "torch.distributed.algorithms.ddp_comm_hooks.default_hooks._allreduce_fut",
    "torch.nn.parallel.DistributedDataParallel.forward",
    "torch.nn.parallel.DistributedDataParallel.register_comm_hook",
    "torch.manual_seed",
    "torch.seed",
    "torch.random.manual_seed",
    "torch.set_rng_state",
    "torch.cuda.manual_seed",
    "torch.cuda.manual_seed_all",
    "torch.cuda.set_rng_state",
    "numpy.random.seed",
    "random.seed",
    "random.setstate",
    "torch.utils.data.DataLoader.__iter__",
    "torch.utils.data.dataloader._BaseDataLoaderIter.__next__",
    "torch.utils.data.RandomSampler.__iter__",
    "torch.utils.data.distributed.DistributedSampler.__iter__",
    "torch.utils.data.distributed.DistributedSampler.set_epoch",
    "torch.load",
    "torch.save",
    *(f"torch.{name}" for name in _FOREACH),
    *(f"torch.Tensor.{name}" for name in _TENSOR_METHODS),
)
"""Dotted names protected by default (plus torch.nn.functional and module forwards)."""

_BUILTIN_TYPES = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
)


_COMPILED_TYPES = ("cython_function_or_method", "fused_cython_function")
"""Compiled callables (numpy's Cython): like builtins, judged by the recompute, not here."""


def default_targets() -> list[str]:
    """The base table plus every public ``torch.nn.functional`` function and module forward."""
    names = list(BASE_TARGETS)
    fn = torch.nn.functional
    for attr in sorted(vars(fn)):
        if (
            not attr.startswith("_")
            and callable(getattr(fn, attr))
            and not isinstance(getattr(fn, attr), type)
        ):
            obj = getattr(fn, attr)
            if getattr(obj, "__module__", "") in (
                "torch.nn.functional",
                "torch._C._nn",
                None,
            ) or isinstance(obj, _BUILTIN_TYPES):
                names.append(f"torch.nn.functional.{attr}")
    for attr in sorted(vars(torch.nn)):
        obj = getattr(torch.nn, attr)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and "forward" in vars(obj):
            names.append(f"torch.nn.{attr}.forward")
    return names


_SPLITS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
_MRO = type.__dict__["__mro__"].__get__
_TYPE_DICT = type.__dict__["__dict__"].__get__


def _static_attr(cls: type, attr: str) -> Any:
    """``inspect.getattr_static(cls, attr)``, fast for the common case.

    The class's own MRO dictionaries, read through ``type``'s descriptors (so neither a
    metaclass nor a descriptor runs code); anything else (metaclass attributes) goes
    to ``getattr_static``. The table is re-checked every few seconds: 344 targets cost
    1.4 ms with ``getattr_static`` and string splitting on every call.
    """
    for klass in _MRO(cls):
        namespace = _TYPE_DICT(klass)
        if attr in namespace:
            return namespace[attr]
    return inspect.getattr_static(cls, attr)


def resolve(dotted: str) -> tuple[bool, Any]:
    """``(found, object)`` for a dotted name, using only modules already imported."""
    splits = _SPLITS.get(dotted)
    if splits is None:
        parts = dotted.split(".")
        splits = tuple(
            (".".join(parts[:cut]), tuple(parts[cut:])) for cut in range(len(parts) - 1, 0, -1)
        )
        if len(_SPLITS) < 10_000:
            _SPLITS[dotted] = splits
    modules = sys.modules
    for module_name, attrs in splits:
        mod = modules.get(module_name)
        if mod is None:
            continue
        obj: Any = mod
        try:
            for attr in attrs:
                obj = _static_attr(obj, attr) if isinstance(obj, type) else getattr(obj, attr)
        except AttributeError:
            return False, None
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        return True, obj
    return False, None


@dataclass
class _Snapshot:
    """What a target was at attach."""

    obj: Any
    code: Any
    cells: tuple[int, ...]


def _cells(obj: Any) -> tuple[int, ...]:
    func = getattr(obj, "__func__", obj)
    closure = getattr(func, "__closure__", None) or ()
    out = []
    for cell in closure:
        try:
            out.append(id(cell.cell_contents))
        except ValueError:  # empty cell
            out.append(0)
    return tuple(out)


_CodeIndex = dict[tuple[str, int], types.CodeType]

_INDEX_CACHE: dict[str, tuple[tuple[int, int, int, int], _CodeIndex | None]] = {}
_INDEX_LOCK = threading.Lock()


def _compiled_index(filename: str) -> _CodeIndex | None:
    """Code objects compiled from ``filename`` on disk, by (qualified name, first line).

    Compiling the ~50 torch files behind the target table costs about 0.6 s of CPU, so
    the result is kept for the life of the process and shared by every Guard (a job
    that re-attaches, a callback per epoch). The key includes the file's identity and
    size and modification time: a file edited after the first compile is compiled
    again, so the comparison is always with what is on disk now. Caching cannot hide a
    replacement: the cache holds what the *disk* says, never what is in memory.
    """
    try:
        st = Path(filename).stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        return None
    with _INDEX_LOCK:
        cached = _INDEX_CACHE.get(filename)
    if cached is not None and cached[0] == key:
        return cached[1]
    index: _CodeIndex | None
    try:
        with open(filename, "rb") as fh:
            source = fh.read()
        top = compile(source, filename, "exec", dont_inherit=True)
        index = {}
        stack = [top]
        while stack:
            code = stack.pop()
            index[(code.co_qualname, code.co_firstlineno)] = code
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    except (OSError, SyntaxError, ValueError):
        index = None
    with _INDEX_LOCK:
        _INDEX_CACHE[filename] = (key, index)
    return index


class SourceVerifier:
    """Compares live code objects with the code compiled from the installed source."""

    def __init__(self) -> None:
        """Resolve the trusted roots (torch, the standard library, numpy)."""
        roots = [str(Path(torch.__file__).resolve().parent) + os.sep]
        paths = sysconfig.get_paths()
        roots.extend(
            os.path.realpath(paths[key]) + os.sep
            for key in ("stdlib", "platstdlib")
            if key in paths
        )
        numpy = sys.modules.get("numpy")
        numpy_file = getattr(numpy, "__file__", None) if numpy is not None else None
        if isinstance(numpy_file, str):
            roots.append(str(Path(numpy_file).resolve().parent) + os.sep)
        self.roots = tuple(roots)
        self._index: dict[str, dict[tuple[str, int], types.CodeType] | None] = {}

    def trusted_file(self, filename: str) -> bool:
        """True for files under a trusted root."""
        real = os.path.realpath(filename)
        return any(real.startswith(r) for r in self.roots)

    def _code_index(self, filename: str) -> dict[tuple[str, int], types.CodeType] | None:
        if filename in self._index:
            return self._index[filename]
        index = _compiled_index(filename)
        self._index[filename] = index
        return index

    def problem(self, obj: Any, depth: int = 0) -> tuple[str, Any] | None:
        """Why ``obj`` is not pristine (reason, offending object), or None."""
        obj = trusted_original(obj)  # our own seed wrappers: verify what they wrap
        if isinstance(obj, _BUILTIN_TYPES) or type(obj).__name__ in _COMPILED_TYPES:
            return None
        func = getattr(obj, "__func__", obj)
        code = getattr(func, "__code__", None)
        if code is None:
            mod = getattr(type(obj), "__module__", "") or ""
            if mod.startswith("torch") or isinstance(obj, type):
                return None
            return f"callable of type {type(obj).__qualname__} from {mod}", obj
        filename = code.co_filename
        if not self.trusted_file(filename):
            return f"defined in {filename}, outside the installed torch", func
        index = self._code_index(filename)
        if index is None:
            return f"installed source {filename} cannot be read or compiled", func
        pristine = index.get((code.co_qualname, code.co_firstlineno))
        if pristine is None:
            return (
                f"no function {code.co_qualname} at line {code.co_firstlineno} "
                "of the installed source",
                func,
            )
        if not _same_code(code, pristine):
            return f"bytecode of {code.co_qualname} differs from the installed source", func
        if depth < 3:
            for cell in getattr(func, "__closure__", None) or ():
                try:
                    inner = cell.cell_contents
                except ValueError:
                    continue
                if isinstance(inner, (types.FunctionType, types.MethodType)):
                    found = self.problem(inner, depth + 1)
                    if found is not None:
                        return f"wrapped function replaced: {found[0]}", found[1]
        return None


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    if a.co_code != b.co_code or a.co_names != b.co_names or len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts, strict=True):
        if isinstance(x, types.CodeType):
            if not isinstance(y, types.CodeType) or not _same_code(x, y):
                return False
        elif type(x) is not type(y) or (x != y and not (x != x and y != y)):
            return False
    return True


_ACCELERATE_WRAPPER = ("accelerate.optimizer", "patch_optimizer_step.<locals>.patched_step")
"""Module and qualified name of accelerate's step wrapper (mixed precision with a
GradScaler): ``AcceleratedOptimizer.step`` assigns it to ``optimizer.step`` for the
duration of each step, to learn whether the scaler skipped the step, and then stores
the original bound method back on the instance."""


def _own_bound_method(optimizer: Any, attr: str, obj: Any) -> bool:
    """``obj`` is ``optimizer``'s own method ``attr``, bound to it (as the class has it)."""
    if not isinstance(obj, types.MethodType) or obj.__self__ is not optimizer:
        return False
    try:
        return obj.__func__ is inspect.getattr_static(type(optimizer), attr)
    except AttributeError:
        return False


def _package_root(name: str) -> str | None:
    """Directory of the installed package ``name`` (from its import spec)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    return os.path.realpath(locations[0]) + os.sep if locations else None


def _accelerate_wrapper(optimizer: Any, obj: Any) -> bool:
    """``obj`` is accelerate's ``patched_step`` wrapping ``optimizer``'s own ``step``.

    Verified, not trusted by name: the function's module and qualified name, its file
    inside the installed accelerate package, its code equal to the code compiled from
    that file on disk, and its closure holding an ``AcceleratedOptimizer`` of this
    very optimizer and the optimizer's own bound ``step``. A look-alike defined
    elsewhere, an edited copy, or accelerate's wrapper around another function fails.
    """
    code = getattr(obj, "__code__", None)
    if not isinstance(obj, types.FunctionType) or code is None:
        return False
    if (obj.__module__, code.co_qualname) != _ACCELERATE_WRAPPER:
        return False
    root = _package_root("accelerate")
    if root is None or not os.path.realpath(code.co_filename).startswith(root):
        return False
    index = _compiled_index(code.co_filename)
    pristine = index.get((code.co_qualname, code.co_firstlineno)) if index else None
    if pristine is None or not _same_code(code, pristine):
        return False
    cells: dict[str, Any] = {}
    for name, cell in zip(code.co_freevars, obj.__closure__ or (), strict=False):
        try:
            cells[name] = cell.cell_contents
        except ValueError:
            return False
    wrapper = cells.get("accelerated_optimizer")
    return getattr(wrapper, "optimizer", None) is optimizer and _own_bound_method(
        optimizer, "step", cells.get("method")
    )


def known_instance_wrapper(optimizer: Any, attr: str, obj: Any) -> bool:
    """True when the instance attribute ``attr`` of ``optimizer`` is a known, verified
    legitimate one (see :data:`_ACCELERATE_WRAPPER`)."""
    if _own_bound_method(optimizer, attr, obj):
        return True
    return attr == "step" and _accelerate_wrapper(optimizer, obj)


class PatchMonitor:
    """Snapshots and re-checks the functions training relies on."""

    name = "patches"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.targets: list[str] = []
        self._snap: dict[str, _Snapshot] = {}
        self._verifier: SourceVerifier | None = None
        self._throttle = Throttle(100)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._initial_done = threading.Event()
        self._ctx: GuardContext | None = None
        self.rechecks = 0

    def start(self, ctx: GuardContext) -> None:
        """Snapshot the targets; verify them against the source (in the background)."""
        self._ctx = ctx
        self._throttle = Throttle(int(ctx.settings["repeat_every"]))
        opt_cls = type(ctx.optimizer)
        extra = [
            f"{opt_cls.__module__}.{opt_cls.__qualname__}.step",
            f"{opt_cls.__module__}.{opt_cls.__qualname__}.zero_grad",
        ]
        self.targets = list(
            dict.fromkeys(
                [*default_targets(), *extra, *ctx.settings.get("patch_extra_targets", ())]
            )
        )
        for name in self.targets:
            found, obj = resolve(name)
            if found:
                self._snap[name] = _Snapshot(
                    obj, getattr(getattr(obj, "__func__", obj), "__code__", None), _cells(obj)
                )
        self._verifier = SourceVerifier()
        self._check_instance(ctx)
        seconds = float(ctx.settings["patch_check_seconds"])
        if seconds > 0:
            self._thread = threading.Thread(
                target=self._loop, args=(seconds,), name="trainguard-patchcheck", daemon=True
            )
            self._thread.start()
        else:
            self._initial_verify(ctx)

    def _initial_verify(self, ctx: GuardContext) -> None:
        verifier = self._verifier
        if verifier is None:
            return
        try:
            for name, snap in list(self._snap.items()):
                found = verifier.problem(snap.obj)
                if found is not None:
                    self._report(ctx, name, found[0], found[1], when="before the guard attached")
        finally:
            self._initial_done.set()

    def _loop(self, seconds: float) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        self._initial_verify(ctx)
        reported = False
        while not self._stop.wait(seconds):
            try:
                self.recheck(ctx)
            except Exception as exc:  # the background re-check must never die silently
                _logger.exception("patch re-check failed")
                if not reported:
                    reported = True
                    ctx.report(check_failed(ctx, self.name, "the background re-check", exc))

    def close(self, ctx: GuardContext) -> None:
        """Finish the initial verification, run a last re-check, stop the thread."""
        if self._thread is not None:
            self._initial_done.wait(timeout=60.0)
        self._stop.set()
        self.recheck(ctx)
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing before the step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Re-check identities every ``patch_check_every`` steps."""
        if ctx.step % int(ctx.settings["patch_check_every"]) == 0:
            self.recheck(ctx)

    def recheck(self, ctx: GuardContext) -> None:
        """Compare every target with its snapshot; verify and report what changed."""
        with self._lock:
            self.rechecks += 1
            self._check_instance(ctx)
            for name, snap in self._snap.items():
                found, obj = resolve(name)
                func = getattr(obj, "__func__", obj)
                if (
                    found
                    and obj is snap.obj
                    and getattr(func, "__code__", None) is snap.code
                    and _cells(obj) == snap.cells
                ):
                    continue
                if not found:
                    self._report(ctx, name, "removed", None, when="after the guard attached")
                    continue
                verifier = self._verifier
                found_problem = verifier.problem(obj) if verifier is not None else None
                reason = found_problem[0] if found_problem else "replaced by another object"
                self._report(
                    ctx,
                    name,
                    reason,
                    found_problem[1] if found_problem else obj,
                    when="after the guard attached",
                )

    def _check_instance(self, ctx: GuardContext) -> None:
        """An optimizer instance attribute shadowing ``step`` / ``zero_grad``.

        Two instance attributes are legitimate: the optimizer's own bound method
        stored back on it, and accelerate's GradScaler wrapper around that bound
        method (:func:`known_instance_wrapper`); anything else is reported.
        """
        inst = getattr(ctx.optimizer, "__dict__", {})
        for attr in ("step", "zero_grad"):
            if attr in inst and not known_instance_wrapper(ctx.optimizer, attr, inst[attr]):
                name = f"optimizer instance .{attr}"
                self._report(
                    ctx,
                    name,
                    "instance attribute shadows the class method",
                    inst[attr],
                    when="on the watched optimizer",
                )

    def _report(self, ctx: GuardContext, target: str, reason: str, obj: Any, *, when: str) -> None:
        info = code_location(obj) if obj is not None else {}
        location = format_location(info) if info else None
        try:
            source_file = inspect.getsourcefile(obj) if obj is not None else None
        except TypeError:
            source_file = None
        # One report per replacement: the same object reached under two names
        # (torch.optim.SGD.step and torch.optim.sgd.SGD.step) is one tampering.
        if not self._throttle.allow(("code.tampered", location or target, reason), ctx.step):
            return
        ctx.report(
            make_finding(
                ctx,
                "code.tampered",
                f"{target} was tampered with {when}: {reason}"
                + (
                    f" (replacement defined at {location}, module {info.get('module')})."
                    if location
                    else "."
                ),
                location=location,
                evidence={
                    "target": target,
                    "reason": reason,
                    "replacement": {**info, "source_file": source_file},
                    "when": when,
                },
            )
        )
