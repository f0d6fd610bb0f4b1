"""Installed distributions and their RECORD files (PEP 376 / PEP 627 / wheel spec).

A RECORD row is ``path,algorithm=urlsafe-b64-digest-without-padding,size``. pip never
checks it (pypa/pip #4705), so we do. The RECORD itself lives in the same writable
site-packages as the files it lists: an insider who edits ``torch/optim/adamw.py``
can rewrite its RECORD line too. That is why ``env snapshot`` keeps a signed copy
of the digests outside the environment and ``env diff`` compares against it.

Parsing here never raises on hostile content: a malformed row becomes a
:class:`RecordProblem` that the verifier reports as a finding (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import csv
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Final

_logger = logging.getLogger(__name__)

MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
"""Largest RECORD we read (torch's is ~1.5 MB); bigger is reported, not parsed."""

MAX_METADATA_BYTES: Final = 16 * 1024 * 1024
"""Largest METADATA we read for the name and version."""

_NORMALIZE = re.compile(r"[-_.]+")


def normalize_name(name: str) -> str:
    """PEP 503 normalised distribution name (``Foo_Bar`` -> ``foo-bar``)."""
    return _NORMALIZE.sub("-", name).lower()


@dataclass(frozen=True, slots=True)
class RecordEntry:
    """One row of a RECORD file."""

    path: str
    """The path as written, relative to the site directory (``..`` for scripts)."""
    algorithm: str | None
    """Hash algorithm named in the row, or None when the row has no hash."""
    digest_hex: str | None
    """Expected digest as lowercase hex (decoded from RECORD's urlsafe base64)."""
    size: int | None
    """Expected size in bytes, or None when the row gives none."""


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """A RECORD row we could not use; reported as a finding, never skipped silently."""

    line: int
    """1-based row number."""
    reason: str
    """What is wrong with it."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """An installed distribution found through its ``*.dist-info`` directory."""

    name: str
    """Project name from METADATA (falls back to the directory name)."""
    version: str
    """Version from METADATA (falls back to the directory name)."""
    site_dir: Path
    """The sys.path directory holding the ``.dist-info``."""
    dist_info: Path
    """The ``NAME-VERSION.dist-info`` directory."""
    installer: str | None
    """Content of INSTALLER (``pip``, ``uv``), when present."""

    @property
    def key(self) -> str:
        """Normalised name, used for ``--dist`` filters and snapshots."""
        return normalize_name(self.name)

    @property
    def record_path(self) -> Path:
        """The RECORD file of this distribution."""
        return self.dist_info / "RECORD"


def decode_record_digest(value: str) -> str:
    """Urlsafe base64 without padding (RECORD's encoding) to lowercase hex.

    Raises:
        ValueError: The value is not valid base64.
    """
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"digest {value[:20]!r} is not urlsafe base64") from exc
    return raw.hex()


def encode_record_digest(digest_hex: str) -> str:
    """Lowercase hex to RECORD's urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(bytes.fromhex(digest_hex)).rstrip(b"=").decode("ascii")


_DIGEST_BYTES: Final = {"sha256": 32, "sha384": 48, "sha512": 64}


def parse_record(text: str) -> tuple[list[RecordEntry], list[RecordProblem]]:
    """Rows of a RECORD file, and the rows that could not be understood.

    Args:
        text: The RECORD content (CSV, UTF-8).

    Returns:
        The usable entries and the problems; a row with a problem is not in entries.
    """
    entries: list[RecordEntry] = []
    problems: list[RecordProblem] = []
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        return [], [RecordProblem(0, f"not valid CSV: {exc}")]
    for number, row in enumerate(rows, start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != 3:
            problems.append(RecordProblem(number, f"expected 3 fields, found {len(row)}"))
            continue
        path, hash_field, size_field = row
        if not path or "\x00" in path:
            problems.append(RecordProblem(number, "empty or NUL path"))
            continue
        algorithm: str | None = None
        digest_hex: str | None = None
        if hash_field:
            algorithm, sep, encoded = hash_field.partition("=")
            if not sep or not encoded:
                problems.append(RecordProblem(number, f"{path}: malformed hash {hash_field!r}"))
                continue
            algorithm = algorithm.lower()
            try:
                digest_hex = decode_record_digest(encoded)
            except ValueError as exc:
                problems.append(RecordProblem(number, f"{path}: {exc}"))
                continue
            expected_len = _DIGEST_BYTES.get(algorithm)
            if expected_len is not None and len(digest_hex) != 2 * expected_len:
                problems.append(
                    RecordProblem(number, f"{path}: {algorithm} digest has wrong length")
                )
                continue
        size: int | None = None
        if size_field:
            if not size_field.isdigit():
                problems.append(
                    RecordProblem(number, f"{path}: size {size_field!r} is not a number")
                )
                continue
            size = int(size_field)
        entries.append(RecordEntry(path, algorithm, digest_hex, size))
    return entries, problems


def record_abspath(site_dir: Path, entry_path: str) -> Path:
    """Where a RECORD path points: relative to the site directory, normalised."""
    # normpath, not resolve(): RECORD's ``..`` must not follow symlinks out of the venv.
    if posixpath.isabs(entry_path):
        return Path(os.path.normpath(entry_path))
    return Path(os.path.normpath(f"{site_dir}{os.sep}{entry_path}"))


def top_level_name(entry_path: str) -> str | None:
    """First component of a RECORD path inside the site directory, or None outside it."""
    norm = posixpath.normpath(entry_path.replace("\\", "/"))
    if norm.startswith("../") or norm == ".." or posixpath.isabs(norm):
        return None
    return norm.split("/", 1)[0]


def _read_small(path: Path, limit: int) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    return data.decode("utf-8", errors="replace")


def _name_version(dist_info: Path) -> tuple[str, str]:
    stem = dist_info.name[: -len(".dist-info")]
    fallback_name, _, fallback_version = stem.partition("-")
    metadata = _read_small(dist_info / "METADATA", MAX_METADATA_BYTES)
    if metadata is None:
        return fallback_name, fallback_version
    # Only the header block matters; the body (long description) can be huge.
    header_text = metadata.split("\n\n", 1)[0]
    headers = HeaderParser().parsestr(header_text)
    name = headers.get("Name") or fallback_name
    version = headers.get("Version") or fallback_version
    return str(name).strip(), str(version).strip()


def find_distributions(site_dirs: Iterable[Path]) -> Iterator[Distribution]:
    """Every ``*.dist-info`` directory directly inside the given directories."""
    seen: set[Path] = set()
    for site_dir in site_dirs:
        try:
            names = sorted(os.listdir(site_dir))  # noqa: PTH208 - names, not paths
        except OSError:
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            dist_info = site_dir / name
            if dist_info in seen or not dist_info.is_dir():
                continue
            seen.add(dist_info)
            dist_name, version = _name_version(dist_info)
            installer_text = _read_small(dist_info / "INSTALLER", 4096)
            installer = installer_text.strip() if installer_text else None
            yield Distribution(dist_name, version, site_dir, dist_info, installer)


def select_distributions(
    dists: Sequence[Distribution], wanted: Sequence[str] | None
) -> list[Distribution]:
    """Distributions whose normalised name is in ``wanted`` (all when None or empty).

    Raises:
        KeyError: A wanted name matches no installed distribution (names the first).
    """
    if not wanted:
        return list(dists)
    keys = {normalize_name(name) for name in wanted}
    chosen = [dist for dist in dists if dist.key in keys]
    found = {dist.key for dist in chosen}
    for key in sorted(keys):
        if key not in found:
            raise KeyError(key)
    return chosen


def read_record(dist: Distribution) -> tuple[list[RecordEntry], list[RecordProblem]] | None:
    """Parse a distribution's RECORD; None when there is none or it cannot be read.

    Oversized and undecodable RECORDs come back as one problem, so that the caller
    reports them instead of treating the distribution as verified.
    """
    try:
        with open(dist.record_path, "rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return [], [RecordProblem(0, f"cannot read RECORD: {exc.strerror}")]
    if len(data) > MAX_RECORD_BYTES:
        return [], [RecordProblem(0, f"RECORD larger than {MAX_RECORD_BYTES} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [RecordProblem(0, f"RECORD is not UTF-8 (byte {exc.start})")]
    return parse_record(text)
