"""The symbolic pickle machine: every opcode family, memo, frames, imports, limits."""

from __future__ import annotations

import pickle
import struct
import time

import pytest

from tests.factories.pickle_builder import PickleBuilder, benign_state_dict, os_system
from trainguard.core.findings import Verdict
from trainguard.core.limits import DEFAULT_LIMITS, Limits
from trainguard.scan.picklevm import (
    Call,
    GlobalRef,
    LazyBytes,
    Opaque,
    OutOfBandBuffer,
    PersistentRef,
    Policy,
    analyze_pickle,
    analyze_pickle_stream,
)
from trainguard.scan.picklevm import opcodes as op


def rules(result: object) -> set[str]:
    return {f.rule for f in result.findings}  # type: ignore[attr-defined]


def root_of(data: bytes) -> object:
    result = analyze_pickle(data)
    assert result.complete, result.findings
    return result.root


# ----------------------------------------------------------------- scalars


def test_int_opcodes() -> None:
    b = PickleBuilder().proto(2).mark()
    b.binint(-5).binint1(200).binint2(65000).int_text("42").int_text("01").int_text("00")
    b.int_text("0x10").long_text("123456789012345678901234567890L").long1(-(2**70)).long4(2**80)
    b.long1(0)
    assert root_of(b.tuple().stop().build()) == (
        -5,
        200,
        65000,
        42,
        True,
        False,
        16,
        123456789012345678901234567890,
        -(2**70),
        2**80,
        0,
    )


def test_int_text_follows_c_strtol_base0() -> None:
    # _pickle.c load_int: strtol(s, &end, 0): "010" is octal 8 there.
    assert root_of(PickleBuilder().int_text("010").stop().build()) == 8
    result = analyze_pickle(PickleBuilder().int_text("zz").stop().build())
    assert "pickle.parse_error" in rules(result)
    assert isinstance(result.root, Opaque)


def test_float_opcodes() -> None:
    b = PickleBuilder().mark().float_text("1.5").binfloat(-2.25).float_text("1e10").tuple()
    assert root_of(b.stop().build()) == (1.5, -2.25, 1e10)


def test_constants() -> None:
    b = PickleBuilder().proto(2).mark().none().true().false().tuple().stop()
    assert root_of(b.build()) == (None, True, False)


# ----------------------------------------------------------------- strings


def test_string_opcodes_and_quoting() -> None:
    b = PickleBuilder().mark()
    b.string("a\\x41\\n").string("q", quote='"').binstring(b"bin").short_binstring(b"sb")
    b.unicode_line("\u20ac\\").short_binunicode("s\u00fc").binunicode("bu").binunicode8("b8")
    assert root_of(b.tuple().stop().build()) == (
        "aA\n",
        "q",
        "bin",
        "sb",
        "\u20ac\\",
        "s\u00fc",
        "bu",
        "b8",
    )


def test_unquoted_string_is_a_parse_error_but_parsing_goes_on() -> None:
    data = PickleBuilder().op(op.STRING, b"abc\n").pop().global_("os", "system").stop().build()
    result = analyze_pickle(data)
    assert "pickle.parse_error" in rules(result)
    assert result.verdict is Verdict.MALICIOUS


def test_mismatched_quotes_rejected() -> None:
    result = analyze_pickle(PickleBuilder().op(op.STRING, b"'abc\"\n").stop().build())
    assert "pickle.parse_error" in rules(result)


def test_bytes_opcodes() -> None:
    b = PickleBuilder().proto(5).mark().short_binbytes(b"x").binbytes(b"yy").binbytes8(b"zzz")
    b.bytearray8(b"ba").tuple().stop()
    assert root_of(b.build()) == (b"x", b"yy", b"zzz", bytearray(b"ba"))


def test_big_bytes_stay_lazy_and_are_not_copied() -> None:
    payload = b"\0" * ((1 << 20) + 10)
    data = PickleBuilder().proto(4).binbytes8(payload).stop().build()
    root = root_of(data)
    assert isinstance(root, LazyBytes)
    assert root.length == len(payload)
    assert root.offset == 11  # PROTO(2) + opcode(1) + length(8)


