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

from trainguard.core.record import FrozenRecord

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
_TIB = 1024 * _GIB


_COUNTS = (
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
)


class Limits(FrozenRecord):
    """Caps on the work one scan may do; the constructor rejects nonsense values.

    - ``max_file_size``: largest file the scanner opens at all.
    - ``max_header_bytes``: largest format header read into memory (safetensors JSON,
      npy header, zip directory).
    - ``max_pickle_opcodes``: opcodes one pickle may execute before the machine gives up.
    - ``max_stack_depth``: entries on the pickle machine's value stack (marks included).
    - ``max_memo_entries``: distinct memo slots one pickle may fill.
    - ``max_string_bytes``: largest single text argument (line or length-prefixed
      string) decoded into memory; bigger byte blobs are kept as lazy references and
      never copied.
    - ``max_long_bytes``: largest LONG1/LONG4/LONG argument turned into an int (real
      pickles use a few bytes).
    - ``max_nesting_depth``: deepest container nesting the scanner hashes or walks
      (deeper tuples crash CPython's hash with a C stack overflow, so the check comes
      before hashing); at least 16.
    - ``max_pickles_per_stream``: pickles read back to back from one stream (legacy
      torch files stack five).
    - ``max_archive_depth``: nested archives (zip in zip, tar in gz) followed before
      giving up.
    - ``max_archive_entries``: members one archive may list.
    - ``max_decompression_ratio``: largest uncompressed/compressed size ratio accepted
      for one member.
    - ``max_member_size``: largest uncompressed size of one archive member.
    - ``time_budget_s``: wall-clock seconds one file's scan may take before a timeout
      finding is reported.
    """

    __slots__ = (*_COUNTS, "time_budget_s")
    max_file_size: int
    max_header_bytes: int
    max_pickle_opcodes: int
    max_stack_depth: int
    max_memo_entries: int
    max_string_bytes: int
    max_long_bytes: int
    max_nesting_depth: int
    max_pickles_per_stream: int
    max_archive_depth: int
    max_archive_entries: int
    max_decompression_ratio: int
    max_member_size: int
    time_budget_s: float

    def __init__(
        self,
        max_file_size: int = 4 * _TIB,
        max_header_bytes: int = 100 * _MIB,
        max_pickle_opcodes: int = 50_000_000,
        max_stack_depth: int = 5_000_000,
        max_memo_entries: int = 5_000_000,
        max_string_bytes: int = 256 * _MIB,
        max_long_bytes: int = 64 * _KIB,
        max_nesting_depth: int = 10_000,
        max_pickles_per_stream: int = 10_000,
        max_archive_depth: int = 5,
        max_archive_entries: int = 1_000_000,
        max_decompression_ratio: int = 200,
        max_member_size: int = 1 * _TIB,
        time_budget_s: float = 300.0,
    ) -> None:
        """Set and validate every limit (a zero or negative limit would disable it)."""
        values = locals()
        _set = object.__setattr__
        for name in _COUNTS:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
            _set(self, name, value)
        if (
            isinstance(time_budget_s, bool)
            or not isinstance(time_budget_s, (int, float))
            or not time_budget_s > 0
        ):
            raise ValueError(
                f"Limits.time_budget_s must be a positive number, got {time_budget_s!r}"
            )
        _set(self, "time_budget_s", time_budget_s)
        if max_nesting_depth < 16:
            raise ValueError("Limits.max_nesting_depth must be at least 16 (real data nests)")


DEFAULT_LIMITS = Limits()
"""The limits every scan uses unless the caller passes its own."""
