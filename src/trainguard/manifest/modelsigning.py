"""Interoperability with OpenSSF Model Signing (PyPI ``model-signing`` 1.x, "key" method).

We write what ``model_signing.verifying.Config().use_elliptic_key_verifier(...)``
accepts, and verify what ``model_signing.signing.Config().use_elliptic_key_signer``
writes. Matched against model-signing 1.1.1:

- a Sigstore bundle (``mediaType application/vnd.dev.sigstore.bundle.v0.3+json``)
  whose ``verificationMaterial.publicKey.hint`` is the hex SHA-256 of the PEM public
  key and ``tlogEntries`` is empty;
- a DSSE envelope (``payloadType application/vnd.in-toto+json``), signature = ECDSA
  (DER, base64) over the DSSE PAE ``"DSSEv1 <len> <type> <len> " + payload``, with
  SHA-256/384/512 for P-256/384/521 keys;
- an in-toto Statement v1 with one subject (the model name; ``sha256`` over the
  concatenated raw resource digests) and predicate type
  ``https://model_signing/signature/v1.0`` holding ``serialization`` (``files``,
  ``hash_type``, ``allow_symlinks: false``, ``ignore_paths``) and ``resources``
  (``{name, algorithm, digest}`` per file, sorted by path components, plain
  whole-file digests; a single-file model is named ``.``).

Our additions travel in the predicate under ``"trainguard"`` (the whole trainguard
manifest: tensor digests, step, run, lineage). model-signing's v1.0 verifiers ignore
unknown predicate fields, so their verification is unaffected; ours uses the
addition to name changed tensors and to check rollback.

Cost: model-signing needs plain whole-file digests, which SHA-256 cannot compute in
parallel within a file, and our tensor digests need a second pass; signing in this
format therefore reads the data twice. Verification reads it once when nothing
changed (whole-file digests) and a second time only to name what changed.

ECDSA keys are handled here rather than in ``core.keys`` (Ed25519 only by design):
model-signing has no Ed25519 key mode.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trainguard.core.errors import InputError, ManifestError, SignatureError
from trainguard.core.hashing import sha256_bytes
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.manifest.build import (
    _Mapped,
    default_workers,
    hash_range,
    hash_whole_files,
    walk,
)
from trainguard.manifest.diff import FileChange, ManifestDiff
from trainguard.manifest.schema import Manifest

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://model_signing/signature/v1.0"
EXTENSION_KEY: Final = "trainguard"
"""Predicate field that carries the trainguard manifest."""
GIT_PATHS: Final = (".git", ".gitattributes", ".github", ".gitignore")
"""Paths model-signing ignores by default; their verifier re-applies this list."""
CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


# --------------------------------------------------------------------------- keys


def generate_ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA key on a curve model-signing accepts."""
    if curve not in CURVES:
        raise InputError(f"unsupported curve {curve!r}; use one of {', '.join(CURVES)}")
    curve_type: Any = CURVES[curve]
    return ec.generate_private_key(curve_type())


