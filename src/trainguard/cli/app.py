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
import os
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

    names = _command_modules(commands_pkg.__path__)
    wanted = _command_word(argv)
    if wanted in names:
        parser = _parser([f"{commands_pkg.__name__}.{wanted}"])
        if wanted in _subcommand_names(parser):
            return parser
    return _parser([f"{commands_pkg.__name__}.{name}" for name in names])


def _command_modules(paths: Sequence[str]) -> list[str]:
    """Names of the command modules (``scan.py`` -> ``scan``), sorted.

    A directory listing, not :func:`pkgutil.iter_modules`, which imports :mod:`inspect`
    (5 ms, a tenth of ``trainguard scan``'s start-up).
    """
    names: set[str] = set()
    for path in paths:
        try:
            entries = os.listdir(path)  # noqa: PTH208 - no pathlib on the start-up path
        except OSError:
            continue
        for entry in entries:
            stem, dot, ext = entry.partition(".")
            if dot and ext == "py" and stem.isidentifier() and not stem.startswith("_"):
                names.add(stem)
    return sorted(names)


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
    from trainguard.cli.output import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="trainguard",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser
