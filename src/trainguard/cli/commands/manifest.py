"""``trainguard keygen``, ``sign`` and ``verify``: signed weight manifests.

Exit codes of ``verify``: 0 when the signature is valid and every byte matches
(and, with ``--after``, the checkpoint descends from the reference); 1 with a diff
naming files and tensors otherwise; 2 for a bad key, a missing signature or an
unreadable path.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from trainguard.cli.output import add_format_option, dump_json, render_findings, write_result
from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK

_KEYGEN_EPILOG = """examples:
  trainguard keygen --out signer.key             # Ed25519: signer.key (0600) + signer.key.pub
  trainguard keygen --out ms.key --ecdsa         # ECDSA P-256 for OpenSSF model-signing
  trainguard keygen --out ms.key --ecdsa P-384
"""

_SIGN_EPILOG = """examples:
  trainguard sign ckpt/ --key signer.key --step 1000 --run run-42
      # writes ckpt/trainguard.sig.json (excluded from the manifest)
  trainguard sign ckpt-2000/ --key signer.key --step 2000 --parent ckpt/trainguard.sig.json
  trainguard sign model.pt --key signer.key           # writes model.pt.tgsig.json
  trainguard sign model/ --key ms.key --format model-signing -o model.sig
      # verifiable by `model_signing verify key --public_key ms.key.pub`
  trainguard sign model/ --key signer.key --hash blake3
"""

_VERIFY_EPILOG = """examples:
  trainguard verify ckpt/ --key signer.key.pub
  trainguard verify ckpt/ --key signer.key.pub --format json
  trainguard verify ckpt-2000/ --key signer.key.pub --after ckpt-1000/trainguard.sig.json
  trainguard verify ckpt/ --key signer.key.pub --against /backup/ckpt   # count changed elements
  trainguard verify model/ --key ms.key.pub --sig model.sig   # a model-signing bundle

