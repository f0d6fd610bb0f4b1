"""The symbolic pickle machine: static analysis of pickle streams, no unpickling.

Public API (other parts of the scanner code against exactly this):

- :func:`analyze_pickle` parses ONE pickle and returns a :class:`PickleResult`;
- :func:`analyze_pickle_stream` parses several pickles back to back;
- :func:`torch_tensor_refs` / :func:`storage_refs` map torch storages to tensors.

See ``docs/scan-internals.md`` for how the machine follows CPython's unpickler and
how the allow/deny policy (:mod:`trainguard.scan.policy`) decides verdicts.
"""

from __future__ import annotations

from trainguard.scan.picklevm.machine import (
    RULES,
    PickleResult,
    StreamResult,
    analyze_pickle,
    analyze_pickle_stream,
)
from trainguard.scan.picklevm.torchrefs import (
    StorageRef,
    TensorRef,
    storage_refs,
    torch_tensor_refs,
)
from trainguard.scan.picklevm.values import (
    Call,
    GlobalRef,
    LazyBytes,
    LazyStr,
    Opaque,
    OutOfBandBuffer,
    PersistentRef,
)
from trainguard.scan.policy import Classification, Policy

__all__ = [
    "RULES",
    "Call",
    "Classification",
    "GlobalRef",
    "LazyBytes",
    "LazyStr",
    "Opaque",
    "OutOfBandBuffer",
    "PersistentRef",
    "PickleResult",
    "Policy",
    "StorageRef",
    "StreamResult",
    "TensorRef",
    "analyze_pickle",
    "analyze_pickle_stream",
    "storage_refs",
    "torch_tensor_refs",
]
