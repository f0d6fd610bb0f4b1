"""Robust statistics for the guard's thresholds: median, MAD, rolling bands.

Why robust: a training run has outliers of its own (first steps, checkpoint saves,
garbage collection, an evaluation pass). Mean and standard deviation are dragged by
exactly the events we want to detect; the median and the median absolute deviation
(MAD) are not, until half the window is corrupt. ``1.4826 * MAD`` estimates the
standard deviation of normal data, so ``z = (x - median) / (1.4826 * MAD)`` reads
like an ordinary z-score. Every band has a *floor* on its scale, because a perfectly
regular series (MAD 0) must not turn a 1 % wobble into an infinite z.

Warm-up: a band answers "no opinion" (``None``) until it has ``warmup`` values, so
that the first steps of a run (compilation, allocator growth) never fire.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

MAD_TO_SIGMA = 1.4826
"""Scale factor from MAD to the standard deviation of a normal distribution."""


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (NaN for an empty input); non-finite values are dropped."""
    data = sorted(v for v in values if math.isfinite(v))
    n = len(data)
    if n == 0:
        return math.nan
    mid = n // 2
    if n % 2:
        return data[mid]
    return 0.5 * (data[mid - 1] + data[mid])


def mad(values: Sequence[float], center: float | None = None) -> float:
    """Median absolute deviation from ``center`` (default: the median)."""
    c = median(values) if center is None else center
    return median(abs(v - c) for v in values)


def robust_z(x: float, values: Sequence[float], *, floor: float = 0.0) -> float:
    """Robust z-score of ``x`` against ``values`` with a lower bound on the scale."""
    c = median(values)
    scale = max(MAD_TO_SIGMA * mad(values, c), floor)
    if not math.isfinite(c) or scale <= 0.0:
        return 0.0 if x == c else math.inf
    return (x - c) / scale


class RollingBand:
    """A warm-up aware rolling window with a robust band.

    ``z(x)`` compares ``x`` with the window *before* it is added, so an anomaly is
    judged against clean history; :meth:`add` decides separately whether the value
    enters the history (callers keep anomalies out so that a sustained attack does
    not become the new normal).
    """

    def __init__(
        self, window: int, warmup: int, *, rel_floor: float = 0.05, abs_floor: float = 0.0
    ):
        """Create a band.

        Args:
            window: values kept (oldest dropped first).
            warmup: values needed before :meth:`z` gives an opinion.
            rel_floor: the scale is at least ``rel_floor * |median|``.
            abs_floor: the scale is at least this absolute value.
        """
        self._values: deque[float] = deque(maxlen=window)
        self.warmup = warmup
        self.rel_floor = rel_floor
        self.abs_floor = abs_floor

    def __len__(self) -> int:
        """Number of values in the window."""
        return len(self._values)

    @property
    def ready(self) -> bool:
        """True once the warm-up is over."""
        return len(self._values) >= self.warmup

    def add(self, x: float) -> None:
        """Add a (finite) value to the history."""
        if math.isfinite(x):
            self._values.append(x)

    def center(self) -> float:
        """Median of the window (NaN when empty)."""
        return median(self._values)

    def scale(self) -> float:
        """Robust sigma of the window, floored."""
        c = self.center()
        if not math.isfinite(c):
            return math.nan
        return max(
            MAD_TO_SIGMA * mad(list(self._values), c), self.rel_floor * abs(c), self.abs_floor
        )

    def z(self, x: float) -> float | None:
        """Robust z of ``x`` against the window, or None during warm-up."""
        if not self.ready:
            return None
        c = self.center()
        s = self.scale()
        if not math.isfinite(x):
            return math.inf
        if s <= 0.0 or not math.isfinite(s):
            return 0.0 if x == c else math.inf
        return (x - c) / s

    def snapshot(self) -> dict[str, float]:
        """Center and scale, for finding evidence."""
        return {"median": self.center(), "sigma": self.scale(), "n": float(len(self._values))}


class Throttle:
    """Reports the same finding key at most once per ``every`` steps (no floods)."""

    def __init__(self, every: int):
        """Create a throttle with a repeat interval in steps."""
        self.every = every
        self._last: dict[tuple[object, ...], int] = {}
        self.suppressed: dict[tuple[object, ...], int] = {}

    def allow(self, key: tuple[object, ...], step: int) -> bool:
        """True when ``key`` was not reported in the last ``every`` steps."""
        last = self._last.get(key)
        if last is not None and step - last < self.every:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._last[key] = step
        return True
