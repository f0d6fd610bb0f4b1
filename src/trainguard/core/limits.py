"""Resource limits for parsing untrusted files, in one validated object.

Every parser of attacker-controlled bytes (the pickle machine, the zip and tar
readers, the safetensors header reader) takes a :class:`Limits` explicitly, with
:data:`DEFAULT_LIMITS` as the module-level default. A breach becomes a finding
(``*.limit_exceeded``) with verdict ``error``: a file we could not finish scanning
is never passed as clean. The values are generous for real checkpoints (a data.pkl
of a 70B-parameter model has a few hundred thousand opcodes) and small enough that
a hostile file cannot exhaust memory or time.
"""

from __future__ import annotations

from dataclasses import dataclass

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
_TIB = 1024 * _GIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on the work one scan may do; ``__post_init__`` rejects nonsense values."""

    max_file_size: int = 4 * _TIB
    """Largest file the scanner opens at all."""
    max_header_bytes: int = 100 * _MIB
    """Largest format header read into memory (safetensors JSON, npy header, zip directory)."""
    max_pickle_opcodes: int = 50_000_000
    """Opcodes one pickle may execute before the machine gives up."""
    max_stack_depth: int = 5_000_000
    """Entries on the pickle machine's value stack (marks included)."""
    max_memo_entries: int = 5_000_000
    """Distinct memo slots one pickle may fill."""
    max_string_bytes: int = 256 * _MIB
    """Largest single text argument (line or length-prefixed string) decoded into memory;
    bigger byte blobs are kept as lazy references and never copied."""
    max_long_bytes: int = 64 * _KIB
    """Largest LONG1/LONG4/LONG argument turned into an int (real pickles use a few bytes)."""
    max_nesting_depth: int = 10_000
    """Deepest container nesting the scanner hashes or walks (deeper tuples crash CPython's
    hash with a C stack overflow, so the check comes before hashing)."""
    max_pickles_per_stream: int = 10_000
    """Pickles read back to back from one stream (legacy torch files stack five)."""
    max_archive_depth: int = 5
    """Nested archives (zip in zip, tar in gz) followed before giving up."""
    max_archive_entries: int = 1_000_000
    """Members one archive may list."""
    max_decompression_ratio: int = 200
    """Largest uncompressed/compressed size ratio accepted for one member."""
    max_member_size: int = 1 * _TIB
    """Largest uncompressed size of one archive member."""
    time_budget_s: float = 300.0
    """Wall-clock seconds one file's scan may take before a timeout finding is reported."""

    def __post_init__(self) -> None:
        """Reject values that would disable a limit or make every scan fail."""
        for name in (
            "max_file_size",
            "max_header_bytes",
            "max_pickle_opcodes",
            "max_stack_depth",
            "max_memo_entries",
            "max_string_bytes",
            "max_long_bytes",
            "max_nesting_depth",
            "max_pickles_per_stream",
            "max_archive_depth",
            "max_archive_entries",
            "max_decompression_ratio",
            "max_member_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        budget = self.time_budget_s
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ValueError(f"Limits.time_budget_s must be a positive number, got {budget!r}")
        if self.max_nesting_depth < 16:
            raise ValueError("Limits.max_nesting_depth must be at least 16 (real data nests)")


DEFAULT_LIMITS = Limits()
"""The limits every scan uses unless the caller passes its own."""
