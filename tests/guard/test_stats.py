"""Robust statistics behind every threshold of the guard."""

from __future__ import annotations

import math

from trainguard.guard.stats import RollingBand, Throttle, mad, median, robust_z


def test_median_and_mad_ignore_outliers() -> None:
    values = [1.0, 1.1, 0.9, 1.0, 50.0]
    assert median(values) == 1.0
    assert mad(values) == 0.1 or math.isclose(mad(values), 0.1)
    assert median([]) != median([])  # NaN for no data


def test_robust_z_uses_floor_for_flat_series() -> None:
    assert robust_z(1.0, [1.0, 1.0, 1.0], floor=0.1) == 0.0
    assert robust_z(2.0, [1.0, 1.0, 1.0], floor=0.1) == 10.0


def test_band_is_silent_during_warmup_then_flags_spike() -> None:
    band = RollingBand(window=50, warmup=5, rel_floor=0.05)
    for v in (10.0, 10.2, 9.8, 10.1):
        assert band.z(100.0) is None
        band.add(v)
    band.add(9.9)
    z = band.z(100.0)
    assert z is not None and z > 50
    normal = band.z(10.3)
    assert normal is not None and abs(normal) < 3


def test_band_ignores_non_finite_history() -> None:
    band = RollingBand(window=10, warmup=1)
    band.add(math.nan)
    assert len(band) == 0
    band.add(1.0)
    assert band.z(math.inf) == math.inf


def test_throttle_repeats_after_interval() -> None:
    throttle = Throttle(every=10)
    assert throttle.allow(("k",), 1)
    assert not throttle.allow(("k",), 5)
    assert throttle.allow(("other",), 5)
    assert throttle.allow(("k",), 11)