def test_negative_lengths_rejected() -> None:
    for code in (op.BINSTRING, op.LONG4):
        data = PickleBuilder().op(code, struct.pack("<i", -1)).stop().build()
        assert not analyze_pickle(data).complete


def test_declared_length_beyond_data_is_truncation_without_allocation() -> None:
    data = PickleBuilder().proto(4).op(op.BINBYTES8, struct.pack("<Q", 1 << 60)).build()
    result = analyze_pickle(data)
    assert not result.complete
    assert result.verdict is Verdict.ERROR
    assert "truncated" in result.findings[0].message


# ----------------------------------------------------------------- containers


def test_container_opcodes() -> None:
    b = PickleBuilder().proto(4)
    b.mark().binint1(1).binint1(2).list()  # [1, 2]
    b.empty_list().binint1(3).append().mark().binint1(4).binint1(5).appends()  # [3,4,5]
    b.mark().short_binunicode("k").binint1(1).dict()
    b.empty_dict().short_binunicode("a").binint1(1).setitem()
    b.mark().short_binunicode("b").binint1(2).setitems()
    b.empty_set().mark().binint1(7).binint1(8).additems()
    b.mark().binint1(9).frozenset()
    b.empty_tuple().binint1(1).tuple1().binint1(1).binint1(2).tuple2()
    b.binint1(1).binint1(2).binint1(3).tuple3()
    b.stop()
    result = analyze_pickle(b.build())
    assert result.complete
    # STOP returns the top of the stack; check the stack contents through a tuple instead.
    b2 = PickleBuilder().proto(4).mark()
    b2.raw(b.build()[2:-1])
    b2.tuple().stop()
    assert root_of(b2.build()) == (
        [1, 2],
        [3, 4, 5],
        {"k": 1},
        {"a": 1, "b": 2},
        {7, 8},
        frozenset({9}),
        (),
        (1,),
        (1, 2),
        (1, 2, 3),
    )


def test_mark_pop_and_pop_mark() -> None:
    b = PickleBuilder().binint1(1).mark().binint1(2).binint1(3).pop_mark()
    b.mark().pop()  # POP removes an empty mark (C load_pop)
    b.dup().tuple2().stop()
    assert root_of(b.build()) == (1, 1)


def test_stack_underflow_below_mark_is_a_parse_error() -> None:
    # TUPLE1 may not reach below the innermost MARK (C fence).
    data = PickleBuilder().binint1(1).mark().tuple1().stop().build()
    result = analyze_pickle(data)
    assert not result.complete
    assert "underflow" in result.findings[0].message


def test_missing_mark() -> None:
    result = analyze_pickle(PickleBuilder().binint1(1).tuple().stop().build())
    assert "could not find MARK" in result.findings[0].message


def test_odd_setitems_rejected() -> None:
    data = PickleBuilder().empty_dict().mark().binint1(1).setitems().stop().build()
    assert "odd number" in analyze_pickle(data).findings[0].message


def test_unhashable_key_is_a_runtime_error() -> None:
    data = PickleBuilder().empty_dict().empty_list().binint1(1).setitem().stop().build()
    result = analyze_pickle(data)
    assert "pickle.runtime_error" in rules(result)
    assert result.verdict is Verdict.ERROR


def test_deeply_nested_key_does_not_crash_hashing() -> None:
    # CPython's tuple hash has no recursion guard: a 300k-deep key would segfault.
    b = PickleBuilder().empty_dict().empty_tuple()
    for _ in range(300_000):
        b.tuple1()
    b.binint1(1).setitem().stop()
    limits = Limits(max_nesting_depth=1000)
    result = analyze_pickle(b.build(), limits=limits)
    assert "pickle.limit_exceeded" in rules(result)


# ----------------------------------------------------------------- memo


