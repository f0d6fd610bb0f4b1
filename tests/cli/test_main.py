"""The CLI contract every command shares: exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainguard import __version__
from trainguard.cli import main


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: trainguard" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert "commands" in proc.stdout


def test_command_listing_matches_the_package() -> None:
    """The start-up listing (no pkgutil) finds exactly the command modules pkgutil would."""
    import pkgutil

    import trainguard.cli.commands as commands
    from trainguard.cli.app import _command_modules

    expected = sorted(
        m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")
    )
    assert _command_modules(commands.__path__) == expected
    assert {"scan", "run", "drill", "report"} <= set(expected)
