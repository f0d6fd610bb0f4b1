"""Parser composition: every module in ``trainguard.cli.commands`` registers itself.

Command modules are discovered, not listed, so that adding a command touches one
file. Each module defines ``register(subparsers) -> None`` and sets
``handler=run`` on its parser(s) via ``set_defaults``; its heavy imports (torch,
the scanner) happen inside ``run`` so that ``trainguard --help`` and ``trainguard
scan`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence

from trainguard import __version__

_DESCRIPTION = (
    "trainguard detects, blocks and documents sabotage and silent corruption of PyTorch "
    "training. Exit codes: 0 clean, 1 findings at or above the threshold, 2 usage or input "
    "error."
)


def common_parent() -> argparse.ArgumentParser:
    """Options every subcommand accepts (so they work after the command name too)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logging; -v shows tracebacks of errors",
    )
    return parent


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``trainguard`` parser with the discovered subcommands.

    When ``argv`` names a command whose module has the same name (``scan``, ``drill``...),
    only that module is imported: start-up is part of the cost of scanning one file, and
    importing every command module would double it. Anything else (``--help``, a command
    registered by a module of another name) gets the complete parser.
    """
    import trainguard.cli.commands as commands_pkg

    names = sorted(
        info.name
        for info in pkgutil.iter_modules(commands_pkg.__path__)
        if not info.name.startswith("_")
    )
    wanted = _command_word(argv)
    if wanted in names:
        parser = _parser([f"{commands_pkg.__name__}.{wanted}"])
        if wanted in _subcommand_names(parser):
            return parser
    return _parser([f"{commands_pkg.__name__}.{name}" for name in names])


def _command_word(argv: Sequence[str] | None) -> str | None:
    """The first word of ``argv`` that is not an option (the command), if any."""
    for word in argv or ():
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def _subcommand_names(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def _parser(modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainguard",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser
