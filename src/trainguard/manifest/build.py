"""Parallel hashing of a model directory into a :class:`~trainguard.manifest.schema.Manifest`.

Every byte is hashed exactly once. Each file is cut into the segments of its layout
(:mod:`trainguard.manifest.tensors`: header, one segment per tensor or zip member),
segments longer than ``block_size`` are split into blocks, and all blocks of all
files go to one thread pool. The files are memory mapped and the pool hashes
``memoryview`` slices: hashlib and blake3 release the GIL on large buffers, so the
pool uses every core without copying (measured in bench/manifest/).

Digests (``H`` is the manifest's algorithm; ``signing_input`` is core.canonical's
domain-separated canonical JSON):

- span: ``H(bytes of the span)``;
- file: the span digest when one span covers the whole file (files up to
  ``block_size`` without inner structure, so ``sha256sum`` agrees), otherwise
  ``H(signing_input("trainguard-file-v1", [[offset, length, digest], ...]))``;
- tensor data: its one span's digest, or ``H(signing_input("trainguard-blocks-v1",
  [digest, ...]))`` over its blocks;
- tensor: ``H(signing_input("trainguard-tensor-v1", {dtype, shape, geometry, data}))``.

Trust assumption: the digest is of the bytes read while hashing. A file rewritten
during hashing gives a digest of neither version (it then fails verification); a
file truncated while mapped raises SIGBUS, which we cannot catch in Python.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Final

from trainguard import __version__
from trainguard.core.canonical import signing_input
from trainguard.core.errors import ManifestError
from trainguard.core.hashing import HASH_ALGORITHMS, new_hasher
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.manifest.schema import Ancestor, FileEntry, Manifest, Span, TensorEntry
from trainguard.manifest.tensors import Decode, Layout, TensorSpec, file_layout, parse_npy_header

_logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE: Final = 64 << 20
"""Longest span hashed as one task: small enough to balance cores, large enough to
keep per-task overhead and manifest size negligible."""

SIGNATURE_NAME: Final = "trainguard.sig.json"
"""Default signature file inside a signed directory (always excluded from it)."""

_MADV_POPULATE_READ: Final = 22
"""Linux >= 5.14: map a range's page-cache pages in one call instead of one fault per page."""


def default_workers() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """A path found while walking the model that is not a regular file."""

    relpath: str
    """POSIX path relative to the model root."""
    kind: str
    """``symlink``, ``fifo``, ``socket``, ``device`` or ``unreadable``."""


def is_ignored(relpath: str, ignore: Iterable[str]) -> bool:
    """True when ``relpath`` is an ignored path or lies under an ignored directory."""
    return any(relpath == item or relpath.startswith(item.rstrip("/") + "/") for item in ignore)


def walk(root: Path, ignore: Sequence[str]) -> tuple[list[tuple[str, Path]], list[TreeEntry]]:
    """Regular files under ``root`` as ``(relpath, path)`` sorted by path, plus odd entries.

    Symlinks are never followed: a link could point outside the model or change
    target after signing. They are returned as odd entries for the caller to refuse.
    A single file is returned as relpath ``.`` (so renaming it keeps the signature).
    """
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise ManifestError(f"{root}: cannot read: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        return [], [TreeEntry(".", "symlink")]
    if stat.S_ISREG(st.st_mode):
        return [(".", root)], []
    if not stat.S_ISDIR(st.st_mode):
        return [], [TreeEntry(".", _kind(st.st_mode))]
    files: list[tuple[str, Path]] = []
    odd: list[TreeEntry] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        odd.append(TreeEntry(_rel(root, where), "unreadable"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            full = base / name
            rel = _rel(root, full)
            if is_ignored(rel, ignore):
                dirnames.remove(name)
            elif full.is_symlink():
                odd.append(TreeEntry(rel, "symlink"))
        for name in filenames:
            full = base / name
            rel = _rel(root, full)
            if is_ignored(rel, ignore):
                continue
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                odd.append(TreeEntry(rel, "unreadable"))
                continue
            if stat.S_ISREG(mode):
                files.append((rel, full))
            else:
                odd.append(TreeEntry(rel, _kind(mode)))
    files.sort(key=lambda item: PurePosixPath(item[0]).parts)
    odd.sort(key=lambda item: item.relpath)
    return files, odd


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


class _Mapped:
    """An open, memory-mapped file (or an empty buffer for empty files)."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        try:
            handle = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - the stack closes it  # noqa: SIM115 - closed by the stack
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
        self.size = os.fstat(handle.fileno()).st_size
        self.map: mmap.mmap | None = None
        if self.size:
            self.map = stack.enter_context(
                mmap.mmap(handle.fileno(), self.size, access=mmap.ACCESS_READ)
            )
            self.view = memoryview(self.map)
            stack.callback(self.view.release)
        else:
            self.view = memoryview(b"")

    def prefetch(self, start: int, length: int) -> None:
        """Map page-cache pages of a range at once (a hint; ignored where unsupported)."""
        if self.map is not None and length:
            try:
                self.map.madvise(_MADV_POPULATE_READ, start, length)
            except (OSError, ValueError):
                pass


def hash_range(mapped: _Mapped, start: int, length: int, algorithm: str) -> str:
    """Digest of ``length`` bytes at ``start``; runs in a pool thread (GIL released)."""
    mapped.prefetch(start, length)
    hasher = new_hasher(algorithm)
    hasher.update(mapped.view[start : start + length])
    return hasher.hexdigest()


def _hash_inflated(mapped: _Mapped, decode: Decode, skip_header: bool, algorithm: str) -> str:
    """Digest of a deflated zip member's array bytes (after its ``.npy`` header)."""
    if decode.method != 8:
        raise ManifestError(f"compression method {decode.method} is not supported")
    inflater = zlib.decompressobj(-15)
    hasher = new_hasher(algorithm)
    raw = mapped.view[decode.start : decode.start + decode.length]
    pending = b""
    header_done = not skip_header
    step = 1 << 20
    for offset in range(0, len(raw), step):
        chunk = inflater.decompress(bytes(raw[offset : offset + step]))
        if not header_done:
            pending += chunk
            try:
                *_, data_offset = parse_npy_header(pending)
            except ValueError:
                if len(pending) > (1 << 20):
                    raise
                continue
            chunk, header_done = pending[data_offset:], True
        hasher.update(chunk)
    hasher.update(inflater.flush())
    return hasher.hexdigest()


def combine(algorithm: str, domain: str, value: object) -> str:
    """``H(signing_input(domain, value))``: digests of structures of digests."""
    hasher = new_hasher(algorithm)
    hasher.update(signing_input(domain, value))
    return hasher.hexdigest()


def file_digest(algorithm: str, spans: Sequence[Span], size: int) -> str:
    """The file digest from its spans (see the module docstring)."""
    if len(spans) == 1 and spans[0].offset == 0 and spans[0].length == size:
        return spans[0].digest
    return combine(algorithm, "trainguard-file-v1", [[s.offset, s.length, s.digest] for s in spans])


def tensor_digest(
    algorithm: str, spec: TensorSpec, data_digest: str, *, dtype: str | None = None
) -> str:
    """Digest over a tensor's dtype, shape, geometry and data digest."""
    return combine(
        algorithm,
        "trainguard-tensor-v1",
        {
            "dtype": dtype or spec.dtype,
            "shape": list(spec.shape),
            "geometry": dict(spec.geometry),
            "data": data_digest,
        },
    )


@dataclass(slots=True)
class _FileJob:
    relpath: str
    mapped: _Mapped
    layout: Layout
    spans: list[tuple[int, int, str]]
    digests: list[str | None]
    inflated: dict[str, str]


def build_manifest(
    path: Path,
    *,
    algorithm: str = "sha256",
    ignore: Sequence[str] = (),
    step: int | None = None,
    run: str | None = None,
    parent: Manifest | None = None,
    workers: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress = NULL_PROGRESS,
    created: str | None = None,
) -> Manifest:
    """Hash ``path`` (a directory or one file) into a manifest.

    Args:
        path: The model directory or file.
        algorithm: ``sha256`` (default) or ``blake3``.
        ignore: Relative paths to leave out (the signature file).
        step: Training step to record.
        run: Run identifier to record.
        parent: The parent checkpoint's manifest, whose digest and ancestry are recorded.
        workers: Threads; defaults to the cores available.
        block_size: Longest span hashed as one task.
        progress: Observer, advanced in bytes.
        created: Fixed creation time (tests); defaults to now.

    Raises:
        ManifestError: The path cannot be read, or holds symlinks or special files.
    """
    manifest, odd = build_with_tree(
        path,
        algorithm=algorithm,
        ignore=ignore,
        step=step,
        run=run,
        parent=parent,
        workers=workers,
        block_size=block_size,
        progress=progress,
        created=created,
    )
    if odd:
        first = odd[0]
        raise ManifestError(
            f"{path}: {first.relpath} is a {first.kind}; replace links and special files by "
            "regular files (or add them to --ignore) before signing"
        )
    return manifest


def build_with_tree(
    path: Path,
    *,
    algorithm: str = "sha256",
    ignore: Sequence[str] = (),
    step: int | None = None,
    run: str | None = None,
    parent: Manifest | None = None,
    workers: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress = NULL_PROGRESS,
    created: str | None = None,
) -> tuple[Manifest, list[TreeEntry]]:
    """:func:`build_manifest` that returns odd tree entries instead of refusing them."""
    if algorithm not in HASH_ALGORITHMS:
        raise ManifestError(f"unknown hash algorithm {algorithm!r}; use sha256 or blake3")
    if block_size < 1:
        raise ManifestError(f"block size must be positive, got {block_size}")
    files, odd = walk(path, ignore)
    jobs: list[_FileJob] = []
    with ExitStack() as stack:
        for relpath, full in files:
            mapped = _Mapped(full, stack)
            layout = file_layout(mapped.view)
            spans = [
                (start, min(block_size, seg.end - start), seg.label)
                for seg in layout.segments
                for start in range(seg.start, max(seg.end, seg.start + 1), block_size)
            ]
            jobs.append(_FileJob(relpath, mapped, layout, spans, [None] * len(spans), {}))
        total = sum(job.mapped.size for job in jobs)
        progress.start(f"hashing {len(jobs)} files", total)
        try:
            _run_pool(jobs, algorithm, workers or default_workers(), progress)
        finally:
            progress.finish()
        entries = {job.relpath: _entry(job, algorithm) for job in jobs}
    ancestors: tuple[Ancestor, ...] = ()
    parent_digest = None
    if parent is not None:
        parent_digest = parent.digest()
        ancestors = (*parent.ancestors, Ancestor(parent.step, parent_digest))
    name = path.resolve().name
    return (
        Manifest(
            name=name,
            algorithm=algorithm,
            block_size=block_size,
            files=entries,
            created=created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            tool=f"trainguard {__version__}",
            ignore=tuple(ignore),
            step=step,
            run=run,
            parent=parent_digest,
            ancestors=ancestors,
        ),
        odd,
    )


def _run_pool(jobs: list[_FileJob], algorithm: str, workers: int, progress: Progress) -> None:
    """Hash every span (and every compressed tensor) of every file on one pool."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tg-hash") as pool:
        futures: dict[Future[str], Callable[[str], int]] = {}
        for job in jobs:
            for index, (start, length, _label) in enumerate(job.spans):
                future = pool.submit(hash_range, job.mapped, start, length, algorithm)
                futures[future] = _span_setter(job, index, length)
            for name, spec in job.layout.tensors.items():
                if spec.decode is not None and spec.note is None:
                    future = pool.submit(
                        _hash_inflated, job.mapped, spec.decode, spec.skip_header, algorithm
                    )
                    futures[future] = _inflated_setter(job, name)
        for future in as_completed(futures):
            try:
                done = futures[future](future.result())
            except (zlib.error, ValueError) as exc:
                raise ManifestError(f"cannot hash a compressed member: {exc}") from exc
            if done:
                progress.advance(done)


def _span_setter(job: _FileJob, index: int, length: int) -> Callable[[str], int]:
    def setter(digest: str) -> int:
        job.digests[index] = digest
        return length

    return setter


def _inflated_setter(job: _FileJob, name: str) -> Callable[[str], int]:
    def setter(digest: str) -> int:
        job.inflated[name] = digest
        return 0

    return setter


def _entry(job: _FileJob, algorithm: str) -> FileEntry:
    spans = tuple(
        Span(start, length, digest, label)
        for (start, length, label), digest in zip(job.spans, job.digests, strict=True)
        if digest is not None
    )
    if len(spans) != len(job.spans):  # pragma: no cover - every future completed or raised
        raise ManifestError(f"{job.relpath}: hashing did not complete")
    by_label: dict[str, list[str]] = {}
    for span in spans:
        by_label.setdefault(span.label, []).append(span.digest)
    tensors: dict[str, TensorEntry] = {}
    for name, spec in job.layout.tensors.items():
        if spec.note is not None:
            tensors[name] = TensorEntry(spec.dtype, spec.shape, None, spec.geometry, spec.note)
            continue
        if spec.decode is not None:
            data = job.inflated[name]
        else:
            parts = [d for label in spec.segments for d in by_label.get(label, [])]
            data = (
                parts[0] if len(parts) == 1 else combine(algorithm, "trainguard-blocks-v1", parts)
            )
        tensors[name] = TensorEntry(
            spec.dtype, spec.shape, tensor_digest(algorithm, spec, data), spec.geometry
        )
    return FileEntry(
        size=job.mapped.size,
        format=job.layout.format,
        digest=file_digest(algorithm, spans, job.mapped.size),
        spans=spans,
        tensors=tensors,
        error=job.layout.error,
    )


def hash_whole_files(
    paths: Sequence[Path],
    *,
    algorithm: str = "sha256",
    workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> list[str]:
    """Plain whole-file digests (``sha256sum`` / model-signing ``files``), files in parallel.

    SHA-256 is sequential within a file, so parallelism is across files; BLAKE3 is
    a tree hash and uses all cores inside each file instead.
    """
    if algorithm not in HASH_ALGORITHMS:
        raise ManifestError(f"unknown hash algorithm {algorithm!r}")
    threads = workers or default_workers()
    step = DEFAULT_BLOCK_SIZE

    def one(path: Path) -> str:
        with ExitStack() as stack:
            mapped = _Mapped(path, stack)
            hasher = new_hasher(algorithm, threads=-1 if algorithm == "blake3" else 1)
            for start in range(0, mapped.size, step):
                length = min(step, mapped.size - start)
                mapped.prefetch(start, length)
                hasher.update(mapped.view[start : start + length])
                progress.advance(length)
            return hasher.hexdigest()

    pool_size = 1 if algorithm == "blake3" else threads
    progress.start(f"hashing {len(paths)} files", None)
    try:
        with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="tg-file") as pool:
            return list(pool.map(one, paths))
    finally:
        progress.finish()
