"""Real checkpoints made by the real libraries, plus malicious rewrites of them.

Benign fixtures come straight from ``torch.save``, ``numpy.savez``,
``joblib.dump``, ``safetensors.torch.save_file`` and ``torch.distributed.checkpoint``.
Malicious fixtures are produced by rewriting the pickle of a real file; their
payloads only create a marker file, and tests never load them except through
the scanner.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

from tests.factories import archives as af


def _torch() -> Any:
    import torch

    return torch


def models() -> dict[str, Any]:
    """Small models of several kinds (MLP, conv, transformer layer, embedding)."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
        "conv": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        "transformer": nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32),
        "embedding": nn.Embedding(50, 8),
    }


def torch_save_bytes(obj: Any, **kwargs: Any) -> bytes:
    """``torch.save`` into memory."""
    buffer = io.BytesIO()
    _torch().save(obj, buffer, **kwargs)
    return buffer.getvalue()


def state_dicts() -> dict[str, bytes]:
    """state_dicts of every model kind, in several dtypes."""
    torch = _torch()
    out = {}
    for name, model in models().items():
        out[f"{name}-f32.pt"] = torch_save_bytes(model.state_dict())
    out["mlp-f16.pt"] = torch_save_bytes(
        {k: v.half() for k, v in models()["mlp"].state_dict().items()}
    )
    out["mlp-bf16.pt"] = torch_save_bytes(
        {k: v.to(torch.bfloat16) for k, v in models()["mlp"].state_dict().items()}
    )
    out["ints.pt"] = torch_save_bytes(
        {
            "i64": torch.arange(5),
            "u8": torch.arange(5, dtype=torch.uint8),
            "bool": torch.ones(3, dtype=torch.bool),
            "view": torch.arange(10.0)[2:7],
        }
    )
    return out


def training_checkpoint() -> bytes:
    """A full training checkpoint: model, optimizer, scheduler, RNG states, step."""
    torch = _torch()
    model = models()["mlp"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    loss = model(torch.randn(4, 8)).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return torch_save_bytes(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": 7,
            "epoch": 1,
        }
    )


def legacy_checkpoint() -> bytes:
    """The stacked-pickle format (``_use_new_zipfile_serialization=False``)."""
    return torch_save_bytes(models()["mlp"].state_dict(), _use_new_zipfile_serialization=False)


def whole_module() -> bytes:
    """``torch.save(model)``: a whole-module pickle (imports torch.nn classes)."""
    return torch_save_bytes(models()["mlp"])


def npz_bytes() -> bytes:
    """``numpy.savez`` of plain arrays."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(10, dtype=np.float32), b=np.eye(3))
    return buffer.getvalue()


def npy_bytes(array: Any) -> bytes:
    """``numpy.save`` into memory (object arrays allowed)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def joblib_bytes(value: Any, **kwargs: Any) -> bytes:
    """``joblib.dump`` into a file and back."""
    import tempfile

    import joblib

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dump.joblib"
        joblib.dump(value, path, **kwargs)
        return path.read_bytes()


def safetensors_bytes() -> bytes:
    """``safetensors.torch.save`` of a state_dict."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in models()["mlp"].state_dict().items()})


def dcp_checkpoint(directory: Path) -> Path:
    """A single-process ``torch.distributed.checkpoint.save``."""
    import warnings

    import torch.distributed.checkpoint as dcp

    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": models()["mlp"].state_dict(), "step": torch.tensor(3)},
            checkpoint_id=str(directory),
        )
    return directory


# -- malicious rewrites -------------------------------------------------------------------
def inject_reduce(pickle_bytes: bytes, payload: bytes) -> bytes:
    """Prepend a REDUCE payload to a pickle's body: ``(payload_result, original)[1]``-style.

    The payload's call runs first and is POPped, then the original object pickle
    continues unchanged, so the checkpoint still loads normally (the realistic attack).
    """
    assert payload.endswith(b".")
    body = payload[:-1]
    if body.startswith(b"\x80"):
        body = body[2:]
    head = pickle_bytes[:2] if pickle_bytes.startswith(b"\x80") else b""
    rest = pickle_bytes[len(head) :]
    return head + body + b"0" + rest


def malicious_torch_zip(marker: str, benign: bytes | None = None) -> bytes:
    """A real torch zip whose data.pkl runs ``builtins.exec`` before the real state_dict."""
    import zipfile

    data = benign or torch_save_bytes(models()["mlp"].state_dict())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        original = archive.read(name)
    return af.replace_member(data, "/data.pkl", inject_reduce(original, af.marker_payload(marker)))


def malicious_legacy(marker: str) -> bytes:
    """A legacy checkpoint whose object pickle (the 4th) carries the payload."""
    data = legacy_checkpoint()
    pos = 0
    import pickletools

    starts = []
    for _ in range(5):
        starts.append(pos)
        *_, last = pickletools.genops(data[pos:])
        pos += last[2] + 1
    fourth = data[starts[3] : starts[4]]
    return data[: starts[3]] + inject_reduce(fourth, af.marker_payload(marker)) + data[starts[4] :]


def malicious_pickle(marker: str, protocol: int = 2) -> bytes:
    """A bare pickle calling ``os.system``."""
    if protocol == 0:
        return af.os_system_payload(marker)
    return af.marker_payload(marker)


def object_npy_with_payload(marker: str) -> bytes:
    """An object-dtype ``.npy`` whose pickle payload is replaced by a malicious one."""
    import numpy as np

    data = npy_bytes(np.array([{"a": 1}], dtype=object))
    header_len = struct.unpack("<H", data[8:10])[0]
    return data[: 10 + header_len] + af.marker_payload(marker)


def joblib_with_payload_after_array(marker: str) -> bytes:
    """A real joblib dump of ``[array, 100000]`` with a REDUCE injected after the raw array block.

    The injected opcodes sit after the first array block, where linear parsers stop.
    """
    import numpy as np

    data = joblib_bytes([np.arange(16, dtype=np.float64), 100000])
    needle = b"J\xa0\x86\x01\x00"  # BININT 100000
    pos = data.find(needle)
    assert pos > 0, "joblib layout changed"
    payload = af.marker_payload(marker)[2:-1] + b"0"
    return data[:pos] + payload + data[pos:]


def pickle_with_user_class() -> bytes:
    """A pickle of a user's own class (must be `unknown`, not `malicious`)."""
    return b"\x80\x04\x8c\x0bmypkg.model\x94\x8c\x06Config\x94\x93\x94)\x81\x94."


def dump(obj: Any) -> bytes:
    """Plain ``pickle.dumps`` for benign data."""
    return pickle.dumps(obj, protocol=4)


def legacy_tar(pickle_member: bytes) -> bytes:
    """A PyTorch < 0.4 tar checkpoint: one float storage of 2 elements, no tensors, and
    ``pickle_member`` as its object pickle."""
    storage_args = b"\x80\x02X\x01\x00\x00\x00kX\x03\x00\x00\x00cpuctorch\nFloatStorage\n\x87."
    storages = dump(1) + storage_args + (2).to_bytes(8, "little") + b"\0" * 8 + dump([])
    return af.tar_bytes(
        [
            ("sys_info", dump({"protocol_version": 1001})),
            ("pickle", pickle_member),
            ("storages", storages),
            ("tensors", dump(0)),
        ]
    )