def test_memo_opcodes() -> None:
    b = PickleBuilder().proto(4).mark()
    b.short_binunicode("a").put(5).short_binunicode("b").binput(1).short_binunicode("c")
    b.long_binput(70000).short_binunicode("d").memoize()
    b.get(5).binget(1).long_binget(70000).binget(2).tuple().stop()
    # MEMOIZE uses len(memo) == 3 as its index.
    b2 = PickleBuilder().proto(4).mark().short_binunicode("a").put(5).short_binunicode("b")
    b2.binput(1).short_binunicode("c").long_binput(70000).short_binunicode("d").memoize()
    b2.get(5).binget(1).long_binget(70000).binget(3).tuple().stop()
    assert root_of(b2.build()) == ("a", "b", "c", "d", "a", "b", "c", "d")
    assert "pickle.memo_error" in rules(analyze_pickle(b.build()))


def test_memo_shares_objects_like_the_unpickler() -> None:
    b = PickleBuilder().proto(2).empty_list().binput(0).binget(0).tuple2().stop()
    root = root_of(b.build())
    assert root[0] is root[1]  # type: ignore[index]


def test_memo_miss_is_reported_and_parsing_continues() -> None:
    b = PickleBuilder().proto(2).binget(9).pop().global_("os", "system").stop()
    result = analyze_pickle(b.build())
    assert {"pickle.memo_error", "pickle.dangerous_global"} <= rules(result)
    assert result.verdict is Verdict.MALICIOUS


# ----------------------------------------------------------------- frames


def test_frames_match_pickle_dumps() -> None:
    data = pickle.dumps({"x": list(range(100)), "s": "y" * 70000}, protocol=4)
    assert data[2] == op.FRAME
    result = analyze_pickle(data)
    assert result.verdict is Verdict.SAFE, result.findings
    assert result.root == {"x": list(range(100)), "s": "y" * 70000}


def test_argument_straddling_a_frame_is_a_violation() -> None:
    # B18 (python/cpython#154848, fickling #317): the payload runs past the frame end.
    body = PickleBuilder().op(op.BINBYTES, struct.pack("<I", 0x107)).build() + b"ab"
    tail = PickleBuilder().global_("os", "system").stop().build()
    data = PickleBuilder().proto(4).framed(body).raw(tail + b"\0" * 0x107).build()
    result = analyze_pickle(data)
    assert "pickle.frame_violation" in rules(result)
    assert result.verdict is Verdict.MALICIOUS


def test_opcode_may_end_a_frame_and_its_argument_follow_it() -> None:
    # pickle.py's _Unframer reads an argument from the file once the frame is empty.
    data = PickleBuilder().proto(4).frame(1).op(op.BININT1).raw(b"\x07").stop().build()
    result = analyze_pickle(data)
    assert result.complete and result.root == 7
    assert result.verdict is Verdict.SAFE


def test_frame_inside_unfinished_frame() -> None:
    inner = PickleBuilder().frame(2).none().stop().build()
    data = PickleBuilder().proto(4).frame(len(inner) + 5).raw(inner + b"NNNN.").build()
    assert "pickle.frame_violation" in rules(analyze_pickle(data))


def test_text_line_straddling_a_frame() -> None:
    body = b"cos\nsys"
    data = PickleBuilder().proto(4).framed(body).raw(b"tem\n.").build()
    assert "pickle.frame_violation" in rules(analyze_pickle(data))


def test_stop_inside_frame_with_bytes_left() -> None:
    data = PickleBuilder().proto(4).framed(b"N.cos\nsystem\n.").build()
    result = analyze_pickle(data)
    assert "pickle.frame_violation" in rules(result)


def test_frame_longer_than_data() -> None:
    data = PickleBuilder().proto(4).frame(1000).none().stop().build()
    result = analyze_pickle(data)
    assert not result.complete and result.verdict is Verdict.ERROR


# ----------------------------------------------------------------- imports


def test_global_and_stack_global_and_inst() -> None:
    data = PickleBuilder().proto(4).mark()
    data.global_("collections", "OrderedDict").stack_global("collections", "OrderedDict")
    data.tuple().stop()
    result = analyze_pickle(data.build())
    assert [g.qualified for g in result.globals] == ["collections.OrderedDict"] * 2
    assert result.verdict is Verdict.SAFE
    inst = PickleBuilder().mark().binint1(1).inst("mypkg.things", "Thing").stop().build()
    result = analyze_pickle(inst)
    assert isinstance(result.root, Call) and result.root.kind == "inst"
    assert result.root.args == (1,)
    assert result.verdict is Verdict.UNKNOWN


