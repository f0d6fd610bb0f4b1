"""Property tests: never crash, never hang, never pass a kept payload; match pickle.loads.

The differential test unpickles only data this test generated from plain Python
values (safe by construction); malicious fixtures are never unpickled.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories.pickle_builder import PickleBuilder, benign_state_dict, os_system
from trainguard.core.findings import Verdict
from trainguard.scan.picklevm import Call, analyze_pickle, analyze_pickle_stream

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARKER = Path("/nonexistent-trainguard-marker/fuzz")
SEEDS = [
    benign_state_dict(),
    pickle.dumps({"a": [1, 2.5, "x", b"y", None, (1, 2)], "b": {3, 4}}, protocol=0),
    pickle.dumps({"a": [1, 2.5, "x", b"y", None, (1, 2)], "b": {3, 4}}, protocol=2),
    pickle.dumps({"a": [1, 2.5, "x", b"y" * 300, None], "b": frozenset({3})}, protocol=5),
    os_system(MARKER),
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.complex_numbers(allow_nan=False)
)
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner, max_size=5)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.builds(bytearray, st.binary(max_size=10))
    ),
    max_leaves=25,
)

_SAFE_CALLS = {
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "builtins.bytes": bytes,
    "builtins.complex": complex,
}


def materialize(value: Any) -> Any:
    """Evaluate the allowlisted plain-data constructors a protocol < 4 pickle uses."""
    if isinstance(value, Call):
        target = value.target
        args = tuple(materialize(a) for a in value.args)
        if target == "_codecs.encode":
            return args[0].encode(args[1])
        if target in _SAFE_CALLS:
            return _SAFE_CALLS[target](*args)
        raise AssertionError(f"unexpected call {target}")
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if isinstance(value, tuple):
        return tuple(materialize(v) for v in value)
    if isinstance(value, dict):
        return {materialize(k): materialize(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return type(value)(materialize(v) for v in value)
    return value


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@SETTINGS
@given(value=values, protocol=st.integers(0, 5))
def test_differential_root_equals_pickle_loads(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    result = analyze_pickle(data)
    assert result.complete, result.findings
    assert result.verdict is Verdict.SAFE, result.findings
    expected = pickle.loads(data)  # our own plain data: safe to unpickle
    assert same(materialize(result.root), expected)


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "append"]),
    st.integers(0, 10_000),
    st.binary(min_size=1, max_size=12),
)


def mutate(data: bytes, muts: list[tuple[str, int, bytes]], start: int = 0) -> bytes:
    out = bytearray(data)
    for kind, where, blob in muts:
        span = max(len(out) - start, 1)
        pos = start + where % span
        if kind == "flip" and pos < len(out):
            out[pos] = blob[0]
        elif kind == "insert":
            out[pos:pos] = blob
        elif kind == "delete":
            del out[pos : pos + len(blob)]
        elif kind == "truncate":
            del out[pos:]
        else:
            out += blob
    return bytes(out)


@SETTINGS
@given(seed=st.sampled_from(SEEDS), muts=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_pickles_never_crash_or_hang(seed: bytes, muts: list[Any]) -> None:
    data = mutate(seed, muts)
    deadline = time.monotonic() + 5
    result = analyze_pickle(data, deadline=deadline)
    assert result.verdict in tuple(Verdict)
    if result.verdict is Verdict.SAFE:
        assert result.complete and not result.findings
    if not result.complete:
        assert result.verdict is not Verdict.SAFE
    stream = analyze_pickle_stream(data, deadline=deadline)
    assert stream.verdict in tuple(Verdict)


@SETTINGS
@given(muts=st.lists(mutation, min_size=1, max_size=6))
def test_mutations_after_the_payload_never_make_it_safe(muts: list[Any]) -> None:
    # The GLOBAL os.system opcode runs before any mutated byte, in every unpickler;
    # the machine must report it whatever follows.
    prefix = PickleBuilder().proto(2).global_("os", "system").build()
    data = prefix + mutate(os_system(MARKER)[len(prefix) :], muts)
    result = analyze_pickle(data)
    assert result.verdict is Verdict.MALICIOUS
    assert any(f.global_name == "os.system" for f in result.findings)


benign_prefix_ops = st.lists(
    st.sampled_from([b"N0", b"(1", b"K\x070", b"]0", b"}\x94" + b"0", b"\x88\x89\x860"]),
    max_size=6,
)


@SETTINGS
@given(prefix=benign_prefix_ops, muts=st.lists(mutation, max_size=4))
def test_complete_benign_opcodes_before_the_payload_keep_it_visible(
    prefix: list[bytes], muts: list[Any]
) -> None:
    body = PickleBuilder().global_("os", "system").build()
    tail = mutate(b"(S'x'\ntR.", muts)
    data = b"\x80\x02" + b"".join(prefix) + body + tail
    assert analyze_pickle(data).verdict is Verdict.MALICIOUS
