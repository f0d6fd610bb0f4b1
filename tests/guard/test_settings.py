"""Guard settings: defaults, overrides, rejection of bad values."""

from __future__ import annotations

import pytest

from trainguard.core.errors import GuardError
from trainguard.guard.settings import GuardSettings


def test_overrides_win_and_are_coerced() -> None:
    s = GuardSettings.build({"exchange_every": "7"}, {"delay_allow": "a.py:1,b.py"})
    assert s.exchange_every == 7
    assert s.delay_allow == ("a.py:1", "b.py")
    assert s.to_dict()["exchange_every"] == 7


def test_unknown_setting_is_an_error_naming_it() -> None:
    with pytest.raises(GuardError, match="exchnage_every"):
        GuardSettings.build(None, {"exchnage_every": 3})


def test_namespaced_settings_go_to_extra() -> None:
    s = GuardSettings.build({"seeds.allow": ["x"]}, {})
    assert s.to_dict()["seeds.allow"] == ["x"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exchange_every", 0),
        ("sample_hz", 0),
        ("delay_fraction", 1.5),
        ("data_parallel", "maybe"),
        ("grad_fingerprint_steps", 0),
        ("grad_norm_every", -1),
    ],
)
def test_nonsense_values_are_rejected(name: str, value: object) -> None:
    with pytest.raises(GuardError, match=name):
        GuardSettings.build(None, {name: value})