def test_stack_global_operands_from_memo() -> None:
    b = PickleBuilder().proto(4).short_binunicode("os").memoize().pop()
    b.short_binunicode("system").memoize().pop().binget(0).binget(1).stack_global().stop()
    result = analyze_pickle(b.build())
    assert result.globals[0].qualified == "os.system"
    assert result.verdict is Verdict.MALICIOUS


def test_stack_global_with_computed_operands_is_dynamic() -> None:
    b = PickleBuilder().proto(4).call("mypkg", "name_of").short_binunicode("system")
    b.stack_global().stop()
    result = analyze_pickle(b.build())
    assert "pickle.dynamic_global" in rules(result)
    assert result.verdict is Verdict.MALICIOUS


def test_stack_global_with_int_operand_is_a_runtime_error() -> None:
    b = PickleBuilder().proto(4).binint1(1).short_binunicode("x").stack_global().stop()
    assert "pickle.runtime_error" in rules(analyze_pickle(b.build()))


def test_python2_names_are_mapped_like_fix_imports() -> None:
    # protocol < 3: _compat_pickle maps __builtin__ -> builtins.
    data = PickleBuilder().proto(2).global_("__builtin__", "set").stop().build()
    result = analyze_pickle(data)
    assert result.globals[0].qualified == "builtins.set"
    assert result.verdict is Verdict.SAFE
    # protocol 3: no mapping; the alias still counts for danger.
    data = PickleBuilder().proto(3).global_("__builtin__", "eval").stop().build()
    assert analyze_pickle(data).verdict is Verdict.MALICIOUS
    data = PickleBuilder().proto(2).global_("commands", "getoutput").stop().build()
    result = analyze_pickle(data)
    assert result.globals[0].qualified == "subprocess.getoutput"
    assert result.verdict is Verdict.MALICIOUS


def test_proto_can_change_mid_stream() -> None:
    b = PickleBuilder().proto(4).none().pop().proto(2).global_("copy_reg", "_reconstructor").stop()
    result = analyze_pickle(b.build())
    assert result.globals[0].qualified == "copyreg._reconstructor"
    assert result.protocol == 4


def test_unsupported_protocol() -> None:
    result = analyze_pickle(PickleBuilder().proto(6).none().stop().build())
    assert "unsupported pickle protocol" in result.findings[0].message


def test_ext_codes_fail_closed() -> None:
    for method in ("ext1", "ext2", "ext4"):
        b = getattr(PickleBuilder().proto(2), method)(7).stop()
        result = analyze_pickle(b.build())
        assert "pickle.extension_code" in rules(result)
        assert result.verdict is Verdict.MALICIOUS


def test_ext_codes_resolve_through_a_registry() -> None:
    policy = Policy.default(extensions={7: ("collections", "OrderedDict")})
    result = analyze_pickle(PickleBuilder().proto(2).ext1(7).stop().build(), policy=policy)
    assert result.verdict is Verdict.SAFE
    assert result.globals[0].via == "EXT1 code 7"
    bad = Policy.default(extensions={300: ("os", "system")})
    result = analyze_pickle(PickleBuilder().proto(2).ext2(300).stop().build(), policy=bad)
    assert result.verdict is Verdict.MALICIOUS


def test_ext_code_zero_rejected() -> None:
    result = analyze_pickle(PickleBuilder().proto(2).ext4(0).stop().build())
    assert "EXT specifies code <= 0" in result.findings[0].message


# ----------------------------------------------------------------- calls