exit codes: 0 every byte matches; 1 differences (named) or rollback; 2 bad key/missing input
"""


def register(subparsers: Any) -> None:
    """Add ``keygen``, ``sign`` and ``verify``."""
    fmt = argparse.RawDescriptionHelpFormatter
    keygen = subparsers.add_parser(
        "keygen",
        help="create a signing key pair",
        description="Create a private key (mode 0600) and KEY.pub. Ed25519 by default; "
        "--ecdsa for OpenSSF model-signing interoperability.",
        epilog=_KEYGEN_EPILOG,
        formatter_class=fmt,
    )
    keygen.add_argument("--out", required=True, metavar="KEY", help="private key path")
    keygen.add_argument(
        "--ecdsa",
        nargs="?",
        const="P-256",
        choices=["P-256", "P-384", "P-521"],
        default=None,
        help="make an ECDSA key on this curve (default P-256) instead of Ed25519",
    )
    keygen.set_defaults(handler=run_keygen)

    sign = subparsers.add_parser(
        "sign",
        help="hash a model and sign its manifest",
        description="Hash every file (and every tensor) of a model directory or file in "
        "parallel and write a signed manifest.",
        epilog=_SIGN_EPILOG,
        formatter_class=fmt,
    )
    sign.add_argument("path", metavar="PATH", help="model directory or file")
    sign.add_argument("--key", required=True, metavar="KEY", help="private key (keygen)")
    sign.add_argument("--step", type=int, default=None, help="training step of the checkpoint")
    sign.add_argument("--run", default=None, help="run identifier")
    sign.add_argument(
        "--parent", metavar="SIG", default=None, help="signature of the parent checkpoint"
    )
    sign.add_argument(
        "--hash",
        choices=["sha256", "blake3"],
        default=os.environ.get("TRAINGUARD_HASH", "sha256"),
        help="digest algorithm (default: sha256; env TRAINGUARD_HASH)",
    )
    sign.add_argument(
        "--format",
        choices=["trainguard", "model-signing"],
        default=None,
        help="signature format (default: from the key: Ed25519 -> trainguard, "
        "ECDSA -> model-signing)",
    )
    sign.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="RELPATH",
        help="leave a relative path out of the manifest (repeatable)",
    )
    sign.add_argument(
        "-o",
        "--output",
        metavar="SIG",
        default=None,
        help="signature path (default: DIR/trainguard.sig.json or FILE.tgsig.json)",
    )
    sign.add_argument("--workers", type=int, default=None, help="hashing threads (default: cores)")
    sign.add_argument("--no-progress", action="store_true", help="no progress bar")
    sign.set_defaults(handler=run_sign)

    verify = subparsers.add_parser(
        "verify",
        help="verify a model against its signed manifest",
        description="Check the signature and every byte; name changed files and tensors; "
        "with --after, refuse checkpoints older than or not descending from a reference.",
        epilog=_VERIFY_EPILOG,
        formatter_class=fmt,
    )
    verify.add_argument("path", metavar="PATH", help="model directory or file")
    verify.add_argument("--key", required=True, metavar="PUB", help="signer's public key")
    verify.add_argument("--sig", metavar="SIG", default=None, help="signature file")
    verify.add_argument(
        "--after", metavar="SIG", default=None, help="must not be older than / must descend from"
    )
    verify.add_argument(
        "--against",
        metavar="OLD_PATH",
        default=None,
        help="copy of the signed version: count differing elements of changed tensors",
    )
    verify.add_argument(
        "--workers", type=int, default=None, help="hashing threads (default: cores)"
    )
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format_option(verify)
    verify.set_defaults(handler=run_verify)


def run_keygen(args: argparse.Namespace) -> int:
    """Write a key pair."""
    out = Path(args.out)
    if args.ecdsa:
        from trainguard.manifest.modelsigning import generate_ec_key, key_hint, write_ec_keypair

        key = generate_ec_key(args.ecdsa)
        private, public = write_ec_keypair(key, out)
        kid = key_hint(key.public_key())
        kind = f"ECDSA {args.ecdsa}"
    else:
        from trainguard.core.keys import generate_key, write_keypair

        signing = generate_key()
        private, public = write_keypair(signing, out)
        kid = signing.key_id
        kind = "Ed25519"
    write_result(f"wrote {kind} key {private} (private, 0600) and {public}; key id {kid}", None)
    return EXIT_OK


def run_sign(args: argparse.Namespace) -> int:
    """Build, sign and write the manifest."""
    from trainguard.cli.console import make_progress
    from trainguard.core.errors import InputError, UsageError
    from trainguard.core.keys import load_signing_key
    from trainguard.manifest.api import sign_path
    from trainguard.manifest.modelsigning import load_ec_private

    key_path = Path(args.key)
    key: Any
    if args.format == "model-signing":
        key = load_ec_private(key_path)
    elif args.format == "trainguard":
        key = load_signing_key(key_path)
    else:
        try:
            key = load_signing_key(key_path)
        except InputError as exc:
            if "Ed25519" not in str(exc):
                raise
            key = load_ec_private(key_path)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    sig_path, manifest = sign_path(
        Path(args.path),
        key,
        output=args.output,
        algorithm=args.hash,
        step=args.step,
        run=args.run,
        parent=args.parent,
        ignore=args.ignore,
        workers=args.workers,
        progress=make_progress(args.no_progress),
    )
    tensors = sum(len(entry.tensors) for entry in manifest.files.values())
    size = sum(entry.size for entry in manifest.files.values())
    write_result(
        f"signed {args.path}: {len(manifest.files)} files, {tensors} tensors, {size} bytes "
        f"({manifest.algorithm}) -> {sig_path}",
        None,
    )
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Verify and report; exit 1 on any difference."""
    from trainguard.cli.console import make_progress
    from trainguard.core.errors import UsageError
    from trainguard.manifest.verify import verify_path

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    result = verify_path(
        Path(args.path),
        Path(args.key),
        args.sig,
        after=args.after,
        against=args.against,
        workers=args.workers,
        progress=make_progress(args.no_progress),
    )
    command = "trainguard verify " + str(args.path)
    if args.format == "text":
        if result.ok:
            files = result.checked_files
            step = f", step {result.signed.step}" if result.signed and result.signed.step else ""
            text = f"OK: {args.path} matches {result.signature} ({files} files{step})"
        else:
            lines = [f"TAMPERED: {args.path} does not match {result.signature}"]
            lines += [f"  [{f.rule}] {_plain(f.message)}" for f in result.findings]
            text = "\n".join(lines)
        write_result(text, args.output)
    elif args.format == "json":
        write_result(dump_json(result.to_dict()), args.output)
    else:
        write_result(render_findings(result.findings, args.format, command=command), args.output)
    return EXIT_OK if result.ok else EXIT_FINDINGS


def _plain(text: str) -> str:
    """Untrusted names (tensors, files) without terminal control characters."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
