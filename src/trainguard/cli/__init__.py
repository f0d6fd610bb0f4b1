"""The ``trainguard`` command: a thin layer over the library, and the only code that prints.

:func:`main` owns the single catch-all: a :class:`TrainguardError` becomes one line
on stderr and exit code 2; any other exception becomes "internal error" and exit
code 2 as well, so that a crash is never mistaken for "findings" (exit 1). ``-v``
re-raises so the traceback shows.
"""

from __future__ import annotations

import os
import sys

from trainguard.core.errors import TrainguardError
from trainguard.core.exitcodes import EXIT_USAGE


def _configure_logging(verbosity: int) -> None:
    import logging

    level_name = os.environ.get("TRAINGUARD_LOGLEVEL", "WARNING").upper()
    level = logging.DEBUG if verbosity else getattr(logging, level_name, logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("trainguard: %(levelname)s: %(name)s: %(message)s"))
    package_logger = logging.getLogger("trainguard")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(level)
    package_logger.propagate = False
    if verbosity >= 2:
        logging.getLogger().setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (0 clean, 1 findings, 2 error)."""
    from trainguard.cli.app import build_parser

    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    verbosity: int = getattr(args, "verbose", 0) or 0
    if verbosity or not getattr(args, "lean_startup", False) or "TRAINGUARD_LOGLEVEL" in os.environ:
        # A command that sets lean_startup (scan: start-up is part of its cost per file)
        # keeps Python's last-resort handler, which still prints warnings to stderr.
        _configure_logging(verbosity)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args))
    except TrainguardError as exc:
        if verbosity:
            raise
        print(f"trainguard: error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trainguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed by a pager or `head`; nothing left to say.
        return EXIT_USAGE
    except Exception as exc:
        if verbosity:
            raise
        print(
            f"trainguard: internal error: {type(exc).__name__}: {exc}; rerun with -v",
            file=sys.stderr,
        )
        return EXIT_USAGE