def test_reduce_obj_newobj_newobj_ex_make_calls() -> None:
    b = PickleBuilder().proto(4).mark()
    b.global_("collections", "OrderedDict").empty_tuple().reduce()
    b.mark().global_("collections", "Counter").obj()
    b.global_("collections", "deque").empty_tuple().newobj()
    b.global_("collections", "deque").empty_tuple().empty_dict().newobj_ex()
    b.tuple().stop()
    root = root_of(b.build())
    assert [c.kind for c in root] == ["reduce", "obj", "newobj", "newobj_ex"]  # type: ignore[attr-defined]
    assert all(isinstance(c, Call) for c in root)  # type: ignore[attr-defined]


def test_build_and_setitems_recorded_on_the_call() -> None:
    result = analyze_pickle(benign_state_dict())
    root = result.root
    assert isinstance(root, Call) and root.target == "collections.OrderedDict"
    assert root.setitems is not None and root.setitems[0][0] == "weight"
    assert result.verdict is Verdict.SAFE


def test_build_on_a_global_is_malicious() -> None:
    b = PickleBuilder().proto(4).stack_global("numpy", "size").empty_dict().build_op().stop()
    result = analyze_pickle(b.build())
    assert "pickle.build_on_callable" in rules(result)
    assert result.verdict is Verdict.MALICIOUS


def test_build_on_tensor_is_unexpected() -> None:
    b = PickleBuilder().proto(2).global_("torch._utils", "_rebuild_tensor_v2").empty_tuple()
    b.reduce().empty_tuple().build_op().stop()
    result = analyze_pickle(b.build())
    assert "pickle.unexpected_mutation" in rules(result)
    assert result.verdict is Verdict.UNKNOWN


def test_appends_on_a_global_is_malicious() -> None:
    b = PickleBuilder().proto(2).global_("collections", "OrderedDict").mark().binint1(1)
    b.appends().stop()
    assert "pickle.mutate_global" in rules(analyze_pickle(b.build()))


def test_calling_a_plain_value_is_a_runtime_error() -> None:
    b = PickleBuilder().binint1(1).empty_tuple().reduce().stop()
    assert "pickle.runtime_error" in rules(analyze_pickle(b.build()))


def test_getattr_chain_names_its_target() -> None:
    b = PickleBuilder().proto(2).global_("builtins", "getattr").mark()
    b.global_("os", "path").binunicode("join").tuple().reduce().stop()
    result = analyze_pickle(b.build())
    names = {g.qualified for g in result.globals}
    assert "os.path.join" in names
    assert result.verdict is Verdict.MALICIOUS


def test_attrgetter_applied_names_its_target() -> None:
    b = PickleBuilder().proto(2).call("operator", "attrgetter", "system")
    b.mark().global_("mypkg", "helpers").tuple().reduce().stop()
    result = analyze_pickle(b.build())
    assert "mypkg.helpers.system" in {g.qualified for g in result.globals}


def test_codecs_encode_argument_check() -> None:
    ok = PickleBuilder().proto(2).call("_codecs", "encode", "abc", "latin1").stop().build()
    assert analyze_pickle(ok).verdict is Verdict.SAFE
    odd = PickleBuilder().proto(2).call("_codecs", "encode", "abc", "rot13").stop().build()
    result = analyze_pickle(odd)
    assert "pickle.unsafe_arguments" in rules(result)
    assert result.verdict is Verdict.UNKNOWN


def test_bytearray_with_a_size_is_not_safe() -> None:
    data = PickleBuilder().proto(2).call("builtins", "bytearray", 1 << 30).stop().build()
    assert analyze_pickle(data).verdict is Verdict.UNKNOWN


# ----------------------------------------------------------------- persistent ids


def test_torch_storage_persistent_id_is_valid() -> None:
    result = analyze_pickle(benign_state_dict())
    assert len(result.persistent_ids) == 1
    assert isinstance(result.persistent_ids[0], PersistentRef)
    assert "pickle.bad_persistent_id" not in rules(result)


