"""``torch.distributed.checkpoint`` metadata: the ``.metadata`` file is a plain pickle.

``FileSystemReader.read_metadata()`` calls ``pickle.load`` on it with no
restriction (an HF example repository ships ``builtins.exec`` in one), so it is
scanned by the pickle machine like any pickle. Its legitimate content is a
handful of DCP record classes plus dtype/layout helpers; those are accepted here
as exact exemptions, so a real DCP checkpoint is ``safe`` and anything else in
the file is judged by the normal policy. The ``.distcp`` shards are scanned as
whatever their content is (PyTorch writes them as zips).
"""

from __future__ import annotations

from typing import Final

from trainguard.scan.formats.context import ScanContext

_MARKER: Final = b"torch.distributed.checkpoint.metadata"

DCP_RECORDS: Final = frozenset(
    {
        "torch.distributed.checkpoint.metadata.Metadata",
        "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
        "torch.distributed.checkpoint.metadata.TensorProperties",
        "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
        "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
        "torch.distributed.checkpoint.metadata.MetadataIndex",
        "torch.distributed.checkpoint.metadata.StorageMeta",
        "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.serialization._get_layout",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
    }
)
"""Record classes and helpers a DCP ``.metadata`` pickle legitimately references.

All are plain records or pure lookups: constructing them runs no I/O and no code
chosen by the file (``_get_layout`` maps a string such as ``torch.strided`` to a
layout object; ``_MEM_FORMAT_ENCODING`` is an enum; a ``PosixPath`` is only a name).
"""


def is_dcp_metadata(data: memoryview) -> bool:
    """DCP metadata names its module in the first few hundred bytes."""
    return _MARKER in bytes(data[:512])


def scan_dcp_metadata(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int
) -> None:
    """Scan the metadata pickle with the DCP record classes accepted."""
    ctx.pickle_stream(data, member=member, base_offset=base_offset, exempt=DCP_RECORDS)
