"""``safe_load``: scan, then load the same bytes with torch's restricted unpickler.

Order of operations (each step raises, none returns a bool to forget):

1. Read the file once; everything after works on that buffer, so a file swapped
   between scan and load cannot slip through.
2. Scan the buffer with trainguard's own pickle machine and policy. Only a ``safe``
   verdict proceeds (``allow`` names turn specific unknown globals into safe ones;
   nothing turns a dangerous global into a safe one).
3. Refuse TorchScript archives (CVE-2025-32434: torch used to ignore
   ``weights_only`` for them) and validate every tensor view against its storage.
4. Check that ``torch.load`` and the weights-only unpickler are torch's own code,
   not a run-time replacement, then load with ``weights_only=True`` given
   explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot override it).
"""

from __future__ import annotations

import importlib
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, UnsafeFileError
from trainguard.core.findings import FileReport, Verdict
from trainguard.load.geometry import check_geometry

TORCH_FORMATS = frozenset({"torch-zip", "torch-legacy", "torch-legacy-tar"})
"""Scanner formats that torch.load understands."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory; safe_load takes one file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc


def scan_buffer(data: bytes, path: Path, allow: Iterable[str]) -> FileReport:
    """Scan ``data`` with the default policy extended by ``allow``."""
    from trainguard.scan import scan_bytes
    from trainguard.scan.policy import Policy

    return scan_bytes(data, name=str(path), policy=Policy.default(extra_allow=tuple(allow)))


def _refuse_unless_safe(report: FileReport, path: Path) -> None:
    if report.verdict is Verdict.SAFE:
        return
    worst = next(
        (f for f in report.findings if f.severity.value in ("critical", "high")),
        report.findings[0] if report.findings else None,
    )
    detail = f": {worst.message}" if worst is not None else ""
    hint = (
        "; if you trust these classes, pass them by name with allow=[...]"
        if report.verdict is Verdict.UNKNOWN
        else ""
    )
    raise UnsafeFileError(f"{path}: refused, scanner verdict is {report.verdict}{detail}{hint}")


def _zip_layout(data: bytes, path: Path) -> tuple[str, dict[str, int], bytes]:
    """Archive prefix, storage key -> byte size, and the data.pkl bytes of a torch zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise UnsafeFileError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if any(n.startswith(prefix + "code/") or n == prefix + "constants.pkl" for n in names):
            raise UnsafeFileError(
                f"{path}: is a TorchScript archive; safe_load refuses TorchScript "
                "(it carries code). Load it with torch.jit.load only if you trust its origin."
            )
        storage_dir = prefix + "data/"
        sizes = {
            info.filename[len(storage_dir) :]: info.file_size
            for info in archive.infolist()
            if info.filename.startswith(storage_dir)
        }
        return prefix, sizes, archive.read(pickles[0])


def _check_torch_zip(data: bytes, path: Path) -> None:
    from trainguard.scan.picklevm import analyze_pickle, torch_tensor_refs

    _, sizes, pickle_bytes = _zip_layout(data, path)
    result = analyze_pickle(pickle_bytes, member="data.pkl")
    if not result.complete:
        raise UnsafeFileError(f"{path}: data.pkl cannot be followed to its end")
    check_geometry(torch_tensor_refs(result.root), sizes, path=str(path))


def _resolve_allowed(allow: Iterable[str]) -> list[Any]:
    """Objects for names the caller explicitly trusts (imported only because they asked)."""
    objects: list[Any] = []
    for dotted in allow:
        module_name, _, attr = dotted.rpartition(".")
        if not module_name:
            raise InputError(f"allow: {dotted!r} is not a MODULE.NAME")
        try:
            value: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                value = getattr(value, part)
        except (ImportError, AttributeError) as exc:
            raise InputError(f"allow: cannot resolve {dotted!r}: {exc}") from exc
        objects.append(value)
    return objects


def _check_torch_is_pristine(torch: Any) -> None:
    """Refuse to load when torch.load or its restricted unpickler were replaced at run time."""
    torch_dir = Path(torch.__file__).resolve().parent
    candidates = {
        "torch.load": torch.load,
        "torch.serialization.load": torch.serialization.load,
        "torch._weights_only_unpickler.Unpickler.load": (
            torch._weights_only_unpickler.Unpickler.load
        ),
        "torch._weights_only_unpickler.load": torch._weights_only_unpickler.load,
    }
    for name, func in candidates.items():
        code = getattr(func, "__code__", None)
        filename = Path(code.co_filename).resolve() if code is not None else None
        if filename is None or torch_dir not in filename.parents:
            raise UnsafeFileError(
                f"{name} has been replaced at run time (now {func!r}); refusing to load. "
                "Run `trainguard env verify` and look for monkeypatching code."
            )
    if torch.load is not torch.serialization.load:
        raise UnsafeFileError("torch.load is not torch.serialization.load; refusing to load")


def _torch_load(data: bytes, map_location: Any, allow: Iterable[str]) -> Any:
    import torch

    _check_torch_is_pristine(torch)
    allowed = _resolve_allowed(allow)
    buffer = io.BytesIO(data)
    with torch.serialization.safe_globals(allowed):
        return torch.load(buffer, map_location=map_location, weights_only=True, mmap=False)


def _safetensors_load(data: bytes, map_location: Any) -> dict[str, Any]:
    from safetensors.torch import load as load_safetensors

    tensors: dict[str, Any] = load_safetensors(data)
    if map_location is not None:
        tensors = {name: t.to(map_location) for name, t in tensors.items()}
    return tensors


def _numpy_load(data: bytes) -> Any:
    import numpy as np

    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


def safe_load(
    path: str | Path,
    map_location: Any = None,
    allow: Iterable[str] = (),
) -> Any:
    """Load a checkpoint only if trainguard's scanner passes it.

    Args:
        path: a PyTorch (zip or legacy), safetensors or numpy (.npy/.npz) file.
        map_location: as for ``torch.load``; for safetensors, a device to move to.
        allow: ``module.name`` globals the caller trusts beyond the default
            allowlist. Known-dangerous callables can never be allowed.

    Returns:
        What ``torch.load(weights_only=True)`` returns for torch files; a dict of
        tensors for safetensors; an array or dict of arrays for numpy files.

    Raises:
        UnsafeFileError: the scanner did not pass the file, the file is TorchScript,
            a tensor view leaves its storage, or torch's loader was tampered with.
        InputError: the file cannot be read or ``allow`` names cannot be resolved.
    """
    file_path = Path(path)
    allow = tuple(allow)
    data = _read(file_path)
    report = scan_buffer(data, file_path, allow)
    _refuse_unless_safe(report, file_path)
    fmt = report.format
    if fmt == "torch-zip":
        _check_torch_zip(data, file_path)
        return _torch_load(data, map_location, allow)
    if fmt in TORCH_FORMATS:
        return _torch_load(data, map_location, allow)
    if fmt == "safetensors":
        return _safetensors_load(data, map_location)
    if fmt in ("numpy-npy", "numpy-npz"):
        return _numpy_load(data)
    raise UnsafeFileError(f"{file_path}: format {fmt!r} is not loadable by safe_load")
