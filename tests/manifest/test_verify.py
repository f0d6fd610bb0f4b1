"""Sign/verify round trips, diffs that name tensors, rollback checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.factories.manifest_models import (
    flip_byte,
    rewrite_safetensors_metadata,
    safetensors_offset,
)
from trainguard.core.errors import InputError, UsageError
from trainguard.core.keys import load_public_key, load_signing_key
from trainguard.manifest import SIGNATURE_NAME, sign_path, verify_path
from trainguard.manifest.tensors import file_layout


def _sign(path: Path, key: Path, **kw: object) -> Path:
    sig, _ = sign_path(path, load_signing_key(key), **kw)  # type: ignore[arg-type]
    return sig


def test_round_trip_is_ok(model_dir: Path, keypair: tuple[Path, Path]) -> None:
    sig = _sign(model_dir, keypair[0], step=10, run="r")
    assert sig == model_dir / SIGNATURE_NAME
    result = verify_path(model_dir, keypair[1])
    assert result.ok and result.findings == () and result.diff.empty
    assert result.signed is not None and result.signed.step == 10
    assert SIGNATURE_NAME in result.signed.ignore


def test_single_file_round_trip_and_rename(model_dir: Path, keypair: tuple[Path, Path]) -> None:
    path = model_dir / "model.safetensors"
    sig = _sign(path, keypair[0])
    assert sig.name == "model.safetensors.tgsig.json"
    moved = model_dir / "renamed.safetensors"
    path.rename(moved)
    assert verify_path(moved, keypair[1], sig).ok


def test_one_byte_in_a_tensor_names_that_tensor(
    model_dir: Path, keypair: tuple[Path, Path]
) -> None:
    _sign(model_dir, keypair[0])
    original = model_dir.parent / "original"
    shutil.copytree(model_dir, original)
    target = model_dir / "model.safetensors"
    flip_byte(target, safetensors_offset(target, "layers.0.weight", 7) + 1)
    result = verify_path(model_dir, keypair[1], against=original)
    assert not result.ok
    [change] = result.diff.files
    assert change.path == "model.safetensors" and change.kind == "changed"
    [tensor] = change.tensors
    assert tensor.name == "layers.0.weight" and tensor.fields == ("data",)
    assert (tensor.differing_elements, tensor.total_elements) == (1, 32 * 32)
    assert change.regions == ()
    [finding] = result.findings
    assert finding.rule == "weights.tampered" and "layers.0.weight" in finding.message


def test_torch_zip_change_names_the_tensor_and_counts_strided_views(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    import torch

    model = tmp_path / "ckpt"
    model.mkdir()
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w": weight, "w_t": weight.t(), "b": torch.ones(3)}, model / "c.pt")
    _sign(model, keypair[0])
    original = tmp_path / "original"
    shutil.copytree(model, original)
    target = model / "c.pt"
    layout = file_layout(memoryview(target.read_bytes()))
    storage_key = layout.tensors["w"].geometry["storage"]
    storage = next(
        s
        for s in layout.segments
        if s.label.startswith("member:") and s.label.endswith(f"/data/{storage_key}")
    )
    flip_byte(target, storage.start + 4 * 6 + 2)  # element 6 of w = w_t[2, 1]
    result = verify_path(model, keypair[1], against=original)
    [change] = result.diff.files
    counted = {t.name: (t.differing_elements, t.total_elements) for t in change.tensors}
    # w and its transposed view share one storage: both are named, b is not.
    assert counted == {"w": (1, 12), "w_t": (1, 12)}
    assert change.regions == ()


def test_added_and_removed_files(model_dir: Path, keypair: tuple[Path, Path]) -> None:
    _sign(model_dir, keypair[0])
    (model_dir / "stats.npz").unlink()
    (model_dir / "extra.bin").write_bytes(b"new")
    result = verify_path(model_dir, keypair[1])
    assert result.diff.to_dict()["added"] == ["extra.bin"]
    assert result.diff.to_dict()["removed"] == ["stats.npz"]
    assert len(result.findings) == 2


def test_changed_metadata_is_a_header_change_not_a_tensor(
    model_dir: Path, keypair: tuple[Path, Path]
) -> None:
    _sign(model_dir, keypair[0])
    rewrite_safetensors_metadata(model_dir / "model.safetensors", {"format": "pt", "x": "evil"})
    result = verify_path(model_dir, keypair[1])
    [change] = result.diff.files
    assert change.tensors == ()
    assert change.regions == ("header",)


def test_wrong_key_fails(
    model_dir: Path, keypair: tuple[Path, Path], other_keypair: tuple[Path, Path]
) -> None:
    _sign(model_dir, keypair[0])
    result = verify_path(model_dir, other_keypair[1])
    assert not result.ok
    [finding] = result.findings
    assert finding.rule == "weights.tampered" and "not by the given key" in finding.message


@pytest.mark.parametrize("field", ["step", "digest", "signature"])
def test_tampered_signature_file_fails(
    model_dir: Path, keypair: tuple[Path, Path], field: str
) -> None:
    sig = _sign(model_dir, keypair[0], step=5)
    data = json.loads(sig.read_text())
    if field == "step":
        data["manifest"]["step"] = 6
    elif field == "digest":
        entry = data["manifest"]["files"]["config.json"]
        entry["sha256"] = "0" * 64
        entry["spans"][0][2] = "0" * 64
    else:
        value = bytearray(__import__("base64").b64decode(data["signature"]["value"]))
        value[0] ^= 1
        data["signature"]["value"] = __import__("base64").b64encode(bytes(value)).decode()
    sig.write_text(json.dumps(data))
    result = verify_path(model_dir, keypair[1])
    assert not result.ok
    assert "signature does not verify" in result.findings[0].message


def test_garbage_signature_is_a_finding_missing_one_an_input_error(
    model_dir: Path, keypair: tuple[Path, Path]
) -> None:
    with pytest.raises(InputError, match="signature not found"):
        verify_path(model_dir, keypair[1])
    (model_dir / SIGNATURE_NAME).write_text("{not json")
    assert not verify_path(model_dir, keypair[1]).ok


def _checkpoint(root: Path, name: str, value: int) -> Path:
    path = root / name
    path.mkdir()
    (path / "weights.bin").write_bytes(bytes([value]) * 64)
    return path


def test_after_accepts_descendant_rejects_older_and_foreign(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    key, pub = keypair
    c1 = _checkpoint(tmp_path, "c1", 1)
    s1 = _sign(c1, key, step=100, run="run-a")
    c2 = _checkpoint(tmp_path, "c2", 2)
    s2 = _sign(c2, key, step=200, parent=s1)
    c3 = _checkpoint(tmp_path, "c3", 3)
    _sign(c3, key, step=300, parent=s2)
    foreign = _checkpoint(tmp_path, "foreign", 9)
    _sign(foreign, key, step=500, run="run-b")

    assert verify_path(c3, pub, after=s1).ok  # grandchild
    assert verify_path(c2, pub, after=s2).ok  # itself

    older = verify_path(c1, pub, after=s2)
    assert not older.ok
    assert {f.rule for f in older.findings} == {"step.rollback"}
    assert any("older than the reference step 200" in f.message for f in older.findings)

    other = verify_path(foreign, pub, after=s1)
    assert [f.rule for f in other.findings] == ["step.rollback"]
    assert "does not descend" in other.findings[0].message


def test_parent_must_advance_step_and_verify(
    tmp_path: Path, keypair: tuple[Path, Path], other_keypair: tuple[Path, Path]
) -> None:
    c1 = _checkpoint(tmp_path, "c1", 1)
    s1 = _sign(c1, keypair[0], step=100)
    c2 = _checkpoint(tmp_path, "c2", 2)
    with pytest.raises(UsageError, match="does not advance"):
        _sign(c2, keypair[0], step=50, parent=s1)
    with pytest.raises(InputError, match="reference signature rejected"):
        _sign(c2, other_keypair[0], step=200, parent=s1)


def test_verify_accepts_key_objects(model_dir: Path, keypair: tuple[Path, Path]) -> None:
    _sign(model_dir, keypair[0], algorithm="blake3")
    result = verify_path(model_dir, load_public_key(keypair[1]))
    assert result.ok and result.signed is not None and result.signed.algorithm == "blake3"
