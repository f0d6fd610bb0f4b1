"""Parallel hashing, layouts and tensor digests."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.factories.manifest_models import flip_byte, make_object_npy, safetensors_offset
from trainguard.core.errors import ManifestError
from trainguard.manifest import build_manifest
from trainguard.manifest.build import hash_whole_files, walk
from trainguard.manifest.tensors import file_layout


def test_parallel_whole_file_hashing_equals_serial_sha256sum(tmp_path: Path) -> None:
    files = []
    for index, size in enumerate([0, 1, 4095, 3 << 20, (1 << 20) + 7]):
        path = tmp_path / f"f{index}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    parallel = hash_whole_files(files, workers=4)
    serial = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert parallel == serial
    if shutil.which("sha256sum"):
        out = subprocess.run(
            ["sha256sum", *map(str, files)], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert [line.split()[0] for line in out.splitlines()] == parallel


def test_blake3_whole_file_matches_library(tmp_path: Path) -> None:
    import blake3

    path = tmp_path / "big"
    path.write_bytes(os.urandom(5 << 20))
    assert hash_whole_files([path], algorithm="blake3") == [
        blake3.blake3(path.read_bytes()).hexdigest()
    ]


def test_spans_equal_serial_hashes_and_tile_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom((1 << 20) + 12345)
    path.write_bytes(data)
    manifest = build_manifest(path, block_size=256 << 10, workers=3)
    entry = manifest.files["."]
    assert len(entry.spans) == 5
    offset = 0
    for span in entry.spans:
        assert span.offset == offset
        assert span.digest == hashlib.sha256(data[offset : offset + span.length]).hexdigest()
        offset += span.length
    assert offset == len(data)


def test_small_plain_file_digest_is_plain_sha256(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    manifest = build_manifest(tmp_path)
    assert manifest.files["config.json"].digest == hashlib.sha256(b"{}").hexdigest()


def test_worker_count_does_not_change_the_manifest(model_dir: Path) -> None:
    one = build_manifest(model_dir, workers=1, block_size=4096, created="t")
    many = build_manifest(model_dir, workers=8, block_size=4096, created="t")
    assert one == many
    assert one.files["model.safetensors"].tensors.keys() == {
        "embed.weight",
        "layers.0.weight",
        "layers.0.bias",
    }


def test_tensor_digest_ignores_block_boundaries_but_not_data(model_dir: Path) -> None:
    path = model_dir / "model.safetensors"
    before = build_manifest(path, block_size=1 << 20).files["."].tensors
    flip_byte(path, safetensors_offset(path, "layers.0.weight", 5))
    after = build_manifest(path, block_size=1 << 20).files["."].tensors
    changed = [name for name in before if before[name].digest != after[name].digest]
    assert changed == ["layers.0.weight"]


def test_npz_stored_and_compressed_tensors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.arange(10), y=np.ones((2, 3)))
    np.savez_compressed(tmp_path / "b.npz", x=np.arange(10), y=np.ones((2, 3)))
    manifest = build_manifest(tmp_path)
    stored, compressed = manifest.files["a.npz"], manifest.files["b.npz"]
    assert stored.format == compressed.format == "npz"
    assert set(stored.tensors) == set(compressed.tensors) == {"x", "y"}
    # The digest covers dtype, shape and array bytes, not the container: equal across both.
    assert stored.tensors["x"].digest == compressed.tensors["x"].digest
    assert stored.tensors["y"].shape == (2, 3)


def test_object_array_is_recorded_not_hashed_as_tensor(tmp_path: Path) -> None:
    make_object_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "plain.npy", np.arange(3.0))
    manifest = build_manifest(tmp_path)
    obj = manifest.files["obj.npy"].tensors["array"]
    assert obj.digest is None and obj.note and "object" in obj.note
    assert manifest.files["plain.npy"].tensors["array"].digest is not None


def test_torch_zip_is_laid_out_per_member(model_dir: Path) -> None:
    layout = file_layout(memoryview((model_dir / "head.pt").read_bytes()))
    assert layout.format == "torch-zip"
    labels = [seg.label for seg in layout.segments]
    assert any(label.endswith("/data.pkl") for label in labels)
    assert sum(1 for label in labels if "/data/" in label and label.startswith("member:")) == 2


def test_malformed_safetensors_fails_closed_to_raw_with_error(tmp_path: Path) -> None:
    body = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}'
    (tmp_path / "bad.safetensors").write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 16)
    entry = build_manifest(tmp_path).files["bad.safetensors"]
    assert entry.format == "safetensors" and entry.error and "data_offsets" in entry.error
    assert entry.tensors == {}


def test_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"x")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(ManifestError, match=r"link\.bin is a symlink"):
        build_manifest(tmp_path)
    files, odd = walk(tmp_path, [])
    assert [rel for rel, _ in files] == ["real.bin"]
    assert [o.relpath for o in odd] == ["link.bin"]


def test_ignore_excludes_paths_and_subtrees(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_bytes(b"a")
    (tmp_path / "keep").write_bytes(b"k")
    (tmp_path / "sig.json").write_bytes(b"s")
    manifest = build_manifest(tmp_path, ignore=["sub", "sig.json"])
    assert list(manifest.files) == ["keep"]
