"""``trainguard convert IN OUT.safetensors``: scan, safe-load, write safetensors, verify."""

from __future__ import annotations

import argparse

from trainguard.cli.output import dump_json, write_result
from trainguard.core.exitcodes import EXIT_OK

_EPILOG = """examples:
  trainguard convert model.pt model.safetensors
  trainguard convert ckpt.pt ckpt.safetensors --allow mypkg.config.TrainConfig --force

The input is scanned first and loaded with torch's weights-only unpickler; an input
the scanner does not pass is refused (exit 2). Tied tensors are stored once and
their other names recorded as aliases in the metadata ("trainguard.aliases");
non-tensor values are kept as JSON strings ("trainguard.value.<name>"). The output
is reloaded and compared bit for bit before it replaces OUT.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``convert`` command."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint to safetensors through safe_load",
        description="Convert a PyTorch/numpy checkpoint to safetensors, refusing unsafe input.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="IN", help="checkpoint to convert")
    parser.add_argument("output", metavar="OUT", help="safetensors file to write")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="trust this non-allowlisted global (repeatable); dangerous ones stay refused",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--format", choices=["text", "json"], default="text", help="output format (default: text)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Convert and report what was written."""
    from trainguard.load import convert_to_safetensors

    result = convert_to_safetensors(
        args.source, args.output, allow=args.allow, overwrite=args.force
    )
    summary = {
        "output": str(result.output),
        "tensors": result.tensors,
        "aliases": result.aliases,
        "copied_views": list(result.copied_views),
        "values": result.values,
        "verified": True,
    }
    if args.format == "json":
        write_result(dump_json(summary), None)
    else:
        lines = [f"wrote {result.output}: {result.tensors} tensors, verified by reloading"]
        if result.aliases:
            lines.append(f"  {len(result.aliases)} tied names stored as aliases")
        if result.copied_views:
            lines.append(f"  {len(result.copied_views)} views of shared storage copied")
        if result.values:
            lines.append(f"  {result.values} non-tensor values kept in metadata")
        write_result("\n".join(lines), None)
    return EXIT_OK