@pytest.mark.parametrize(
    "build",
    [
        lambda b: b.binunicode("x").binpersid(),
        lambda b: (
            b.mark()
            .binunicode("storage")
            .global_("collections", "OrderedDict")
            .binunicode("0")
            .binunicode("cpu")
            .binint1(1)
            .tuple()
            .binpersid()
        ),
        lambda b: (
            b.mark()
            .binunicode("storage")
            .global_("torch", "FloatStorage")
            .binunicode("../x")
            .binunicode("cpu")
            .binint1(1)
            .tuple()
            .binpersid()
        ),
        lambda b: (
            b.mark()
            .binunicode("storage")
            .global_("torch", "FloatStorage")
            .binunicode("0")
            .binunicode("cpu")
            .binint(-1)
            .tuple()
            .binpersid()
        ),
        lambda b: b.persid("plain"),
    ],
)
def test_bad_persistent_ids(build: object) -> None:
    b = PickleBuilder().proto(2)
    build(b)  # type: ignore[operator]
    result = analyze_pickle(b.stop().build())
    assert "pickle.bad_persistent_id" in rules(result)
    assert result.verdict in (Verdict.ERROR, Verdict.MALICIOUS)


# ----------------------------------------------------------------- protocol 5


def test_out_of_band_buffers() -> None:
    b = PickleBuilder().proto(5).next_buffer().readonly_buffer().stop()
    result = analyze_pickle(b.build())
    assert isinstance(result.root, OutOfBandBuffer) and result.root.readonly
    assert "pickle.out_of_band_buffer" in rules(result)
    b = PickleBuilder().proto(5).bytearray8(b"ab").readonly_buffer().stop()
    assert root_of(b.build()) == b"ab"


# ----------------------------------------------------------------- streams


def test_bad_opcode() -> None:
    result = analyze_pickle(b"\x80\x02\xff.")
    assert not result.complete
    assert "invalid load key" in result.findings[0].message


def test_truncated_stream() -> None:
    result = analyze_pickle(pickle.dumps([1, 2, 3], protocol=2)[:-1])
    assert not result.complete and result.verdict is Verdict.ERROR


def test_empty_input() -> None:
    assert analyze_pickle(b"").verdict is Verdict.ERROR
    assert analyze_pickle_stream(b"").verdict is Verdict.ERROR


def test_start_and_base_offset() -> None:
    data = b"junk" + os_system(__import__("pathlib").Path("/nonexistent/m"))
    result = analyze_pickle(data, start=4, base_offset=1000, member="archive/data.pkl")
    finding = next(f for f in result.findings if f.rule == "pickle.dangerous_global")
    assert finding.offset == 1000 + 4 + 2  # after PROTO
    assert finding.member == "archive/data.pkl"
    assert finding.global_name == "os.system"


def test_several_pickles_in_one_stream() -> None:
    data = pickle.dumps(1, protocol=2) + pickle.dumps("two", protocol=4) + pickle.dumps([3], 0)
    stream = analyze_pickle_stream(data)
    assert [p.root for p in stream.pickles] == [1, "two", [3]]
    assert stream.verdict is Verdict.SAFE
    assert stream.end == len(data)


def test_trailing_data_reported() -> None:
    data = pickle.dumps(1, protocol=2) + b"\x00\x01 hidden"
    stream = analyze_pickle_stream(data)
    assert "pickle.trailing_data" in rules(stream)
    assert stream.verdict is Verdict.ERROR
    assert analyze_pickle_stream(data, allow_trailing=True).verdict is Verdict.SAFE


def test_max_pickles_then_trailing() -> None:
    data = pickle.dumps(1, protocol=2) * 3
    stream = analyze_pickle_stream(data, max_pickles=2)
    assert len(stream.pickles) == 2
    assert "pickle.trailing_data" in rules(stream)
    assert analyze_pickle_stream(data, max_pickles=2, allow_trailing=True).end == len(data) * 2 // 3


def test_dangerous_name_in_trailing_bytes_is_reported() -> None:
    data = pickle.dumps(1, protocol=2) + b"\xffcos\nsystem\n"
    stream = analyze_pickle_stream(data)
    assert stream.verdict is Verdict.MALICIOUS


def test_payload_before_a_break_is_still_reported() -> None:
    data = os_system(__import__("pathlib").Path("/nonexistent/m"))[:-1] + b"\xff\xff"
    result = analyze_pickle(data)
    assert not result.complete
    assert result.verdict is Verdict.MALICIOUS
    assert "pickle.parse_error" in rules(result)


