"""Host persistence: baseline and check of login and persistence points.

The login backdoor of the incident (an SSH key, a cron job, a PAM hook that
re-launched the attacks) lives outside Python. ``host`` records every such point
of a host, or of a mounted image under ``--root``, into a signable baseline and
reports what appeared (``host.new_entry``), changed (``host.changed_entry``) or
disappeared (``host.removed_entry``), naming the key or line and the file owner.
"""

from __future__ import annotations

from pathlib import Path

from trainguard.core.findings import Finding
from trainguard.host.baseline import (
    BASELINE_FORMAT,
    Baseline,
    build_baseline,
    load_baseline,
    sign_baseline,
)
from trainguard.host.check import compare
from trainguard.host.collect import HostEntry, collect_entries, owner_names, with_owner_names
from trainguard.host.points import Point

__all__ = [
    "BASELINE_FORMAT",
    "Baseline",
    "HostEntry",
    "Point",
    "build_baseline",
    "check_host",
    "collect_entries",
    "compare",
    "load_baseline",
    "sign_baseline",
]


def check_host(
    baseline: Baseline, root: Path | None = None, setuid_paths: tuple[str, ...] | None = None
) -> list[Finding]:
    """Collect the host now (same root and setuid paths as the baseline unless given) and
    compare it with ``baseline``."""
    where = root if root is not None else Path(baseline.root)
    paths = setuid_paths if setuid_paths is not None else baseline.setuid_paths
    current = with_owner_names(collect_entries(where, paths), owner_names(where))
    return compare(baseline.entries, current)
