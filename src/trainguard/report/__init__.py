"""Self-contained HTML report of a guarded run, drawn from its (verified) ledger.

``trainguard report RUN_DIR -o report.html``; see docs/report.md. The page has no
external resources (inline CSS, SVG plots drawn here, a little inline script for
filtering), escapes every string from the ledger, and shows whether the ledger
verified. This package does not import torch.
"""

from __future__ import annotations

from trainguard.report.build import Report, build_report, default_ledger_url

__all__ = ["Report", "build_report", "default_ledger_url"]
