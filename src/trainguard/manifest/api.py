"""One call to sign a model path: build the manifest, sign it, write the signature.

Used by ``trainguard sign`` and by the guard when it saves a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from trainguard.core.errors import InputError, UsageError
from trainguard.core.keys import SigningKey
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.manifest import modelsigning as ms
from trainguard.manifest.build import DEFAULT_BLOCK_SIZE, build_manifest
from trainguard.manifest.schema import Manifest
from trainguard.manifest.sign import (
    default_signature_path,
    sign_manifest,
    signature_relpath,
    write_json_atomic,
)
from trainguard.manifest.verify import reference_manifest


def sign_path(
    path: Path | str,
    key: SigningKey | ec.EllipticCurvePrivateKey,
    *,
    output: Path | str | None = None,
    algorithm: str = "sha256",
    step: int | None = None,
    run: str | None = None,
    parent: Path | str | None = None,
    ignore: Sequence[str] = (),
    workers: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress = NULL_PROGRESS,
) -> tuple[Path, Manifest]:
    """Sign ``path`` and write its signature; returns the signature path and the manifest.

    An Ed25519 :class:`SigningKey` writes a trainguard signature; an ECDSA private key
    writes an OpenSSF model-signing bundle carrying the trainguard manifest.

    Raises:
        InputError: The path or the parent signature cannot be used.
        UsageError: The step does not advance past the parent's step.
    """
    model = Path(path)
    if not model.exists():
        raise InputError(f"{model}: no such file or directory")
    sig_path = Path(output) if output is not None else default_signature_path(model)
    interop = not isinstance(key, SigningKey)
    public = key.public_key() if interop else key.public  # type: ignore[union-attr]
    parent_manifest = None
    if parent is not None:
        parent_manifest = reference_manifest(Path(parent), public)
        if step is not None and parent_manifest.step is not None and step <= parent_manifest.step:
            raise UsageError(
                f"--step {step} does not advance past the parent's step {parent_manifest.step}"
            )
        if run is None:
            run = parent_manifest.run
    sig_rel = signature_relpath(model, sig_path)
    own = [sig_rel] if sig_rel else []
    ignore_list = ms.interop_ignore(sig_rel, ignore) if interop else [*own, *ignore]
    manifest = build_manifest(
        model,
        algorithm=algorithm,
        ignore=ignore_list,
        step=step,
        run=run,
        parent=parent_manifest,
        workers=workers,
        block_size=block_size,
        progress=progress,
    )
    if interop:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        value = ms.sign_model(model, key, manifest, workers=workers, progress=progress)
    else:
        assert isinstance(key, SigningKey)
        value = sign_manifest(manifest, key)
    write_json_atomic(value, sig_path)
    return sig_path, manifest
