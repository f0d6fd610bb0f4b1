"""The manifest's JSON form: round trip (hypothesis) and strict parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.core.errors import ManifestError
from trainguard.manifest.schema import Ancestor, FileEntry, Manifest, Span, TensorEntry

_hex = st.text("0123456789abcdef", min_size=64, max_size=64)
_name = st.text(min_size=1, max_size=12)


@st.composite
def _files(draw: Any) -> FileEntry:
    lengths = draw(st.lists(st.integers(0, 1 << 40), min_size=1, max_size=4))
    spans, offset = [], 0
    for length in lengths:
        spans.append(Span(offset, length, draw(_hex), draw(_name)))
        offset += length
    tensors = draw(
        st.dictionaries(
            _name,
            st.builds(
                TensorEntry,
                dtype=st.sampled_from(["F32", "BF16", "<f4", "float32"]),
                shape=st.lists(st.integers(0, 1 << 20), max_size=4).map(tuple),
                digest=st.one_of(st.none(), _hex),
                geometry=st.fixed_dictionaries(
                    {}, optional={"stride": st.lists(st.integers(0, 99), max_size=3)}
                ),
                note=st.one_of(st.none(), _name),
            ),
            max_size=3,
        )
    )
    return FileEntry(
        size=offset,
        format=draw(st.sampled_from(["raw", "safetensors", "torch-zip"])),
        digest=draw(_hex),
        spans=tuple(spans),
        tensors=tensors,
        error=draw(st.one_of(st.none(), _name)),
    )


_manifests = st.builds(
    Manifest,
    name=_name,
    algorithm=st.sampled_from(["sha256", "blake3"]),
    block_size=st.integers(1, 1 << 30),
    files=st.dictionaries(_name, _files(), max_size=3),
    created=_name,
    tool=_name,
    ignore=st.lists(_name, max_size=2).map(tuple),
    step=st.one_of(st.none(), st.integers(0, 1 << 60)),
    run=st.one_of(st.none(), _name),
    parent=st.one_of(st.none(), _hex),
    ancestors=st.lists(
        st.builds(Ancestor, step=st.one_of(st.none(), st.integers(0, 99)), digest=_hex),
        max_size=3,
    ).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(_manifests)
def test_round_trip_through_json(manifest: Manifest) -> None:
    text = json.dumps(manifest.to_dict())
    again = Manifest.from_dict(json.loads(text))
    assert again == manifest
    assert again.digest() == manifest.digest()


def _minimal() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "m",
        "created": "t",
        "tool": "x",
        "hash": {"algorithm": "sha256", "block_size": 4},
        "files": {
            "a": {
                "size": 3,
                "format": "raw",
                "sha256": "a" * 64,
                "spans": [[0, 3, "a" * 64, "data"]],
            }
        },
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "unsupported manifest version"),
        (lambda d: d["hash"].update(algorithm="md5"), "unknown hash algorithm"),
        (lambda d: d["files"]["a"].update(size=4), "spans cover 3 bytes of 4"),
        (lambda d: d["files"]["a"]["spans"][0].__setitem__(0, 1), "must tile"),
        (lambda d: d["files"]["a"].update(sha256="XYZ"), "hex digest"),
        (lambda d: d.update(files=[]), "expected a JSON object"),
        (lambda d: d.update(step=-1), "integer >= 0"),
    ],
)
def test_malformed_manifests_are_rejected(mutate: Any, message: str) -> None:
    data = _minimal()
    Manifest.from_dict(data)
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)
