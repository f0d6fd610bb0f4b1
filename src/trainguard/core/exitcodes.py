"""Exit codes every command shares (DESIGN.md, "Contracts")."""

from typing import Final

EXIT_OK: Final = 0
"""Ran; nothing at or above the failure threshold."""
EXIT_FINDINGS: Final = 1
"""Findings at or above the threshold: unsafe, tampered or anomalous."""
EXIT_USAGE: Final = 2
"""Usage or input error: missing path, bad key, unreadable ledger. Never 'clean'."""
