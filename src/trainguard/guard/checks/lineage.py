"""``step.rollback`` and ``weights.tampered``: checkpoint lineage of a run.

``guard.save_checkpoint(obj, path)``:

1. ``torch.save`` to a temporary file in the same directory, then an atomic rename;
2. a signed manifest (trainguard.manifest, Ed25519) next to it (``PATH.tgsig.json``)
   carrying the run id and the *global* step (``step=`` or the step of the checkpoint
   this process resumed from plus the steps it ran);
3. a ``checkpoint.save`` ledger event with the path, step, file digest and key id
   (mirrored to ``run_dir/checkpoints.jsonl``).

The per-run key is generated on first save in ``run_dir/keys/checkpoint.key`` (mode
0600) with its ``.pub``. The insider can read files of the job's user, so the key
alone proves little: the ledger entry is the anchor (a checkpoint signed with the
stolen key but never recorded by the guard is still ``weights.tampered``).

``guard.load_checkpoint(path)``:

1. verify the signature and every byte against the manifest
   (:func:`trainguard.manifest.verify_path`); a missing key, a missing or bad
   signature, or changed bytes is ``weights.tampered`` (the message names the
   checkpoint file and each changed tensor with what changed) and the load is
   refused (:class:`~trainguard.core.errors.UnsafeFileError`);
2. the file digest must be one the ledger recorded for this run directory, else
   ``weights.tampered``;
3. the checkpoint's step must not be older than the newest step recorded in the
   ledger, else ``step.rollback`` (reported; ``lineage.on_rollback="raise"`` refuses);
4. read the bytes once, scan them (trainguard.scan, default-deny allowlist) and
   ``torch.load(weights_only=True)`` those same bytes.

Limit: the bytes are read twice (verify, then load); a writer racing the loader
between the two reads is not excluded (the scanner still refuses code).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from trainguard.core.errors import GuardError, InputError, UnsafeFileError
from trainguard.core.findings import Finding
from trainguard.core.keys import SigningKey, generate_key, load_signing_key, write_keypair
from trainguard.guard.base import GuardContext
from trainguard.guard.checks.ledger_view import recorded
from trainguard.guard.findingutil import make_finding

_logger = logging.getLogger(__name__)

KEY_NAME = "checkpoint.key"
"""File name of the per-run signing key under ``run_dir/keys``."""


def run_key(run_dir: Path, *, create: bool) -> SigningKey | None:
    """The run's checkpoint signing key; created (0600) on first use when ``create``."""
    key_path = run_dir / "keys" / KEY_NAME
    if key_path.exists():
        return load_signing_key(key_path)
    if not create:
        return None
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_keypair(generate_key(), key_path)
    except (InputError, FileExistsError):  # another rank made it first
        pass
    return load_signing_key(key_path)


