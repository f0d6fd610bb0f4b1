"""Downsampling keeps extremes, anomalies and non-finite values, within the bound."""

from __future__ import annotations

import math

import pytest

from trainguard.report.downsample import downsample
from trainguard.report.svg import tick_label, ticks


def test_short_series_unchanged() -> None:
    points = [(float(i), float(i % 3)) for i in range(100)]
    assert downsample(points, 200) == points


def test_bound_extremes_and_anomalies_kept() -> None:
    points = [(float(i), math.sin(i / 50)) for i in range(100_000)]
    points[61_234] = (61_234.0, 1e9)
    points[70_000] = (70_000.0, -1e9)
    points[12_345] = (12_345.0, math.nan)
    reduced = downsample(points, 2000, keep_x={33_333.0})
    assert len(reduced) <= 2000
    xs = [x for x, _ in reduced]
    assert xs == sorted(xs)
    for x in (61_234.0, 70_000.0, 12_345.0, 33_333.0):
        assert x in xs
    assert max(y for _, y in reduced if math.isfinite(y)) == 1e9


def test_bad_bound_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        downsample([(0.0, 0.0)] * 10, 3)


def test_tick_labels_distinguish_close_ticks() -> None:
    values = ticks(0.1, 0.102)
    labels = [tick_label(v, values) for v in values]
    assert len(set(labels)) == len(labels) and labels[1] == "0.1005"
