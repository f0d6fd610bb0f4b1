"""``trainguard demo``: write real checkpoints and a backdoored one, scan them, show the result.

The backdoor is harmless by construction: its payload would only create a marker
file inside the demo's own temporary directory. The demo checks that the scanner
caught it, passed the real checkpoints, and that the marker was never written
(the scanner executes nothing). Exit 0 when all of that held, 1 otherwise, 2 when
torch is not installed.
"""

from __future__ import annotations

import argparse
import io
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  trainguard demo
  trainguard demo --keep ./demo-checkpoints   # keep the files to scan them yourself
"""


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="scan real checkpoints and a harmless backdoored one, and show the verdicts",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keep", metavar="DIR", help="write the checkpoints to DIR and keep them")
    parser.set_defaults(handler=run)


def _backdoor_pickle(original: bytes, marker: Path) -> bytes:
    """Insert ``builtins.exec(<write marker>)`` + POP before the real object pickle."""
    code = f"open({str(marker)!r}, 'w').write('the backdoor ran')"
    call = b"cbuiltins\nexec\n" + b"X" + struct.pack("<I", len(code)) + code.encode() + b"\x85R0"
    return original[:2] + call + original[2:]


def _write_checkpoints(directory: Path, marker: Path) -> dict[str, bool]:
    """Write the demo files; map each name to whether it is expected to be caught."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()
    torch.save(model.state_dict(), directory / "model.pt")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": 100,
            "rng": torch.get_rng_state(),
        },
        directory / "training-checkpoint.pt",
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "model.safetensors"),
    )
    np.savez(directory / "features.npz", mean=np.zeros(16), std=np.ones(16))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(directory / "finetuned.pt", "w") as out:
        for info in source.infolist():
            body = source.read(info)
            if info.filename.endswith("/data.pkl"):
                body = _backdoor_pickle(body, marker)
            out.writestr(info.filename, body)
    return {
        "model.pt": False,
        "training-checkpoint.pt": False,
        "model.safetensors": False,
        "features.npz": False,
        "finetuned.pt": True,
    }


def run(args: argparse.Namespace) -> int:
    """Write, scan, verify, show."""
    from trainguard.cli.console import err_console, safe_text
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE

    console = err_console()
    try:
        import torch  # noqa: F401
    except ImportError:
        console.print("trainguard demo needs torch: pip install 'trainguard[torch]'", markup=False)
        return EXIT_USAGE
    from rich.table import Table

    from trainguard.core.findings import Verdict
    from trainguard.scan import scan_path

    with tempfile.TemporaryDirectory(prefix="trainguard-demo-") as tmp:
        directory = Path(args.keep) if args.keep else Path(tmp) / "checkpoints"
        directory.mkdir(parents=True, exist_ok=True)
        marker = Path(tmp) / "BACKDOOR-RAN"
        expected = _write_checkpoints(directory, marker)
        reports = {Path(r.path).name: r for r in scan_path([directory])}
        table = Table(title="trainguard scan of the demo checkpoints", header_style="bold")
        for column in ("file", "format", "verdict", "expected", "why"):
            table.add_column(column)
        ok = True
        for name, caught_expected in expected.items():
            report = reports.get(name)
            if report is None:
                ok = False
                table.add_row(name, "-", "missing", "-", "")
                continue
            caught = report.verdict is not Verdict.SAFE
            good = caught == caught_expected
            ok = ok and good
            why = next(
                (
                    f.global_name or f.rule
                    for f in report.findings
                    if f.severity.value in ("high", "critical")
                ),
                "",
            )
            style = "green" if good else "bold red"
            table.add_row(
                safe_text(name),
                report.format,
                f"[{style}]{report.verdict.value}[/]",
                "caught" if caught_expected else "passed",
                safe_text(why),
            )
        console.print(table)
        ran = marker.exists()
        if ran:
            ok = False
        console.print(
            "backdoor marker file: "
            + (
                "[bold red]WRITTEN: something executed the payload[/]"
                if ran
                else "[green]never written (nothing was executed)[/]"
            )
        )
        if args.keep:
            console.print(f"checkpoints kept in {safe_text(directory)}")
        console.print(
            "[green]demo behaved as expected: backdoor caught, no false alarm[/]"
            if ok
            else "[bold red]demo did NOT behave as expected[/]"
        )
        return EXIT_OK if ok else EXIT_FINDINGS