class LineageMonitor:
    """Signed, ledger-recorded checkpoints; verified, rollback-checked resumes."""

    name = "lineage"

    def __init__(self) -> None:
        """Create an idle monitor."""
        self.base_step = 0
        self.saved: list[dict[str, Any]] = []
        self.loaded: list[dict[str, Any]] = []
        self.on_rollback = "report"

    def start(self, ctx: GuardContext) -> None:
        """Read the settings."""
        self.on_rollback = str(ctx.settings.get("lineage.on_rollback", "report"))
        if self.on_rollback not in ("report", "raise"):
            raise GuardError("guard setting lineage.on_rollback must be report or raise")

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing per step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Nothing per step."""

    def close(self, ctx: GuardContext) -> None:
        """Nothing to release."""

    def global_step(self, ctx: GuardContext) -> int:
        """Step of the resumed checkpoint plus the steps this process ran."""
        return self.base_step + ctx.step

    # ----------------------------------------------------------------- saving
    def save_checkpoint(
        self, ctx: GuardContext, obj: Any, path: str | os.PathLike[str], *, step: int | None = None
    ) -> Path:
        """Save, sign and record a checkpoint; returns its path (see the module docstring)."""
        import torch

        from trainguard.manifest import sign_path

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        at = int(step) if step is not None else self.global_step(ctx)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(obj, handle)
            Path(tmp_name).replace(target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        key = run_key(ctx.run_dir, create=True)
        assert key is not None
        sig_path, manifest = sign_path(target, key, step=at, run=ctx.run_id, workers=1)
        digest = _file_digest(manifest)
        record = {
            "path": str(target.resolve()),
            "step": at,
            "digest": digest,
            "algorithm": manifest.algorithm,
            "signature": str(sig_path),
            "key_id": key.key_id,
            "rank": ctx.rank,
            "run": ctx.run_id,
        }
        ctx.sink.record("checkpoint.save", record)
        flush = getattr(ctx.sink, "flush", None)
        if callable(flush):
            flush()
        _append_mirror(ctx.run_dir / "checkpoints.jsonl", record)
        self.saved.append(record)
        return target

    # ---------------------------------------------------------------- loading
    def load_checkpoint(
        self,
        ctx: GuardContext,
        path: str | os.PathLike[str],
        *,
        map_location: Any = None,
        allow: tuple[str, ...] = (),
    ) -> Any:
        """Verify, rollback-check and safely load a checkpoint (see the module docstring).

        Raises:
            UnsafeFileError: the checkpoint does not verify, was never recorded by this
                run, or the scanner refuses it.
            GuardError: a rollback with ``lineage.on_rollback="raise"``.
        """
        from trainguard.manifest import verify_path

        target = Path(path)
        key = run_key(ctx.run_dir, create=False)
        if key is None:
            self._tampered(
                ctx,
                target,
                f"{target}: this run directory has no checkpoint key "
                f"({ctx.run_dir / 'keys' / KEY_NAME}); the checkpoint cannot be verified",
                {"reason": "no run key"},
            )
        assert key is not None
        try:
            result = verify_path(target, key.public, workers=1)
        except InputError as exc:
            self._tampered(ctx, target, f"{target}: cannot verify: {exc}", {"reason": str(exc)})
        if not result.ok or result.signed is None:
            for finding in result.findings:
                self._report_external(ctx, finding, target)
            raise UnsafeFileError(
                f"{target}: checkpoint does not verify against its signed manifest "
                f"({len(result.findings)} finding(s)); refusing to load it"
            )
        manifest = result.signed
        digest = _file_digest(manifest)
        step = manifest.step if manifest.step is not None else -1
        history, source = self._history(ctx)
        if history is not None:
            digests = {h.get("digest") for h in history}
            if digest not in digests:
                self._tampered(
                    ctx,
                    target,
                    f"{target}: signed with this run's key but never recorded by the guard "
                    f"of this run directory ({source}); someone else signed it",
                    {"digest": digest, "step": step, "source": source},
                )
            newest = max((int(h.get("step", -1)) for h in history), default=-1)
            if step < newest:
                newest_path = next(
                    (h.get("path") for h in reversed(history) if int(h.get("step", -1)) == newest),
                    None,
                )
                ctx.report(
                    make_finding(
                        ctx,
                        "step.rollback",
                        f"Rank {ctx.rank} resumes from {target} at step {step}, older than "
                        f"the newest recorded checkpoint (step {newest}, {newest_path}).",
                        evidence={
                            "checkpoint": str(target),
                            "checkpoint_step": step,
                            "newest_step": newest,
                            "newest_path": newest_path,
                            "source": source,
                        },
                    )
                )
                if self.on_rollback == "raise":
                    raise GuardError(
                        f"{target}: step {step} is older than the newest checkpoint "
                        f"(step {newest}); resume from {newest_path}"
                    )
        obj = _scan_and_load(target, map_location, allow)
        self.base_step = max(step, 0)
        record = {"path": str(target.resolve()), "step": step, "digest": digest, "rank": ctx.rank}
        ctx.sink.record("checkpoint.load", record)
        self.loaded.append(record)
        return obj

    def _history(self, ctx: GuardContext) -> tuple[list[dict[str, Any]] | None, str]:
        events = recorded(ctx, "checkpoint.save")
        if events is not None:
            return [e["payload"] for e in events], "ledger"
        mirror = ctx.run_dir / "checkpoints.jsonl"
        if not mirror.exists():
            return None, "none"
        rows = []
        for line in mirror.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows, "mirror file"

    def _tampered(
        self, ctx: GuardContext, target: Path, message: str, evidence: dict[str, Any]
    ) -> None:
        finding = make_finding(ctx, "weights.tampered", message, evidence=evidence)
        ctx.report(finding.replace(path=str(target)))
        raise UnsafeFileError(message + "; refusing to load it")

    def _report_external(self, ctx: GuardContext, finding: Finding, target: Path) -> None:
        ours = make_finding(
            ctx,
            finding.rule,
            f"Rank {ctx.rank}: {_describe_verify_finding(finding, target)}",
            severity=finding.severity,
            evidence={**finding.evidence, "checkpoint": str(target)},
        )
        ctx.report(ours.replace(path=finding.path or str(target)))


def _describe_verify_finding(finding: Finding, target: Path) -> str:
    """A sentence naming the checkpoint file and what in it changed.

    The manifest verifier describes a change relative to the signed model (``.`` for a
    single-file checkpoint: ``".: 1 tensor: w (data)"``), which means nothing in a
    training log; here the file is named in full and each tensor with what changed.
    """
    ev = finding.evidence
    where = finding.path or str(target)
    change = ev.get("change")
    if change in ("added", "removed"):
        return f"checkpoint file {where} was {change} after signing."
    if change != "changed":
        return f"checkpoint {where}: {finding.message}"
    parts: list[str] = []
    size = (ev.get("signed_size"), ev.get("size"))
    if None not in size and size[0] != size[1]:
        parts.append(f"its size changed from {size[0]} to {size[1]} bytes")
    tensors = [t for t in ev.get("tensors", ()) if isinstance(t, dict)]
    if tensors:
        shown = "; ".join(_describe_tensor(t) for t in tensors[:10])
        more = f"; and {len(tensors) - 10} more" if len(tensors) > 10 else ""
        parts.append(("tensor " if len(tensors) == 1 else "tensors ") + shown + more)
    regions = [str(r) for r in ev.get("regions", ())]
    if regions:
        parts.append("non-tensor bytes changed in " + ", ".join(regions[:10]))
    if not parts:
        parts.append("its bytes differ")
    return f"checkpoint {where} does not match its signed manifest: " + "; ".join(parts) + "."


def _describe_tensor(tensor: dict[str, Any]) -> str:
    """``'w': data changed (3 of 6 elements differ)`` or ``'w' was removed``."""
    name = tensor.get("name")
    kind = tensor.get("change")
    if kind != "changed":
        return f"{name!r} was {kind}"
    fields = ", ".join(str(f) for f in tensor.get("fields", ())) or "bytes"
    counted = tensor.get("differing_elements")
    detail = (
        f" ({counted} of {tensor.get('total_elements')} elements differ)"
        if counted is not None
        else ""
    )
    return f"{name!r}: {fields} changed{detail}"


def _scan_and_load(target: Path, map_location: Any, allow: tuple[str, ...]) -> Any:
    """Scan the file's bytes, then ``torch.load(weights_only=True)`` the same bytes."""
    import io

    import torch

    from trainguard.core.findings import Verdict
    from trainguard.scan import scan_bytes
    from trainguard.scan.policy import Policy

    try:
        data = target.read_bytes()
    except OSError as exc:
        raise InputError(f"{target}: cannot read: {exc.strerror}") from exc
    report = scan_bytes(data, name=str(target), policy=Policy.default(extra_allow=allow))
    if report.verdict is not Verdict.SAFE:
        reasons = "; ".join(f.message for f in report.findings[:3])
        raise UnsafeFileError(f"{target}: refused, scanner verdict is {report.verdict}: {reasons}")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def _file_digest(manifest: Any) -> str:
    entries = list(manifest.files.values())
    if len(entries) != 1:
        raise GuardError("a guard checkpoint is a single file; its manifest lists several")
    return str(entries[0].digest)


def _append_mirror(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError:
        _logger.exception("cannot write %s", path)
