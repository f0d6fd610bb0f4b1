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


def build_parser() -> argparse.ArgumentParser:
    """The complete ``trainguard`` parser with all discovered subcommands."""
    import trainguard.cli.commands as commands_pkg

    parser = argparse.ArgumentParser(
        prog="trainguard",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        module.register(subparsers)
    return parser
