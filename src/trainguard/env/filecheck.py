"""The per-file work of ``env verify``: hash against RECORD, compare bytecode.

Runs in worker processes (hashing releases the GIL, :func:`compile` does not), so
tasks and outcomes are plain picklable named tuples and this module imports
nothing heavy. A ``.py`` source is read once: the same bytes are hashed against
RECORD and then compiled to check its ``.pyc`` files, so nobody can swap the file
between the two steps.
"""

from __future__ import annotations

import os
import stat
from typing import Final, NamedTuple

from trainguard.core.hashing import CHUNK, sha256_bytes, sha256_file
from trainguard.env.pyc import PycStatus, compare_pyc, optimization_level

MAX_SOURCE_BYTES: Final = 64 * 1024 * 1024
"""Largest ``.py`` read whole to check its bytecode; bigger sources skip the pyc check."""

MAX_PYC_BYTES: Final = 256 * 1024 * 1024
"""Largest ``.pyc`` read for comparison; bigger is reported malformed."""


class FileTask(NamedTuple):
    """One RECORD file to verify, with the bytecode files that claim to be its code."""

    slot: int
    """Position in the caller's task list."""
    path: str
    """Absolute path of the file."""
    algorithm: str | None
    """Hash algorithm from RECORD (None: the row has no hash)."""
    expected_hex: str | None
    """Digest from RECORD, hex."""
    expected_size: int | None
    """Size from RECORD."""
    pycs: tuple[str, ...]
    """Bytecode files of this source to compare (empty unless it is a ``.py``)."""


class PycOutcome(NamedTuple):
    """The comparison of one pyc with its source."""

    path: str
    """The pyc."""
    status: str
    """A :class:`~trainguard.env.pyc.PycStatus` value, or ``unreadable``/``skipped``."""
    detail: str
    """Why."""
    pyc_filename: str | None
    """``co_filename`` found in the pyc when it differed from ours."""
    uid: int | None
    """Owner of the pyc."""
    mtime: float | None
    """Modification time of the pyc."""


class FileOutcome(NamedTuple):
    """What verifying one :class:`FileTask` found."""

    slot: int
    """Position of the task."""
    state: str
    """``ok``, ``missing``, ``changed``, ``not_regular``, ``unreadable``, ``nohash``,
    ``unsupported``."""
    detail: str
    """Why, for the message."""
    actual_hex: str | None
    """SHA-256 of the file as read now."""
    actual_size: int | None
    """Size now."""
    uid: int | None
    """Owner uid now."""
    mtime: float | None
    """Modification time now."""
    pycs: tuple[PycOutcome, ...]
    """Bytecode comparisons."""
    bytes_read: int
    """Bytes read (for progress)."""


def _read_bounded(path: str, limit: int) -> bytes | None:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def _check_pycs(
    task: FileTask, source: bytes, st: os.stat_result
) -> tuple[tuple[PycOutcome, ...], int]:
    outcomes: list[PycOutcome] = []
    read = 0
    for pyc_path in task.pycs:
        try:
            pst = os.stat(pyc_path)  # noqa: PTH116 - str paths in the hot loop
            data = _read_bounded(pyc_path, MAX_PYC_BYTES)
        except FileNotFoundError:
            # Removed since the directory walk (an interpreter rewriting it): nothing to load.
            continue
        except OSError as exc:
            outcomes.append(
                PycOutcome(pyc_path, "unreadable", exc.strerror or str(exc), None, None, None)
            )
            continue
        if data is None:
            outcomes.append(
                PycOutcome(
                    pyc_path,
                    PycStatus.MALFORMED.value,
                    f"larger than {MAX_PYC_BYTES} bytes",
                    None,
                    pst.st_uid,
                    pst.st_mtime,
                )
            )
            continue
        read += len(data)
        result = compare_pyc(
            data,
            source,
            task.path,
            source_mtime=int(st.st_mtime),
            source_size=st.st_size,
            optimize=optimization_level(pyc_path.rsplit(os.sep, 1)[-1]),
        )
        outcomes.append(
            PycOutcome(
                pyc_path,
                result.status.value,
                result.detail,
                result.pyc_filename,
                pst.st_uid,
                pst.st_mtime,
            )
        )
    return tuple(outcomes), read


def check_file(task: FileTask) -> FileOutcome:
    """Verify one file; never raises for anything the file system or content does."""
    try:
        st = os.stat(task.path)  # noqa: PTH116 - str paths in the hot loop
    except FileNotFoundError:
        return FileOutcome(task.slot, "missing", "file is missing", None, None, None, None, (), 0)
    except OSError as exc:
        return FileOutcome(
            task.slot, "unreadable", exc.strerror or str(exc), None, None, None, None, (), 0
        )
    if not stat.S_ISREG(st.st_mode):
        return FileOutcome(
            task.slot,
            "not_regular",
            "not a regular file",
            None,
            None,
            st.st_uid,
            st.st_mtime,
            (),
            0,
        )
    pyc_outcomes: tuple[PycOutcome, ...] = ()
    extra = 0
    try:
        if st.st_size < CHUNK or (task.pycs and st.st_size <= MAX_SOURCE_BYTES):
            data = _read_bounded(task.path, max(st.st_size, CHUNK) * 2)
            if data is None:
                raise OSError(0, "file grew while being read")
            actual_hex = sha256_bytes(data)
            size = len(data)
            matches = _matches(task, actual_hex, size)
            if task.pycs:
                if matches:
                    pyc_outcomes, extra = _check_pycs(task, data, st)
                else:
                    pyc_outcomes = tuple(
                        PycOutcome(
                            p, "skipped", "source not verified against RECORD", None, None, None
                        )
                        for p in task.pycs
                    )
        else:
            actual_hex = sha256_file_bounded(task.path)
            size = st.st_size
            matches = _matches(task, actual_hex, size)
    except OSError as exc:
        return FileOutcome(
            task.slot,
            "unreadable",
            exc.strerror or str(exc),
            None,
            None,
            st.st_uid,
            st.st_mtime,
            (),
            0,
        )
    if task.algorithm is None:
        state, detail = "nohash", "RECORD gives no hash for this file"
    elif task.algorithm != "sha256":
        state, detail = "unsupported", f"RECORD uses {task.algorithm}; only sha256 is verified"
    elif matches:
        state, detail = "ok", ""
    elif task.expected_size is not None and size != task.expected_size:
        state, detail = "changed", f"size {size} != {task.expected_size} in RECORD"
    else:
        state, detail = "changed", "sha256 differs from RECORD"
    return FileOutcome(
        task.slot,
        state,
        detail,
        actual_hex,
        size,
        st.st_uid,
        st.st_mtime,
        pyc_outcomes,
        size + extra,
    )


def sha256_file_bounded(path: str) -> str:
    """Streaming SHA-256 of a large file (core.hashing, 1 MiB reads)."""
    from pathlib import Path

    return sha256_file(Path(path))


def _matches(task: FileTask, actual_hex: str, size: int) -> bool:
    if task.algorithm != "sha256" or task.expected_hex is None:
        return False
    if task.expected_size is not None and size != task.expected_size:
        return False
    return actual_hex == task.expected_hex


def check_chunk(tasks: list[FileTask]) -> list[FileOutcome]:
    """Verify a batch of files (the unit of work sent to a worker process)."""
    return [check_file(task) for task in tasks]