def test_salvage_after_a_halt() -> None:
    data = b"\x80\x02\xff" + PickleBuilder().global_("subprocess", "call").stop().build()
    result = analyze_pickle(data)
    assert result.verdict is Verdict.MALICIOUS
    assert any(f.evidence.get("salvaged") for f in result.findings)


# ----------------------------------------------------------------- limits


def test_opcode_limit() -> None:
    data = PickleBuilder().proto(2).raw(b"N0" * 10_000).none().stop().build()
    result = analyze_pickle(data, limits=Limits(max_pickle_opcodes=5000))
    assert "pickle.limit_exceeded" in rules(result)
    assert result.verdict is Verdict.ERROR


def test_stack_limit() -> None:
    data = PickleBuilder().proto(2).raw(b"N" * 20_000).stop().build()
    result = analyze_pickle(data, limits=Limits(max_stack_depth=1000))
    assert "pickle.limit_exceeded" in rules(result)


def test_memo_limit() -> None:
    b = PickleBuilder().proto(4).none()
    for _ in range(20_000):
        b.memoize()
    result = analyze_pickle(b.stop().build(), limits=Limits(max_memo_entries=1000))
    assert "pickle.limit_exceeded" in rules(result)


def test_text_limit() -> None:
    data = PickleBuilder().op(op.UNICODE, b"a" * 5000 + b"\n").stop().build()
    result = analyze_pickle(data, limits=Limits(max_string_bytes=100))
    assert "pickle.limit_exceeded" in rules(result)


def test_long_limit() -> None:
    data = PickleBuilder().long4(1 << 600_000).stop().build()
    assert "pickle.limit_exceeded" in rules(analyze_pickle(data))


def test_deadline() -> None:
    data = PickleBuilder().proto(2).raw(b"N0" * 50_000).none().stop().build()
    result = analyze_pickle(data, deadline=time.monotonic() - 1)
    assert "pickle.timeout" in rules(result)
    assert result.verdict is Verdict.ERROR


def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="max_stack_depth"):
        Limits(max_stack_depth=0)
    with pytest.raises(ValueError, match="time_budget_s"):
        Limits(time_budget_s=float("nan"))
    with pytest.raises(ValueError, match="max_nesting_depth"):
        Limits(max_nesting_depth=3)
    assert DEFAULT_LIMITS.max_pickle_opcodes > 1_000_000


# ----------------------------------------------------------------- inputs


def test_accepts_memoryview_bytearray_and_mmap(tmp_path: object) -> None:
    import mmap
    from pathlib import Path

    data = benign_state_dict()
    assert analyze_pickle(memoryview(data)).verdict is Verdict.SAFE
    assert analyze_pickle(memoryview(data)[0:]).verdict is Verdict.SAFE
    assert analyze_pickle(memoryview(b"xx" + data)[2:]).verdict is Verdict.SAFE
    assert analyze_pickle(bytearray(data)).verdict is Verdict.SAFE
    path = Path(str(tmp_path)) / "p.pkl"
    path.write_bytes(data)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert analyze_pickle(mm).verdict is Verdict.SAFE


def test_global_refs_are_reported_with_offsets() -> None:
    data = PickleBuilder().proto(2).global_("collections", "OrderedDict").stop().build()
    ref = analyze_pickle(data, base_offset=10).globals[0]
    assert isinstance(ref, GlobalRef)
    assert ref.offset == 12


def test_scan_package_never_imports_torch_or_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import trainguard.scan.picklevm, trainguard.scan.policy; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_scan_sources_never_call_unpicklers() -> None:
    import ast
    from pathlib import Path

    import trainguard.scan.picklevm as pkg

    root = Path(pkg.__file__).parent
    for source in [*root.glob("*.py"), root.parent / "policy.py"]:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "_pickle", "torch", "numpy", "dill"} & set(names), source
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in ("load", "loads", "Unpickler"), (source, node.lineno)