def write_ec_keypair(key: ec.EllipticCurvePrivateKey, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (PKCS#8 PEM, mode 0600) and ``out.pub``; refuse to overwrite."""
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise InputError(f"{path}: already exists; refusing to overwrite a key")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        pub_path.write_bytes(_public_pem(key.public_key()))
    except OSError as exc:
        raise InputError(f"{out}: cannot write key: {exc.strerror}") from exc
    return out, pub_path


def _public_pem(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_curve(public: ec.EllipticCurvePublicKey, source: str) -> None:
    if public.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise InputError(f"{source}: curve {public.curve.name} is not P-256/P-384/P-521")


def load_ec_private(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an ECDSA private key (PEM)."""
    data = _read_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{path}: not an ECDSA key; model-signing needs one (keygen --ecdsa)")
    _check_curve(key.public_key(), str(path))
    return key


def load_ec_public(path: Path) -> ec.EllipticCurvePublicKey:
    """Read an ECDSA public key (PEM); a private key file yields its public half."""
    data = _read_key(path)
    try:
        public: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a PEM public or private key") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise InputError(f"{path}: not an ECDSA public key")
    _check_curve(public, str(path))
    return public


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read key: {exc.strerror}") from exc


def _hash_for(public: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    size = public.curve.key_size
    if size == 256:
        return hashes.SHA256()
    if size == 384:
        return hashes.SHA384()
    return hashes.SHA512()


def key_hint(public: ec.EllipticCurvePublicKey) -> str:
    """model-signing's key hint: hex SHA-256 of the PEM public key."""
    return sha256_bytes(_public_pem(public))


# --------------------------------------------------------------------------- envelope


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding for an in-toto payload."""
    header = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)}"
    return header.encode("utf-8") + b" " + payload


def resource_order(name: str) -> tuple[str, ...]:
    """model-signing sorts resources as ``PurePosixPath`` objects: by path components."""
    return PurePosixPath(name).parts


def statement(
    model_name: str,
    resources: Sequence[tuple[str, str, str]],
    serialization_args: dict[str, Any],
    extension: dict[str, Any] | None,
) -> dict[str, Any]:
    """The in-toto statement for ``(name, algorithm, hexdigest)`` resources."""
    ordered = sorted(resources, key=lambda r: resource_order(r[0]))
    root = sha256_bytes(b"".join(bytes.fromhex(digest) for _, _, digest in ordered))
    predicate: dict[str, Any] = {
        "serialization": serialization_args,
        "resources": [
            {"name": name, "algorithm": algorithm, "digest": digest}
            for name, algorithm, digest in ordered
        ],
    }
    if extension is not None:
        predicate[EXTENSION_KEY] = extension
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign_statement(value: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The Sigstore bundle (JSON value) carrying ``value`` signed with ``key``."""
    payload = json.dumps(value, indent=2, sort_keys=False).encode("utf-8")
    public = key.public_key()
    signature = key.sign(pae(payload), ec.ECDSA(_hash_for(public)))
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(public)}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }


def is_bundle(data: Any) -> bool:
    """True for a JSON value that looks like a Sigstore bundle."""
    return isinstance(data, dict) and "dsseEnvelope" in data and "mediaType" in data


def open_bundle(bundle: Any, public: ec.EllipticCurvePublicKey, source: str) -> dict[str, Any]:
    """Verify the bundle's DSSE signature and return its in-toto statement.

    Raises:
        SignatureError: Wrong media type, key hint, payload type, or a bad signature.
    """
    try:
        # 1. Bundle shape and media type, as model-signing's protobuf verifier checks.
        if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise SignatureError(f"{source}: bundle media type {bundle.get('mediaType')!r}")
        envelope = bundle["dsseEnvelope"]
        hint = (bundle.get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
        # 2. The key hint names the signing key; a mismatch is the wrong key.
        if hint and hint != key_hint(public):
            raise SignatureError(f"{source}: signed by key {hint[:16]}, not by the given key")
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(f"{source}: DSSE payload type {envelope.get('payloadType')!r}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        sig = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
    except (KeyError, IndexError, TypeError, AttributeError, binascii.Error, ValueError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"{source}: malformed Sigstore bundle ({exc})") from exc
    # 3. The ECDSA signature over the DSSE PAE.
    try:
        public.verify(sig, pae(payload), ec.ECDSA(_hash_for(public)))
    except InvalidSignature as exc:
        raise SignatureError(
            f"{source}: signature does not verify; the bundle was altered"
        ) from exc
    # 4. The payload is an in-toto statement of the model-signing predicate.
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise SignatureError(f"{source}: signed payload is not JSON") from exc
    if not isinstance(value, dict) or value.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"{source}: signed payload is not an in-toto Statement v1")
    if value.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{source}: predicate type {value.get('predicateType')!r}")
    return value


# --------------------------------------------------------------------------- model level


@dataclass(frozen=True, slots=True)
class OpenedStatement:
    """A verified statement, decoded."""

    model_name: str
    """Subject name."""
    serialization: dict[str, Any]
    """How the resources were computed."""
    resources: dict[str, tuple[str, str]]
    """Resource name -> (algorithm, hexdigest)."""
    manifest: Manifest | None
    """The trainguard addition, when present."""


def decode_statement(value: dict[str, Any], source: str) -> OpenedStatement:
    """Check the root digest and read resources and our addition.

    Raises:
        SignatureError: Inconsistent or malformed content.
    """
    try:
        subject = value["subject"]
        if len(subject) != 1:
            raise SignatureError(f"{source}: expected one subject")
        predicate = value["predicate"]
        serialization_args = dict(predicate["serialization"])
        resources: dict[str, tuple[str, str]] = {}
        joined = b""
        for item in predicate["resources"]:
            name, algorithm, digest = str(item["name"]), str(item["algorithm"]), item["digest"]
            joined += bytes.fromhex(digest)
            resources[name] = (algorithm, str(digest))
        expected = subject[0]["digest"]["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"{source}: malformed model-signing statement ({exc})") from exc
    if sha256_bytes(joined) != expected:
        raise SignatureError(f"{source}: root digest does not match the listed resources")
    manifest = None
    if EXTENSION_KEY in predicate:
        try:
            manifest = Manifest.from_dict(predicate[EXTENSION_KEY], source=source)
        except ManifestError as exc:
            raise SignatureError(str(exc)) from exc
    return OpenedStatement(str(subject[0]["name"]), serialization_args, resources, manifest)


def interop_ignore(signature_rel: str | None, extra: Sequence[str] = ()) -> list[str]:
    """Ignore list written by model-signing's CLI: the signature, then git paths."""
    items = list(extra)
    if signature_rel is not None:
        items.append(signature_rel)
    return [*items, *GIT_PATHS]


def sign_model(
    path: Path,
    key: ec.EllipticCurvePrivateKey,
    manifest: Manifest,
    *,
    workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """A model-signing bundle for ``path`` carrying ``manifest`` as our addition.

    ``manifest`` must have been built with :func:`interop_ignore` as its ignore list,
    so that its files are exactly the files model-signing hashes.
    """
    files, odd = walk(path, manifest.ignore)
    if odd:
        raise ManifestError(
            f"{path}: {odd[0].relpath} is a {odd[0].kind}; model-signing refuses it"
        )
    names = [rel for rel, _ in files]
    if set(names) != set(manifest.files):
        raise ManifestError(f"{path}: files changed while signing; sign again")
    digests = hash_whole_files(
        [full for _, full in files],
        algorithm=manifest.algorithm,
        workers=workers,
        progress=progress,
    )
    resources = [(n, manifest.algorithm, d) for n, d in zip(names, digests, strict=True)]
    args = {
        "method": "files",
        "hash_type": manifest.algorithm,
        "allow_symlinks": False,
        "ignore_paths": list(manifest.ignore),
    }
    value = statement(manifest.name, resources, args, manifest.to_dict())
    return sign_statement(value, key)


def current_resources(
    path: Path,
    opened: OpenedStatement,
    extra_ignore: Sequence[str],
    *,
    workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Re-hash ``path`` the way the statement's ``serialization`` says.

    Returns the resources found and the odd tree entries (symlinks, special files).

    Raises:
        InputError: A serialization method or hash type we cannot reproduce.
    """
    args = opened.serialization
    method, hash_type = args.get("method"), args.get("hash_type")
    ignore = [*[str(p) for p in args.get("ignore_paths", [])], *GIT_PATHS, *extra_ignore]
    files, odd = walk(path, ignore)
    odd_names = [f"{o.relpath} ({o.kind})" for o in odd]
    if method == "files" and hash_type in ("sha256", "blake3"):
        digests = hash_whole_files(
            [full for _, full in files],
            algorithm=str(hash_type),
            workers=workers,
            progress=progress,
        )
        return (
            {rel: (str(hash_type), d) for (rel, _), d in zip(files, digests, strict=True)},
            odd_names,
        )
    if method == "shards" and hash_type == "sha256":
        return _shard_resources(files, int(args["shard_size"]), workers), odd_names
    raise InputError(
        f"model-signing serialization {method}/{hash_type} is not supported; "
        "use files with sha256 or blake3, or shards with sha256"
    )


def _shard_resources(
    files: Sequence[tuple[str, Path]], shard_size: int, workers: int | None
) -> dict[str, tuple[str, str]]:
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    algorithm = f"sha256-sharded-{shard_size}"
    result: dict[str, tuple[str, str]] = {}
    with ExitStack() as stack, ThreadPoolExecutor(workers or default_workers()) as pool:
        jobs = []
        for rel, full in files:
            mapped = _Mapped(full, stack)
            for start in range(0, mapped.size, shard_size):
                end = min(start + shard_size, mapped.size)
                jobs.append(
                    (
                        f"{rel}:{start}:{end}",
                        pool.submit(hash_range, mapped, start, end - start, "sha256"),
                    )
                )
        for name, future in jobs:
            result[name] = (algorithm, future.result())
    return result


def resource_diff(
    signed: dict[str, tuple[str, str]], found: dict[str, tuple[str, str]]
) -> ManifestDiff:
    """File-level differences between signed and found resources."""
    changes = []
    for name in sorted(set(signed) | set(found), key=resource_order):
        if name not in found:
            changes.append(FileChange(name, "removed"))
        elif name not in signed:
            changes.append(FileChange(name, "added"))
        elif signed[name] != found[name]:
            changes.append(FileChange(name, "changed"))
    return ManifestDiff(tuple(changes))
