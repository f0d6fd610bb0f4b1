"""One exception root whose message is the line a user reads.

The CLI catches :class:`TrainguardError` once, prints :meth:`diagnostics` on one
line and exits with code 2. Parsers wrap foreign exceptions (``raise
ManifestError(f"{path}: ...") from exc``) so that the message names the file,
member or tensor, and says how to fix it where a fix exists.
"""

from __future__ import annotations


class TrainguardError(Exception):
    """Root of every error trainguard raises on purpose."""

    def diagnostics(self) -> str:
        """The single line printed to the user."""
        return str(self) or self.__class__.__name__


class UsageError(TrainguardError):
    """Bad command-line usage or configuration."""


class InputError(TrainguardError):
    """A path, key or file given by the user cannot be used."""


class LimitExceeded(TrainguardError):
    """A resource limit was hit while parsing untrusted input; becomes a finding."""


class ScanInputError(InputError):
    """A path given to the scanner cannot be read."""


class UnsafeFileError(TrainguardError):
    """safe_load refused a file because the scanner did not pass it."""


class ManifestError(TrainguardError):
    """A manifest cannot be built, parsed or matched."""


class SignatureError(TrainguardError):
    """A signature, key or signed envelope does not verify."""


class LedgerError(TrainguardError):
    """The ledger cannot be opened, written or verified."""


class EnvError(TrainguardError):
    """The Python environment or a snapshot of it cannot be read."""


class HostError(TrainguardError):
    """A host baseline cannot be built or read."""


class LintError(TrainguardError):
    """Source code or a diff cannot be read for linting."""


class GuardError(TrainguardError):
    """The training guard cannot attach or cannot reach its peers."""
