"""Small real model directories for manifest tests: safetensors, torch.save, npz, npy."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def make_model_dir(root: Path) -> Path:
    """A model directory with every supported tensor format plus a config file."""
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            "embed.weight": torch.randn(64, 32, generator=generator),
            "layers.0.weight": torch.randn(32, 32, generator=generator),
            "layers.0.bias": torch.zeros(32),
        },
        str(root / "model.safetensors"),
        metadata={"format": "pt"},
    )
    torch.save(
        {"head.weight": torch.randn(16, 32, generator=generator), "head.bias": torch.ones(16)},
        root / "head.pt",
    )
    np.savez(root / "stats.npz", mean=np.arange(8, dtype=np.float32), count=np.array([3]))
    (root / "config.json").write_text('{"hidden": 32}\n')
    return root


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def safetensors_offset(path: Path, tensor: str, element: int = 0, itemsize: int = 4) -> int:
    """Absolute file offset of ``element`` of ``tensor`` in a safetensors file."""
    import json

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return 8 + length + header[tensor]["data_offsets"][0] + element * itemsize


def rewrite_safetensors_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Same tensors, different ``__metadata__`` (what a header-only edit looks like)."""
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(path), metadata=metadata)


def make_object_npy(path: Path) -> None:
    """An object-dtype .npy written without numpy's pickle: header only + opaque bytes.

    The payload is never unpickled by the code under test; its bytes are arbitrary.
    """
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x80\x04N."
    )
