"""Reduce a long series to a bounded number of points without hiding what matters.

Plain decimation would drop exactly the spikes a saboteur causes, so each bucket
keeps its minimum and maximum, every point at a step the findings name is kept, and
every non-finite value (a NaN loss, an infinite gradient norm) is kept, up to a cap.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Final

MAX_POINTS: Final = 2000
"""Points per plotted series (the page stays small and renders fast)."""


def downsample(
    points: Sequence[tuple[float, float]],
    max_points: int = MAX_POINTS,
    keep_x: Collection[float] = (),
) -> list[tuple[float, float]]:
    """At most ``max_points`` of ``points`` (order kept), extremes and anomalies first.

    Args:
        points: ``(x, y)`` pairs in drawing order.
        max_points: the bound; at least 4.
        keep_x: x values (anomalous steps) whose points are kept when the bound allows.
    """
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    n = len(points)
    if n <= max_points:
        return list(points)
    wanted = set(keep_x)
    special = [i for i, (x, y) in enumerate(points) if x in wanted or not math.isfinite(y)][
        : max_points // 4
    ]
    kept = set(special)
    buckets = max(1, (max_points - len(kept)) // 2)
    size = n / buckets
    for b in range(buckets):
        lo, hi = int(b * size), min(n, int((b + 1) * size))
        finite = [i for i in range(lo, hi) if math.isfinite(points[i][1])]
        if not finite:
            continue
        kept.add(min(finite, key=lambda i: points[i][1]))
        kept.add(max(finite, key=lambda i: points[i][1]))
    return [points[i] for i in sorted(kept)[:max_points]]
