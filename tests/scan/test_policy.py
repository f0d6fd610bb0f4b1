"""The allow/deny policy: default deny, per callable, dangerous never allowable."""

from __future__ import annotations

import pytest

from trainguard.core.errors import UsageError
from trainguard.core.findings import Verdict
from trainguard.scan.policy import (
    ALLOWLIST,
    DANGEROUS_CALLABLES,
    DANGEROUS_MODULES,
    Policy,
    combine_verdicts,
)

POLICY = Policy.default()


@pytest.mark.parametrize(
    "qualified",
    [
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch.FloatStorage",
        "torch.BFloat16Storage",
        "torch.storage.UntypedStorage",
        "torch.bfloat16",
        "torch.Size",
        "collections.OrderedDict",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.random._pickle.__randomstate_ctor",
        "_codecs.encode",
        "builtins.set",
        "builtins.slice",
    ],
)
def test_real_checkpoint_globals_are_safe(qualified: str) -> None:
    module, _, name = qualified.rpartition(".")
    result = POLICY.classify(module, name)
    assert result.verdict is Verdict.SAFE, result.reason


@pytest.mark.parametrize(
    "qualified",
    [
        "transformers.training_args.TrainingArguments",
        "mypkg.models.MyNet",
        "__main__.Net",
        "argparse.Namespace",
        "functools.partial",
        "torch.nn.modules.linear.Linear",
        "numpy.size",
        "pathlib.PosixPath",
    ],
)
def test_unlisted_globals_are_unknown(qualified: str) -> None:
    module, _, name = qualified.rpartition(".")
    assert POLICY.classify(module, name).verdict is Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("os.path", "join"),
        ("builtins", "getattr"),
        ("__builtin__", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("asyncio.unix_events", "_UnixSubprocessTransport._start"),
        ("pathlib", "os.system"),
        ("torch", "os.system"),
        ("torch.nn", "Module.__reduce__.__globals__"),
        ("numpy", "__builtins__"),
        ("torch.serialization", "load"),
        ("torch", "load"),
        ("_operator", "attrgetter"),
        ("_io", "FileIO"),
        ("importlib", "import_module"),
        ("pkgutil", "resolve_name"),
        ("mymodule", "sys"),
        ("mypkg", "Runner.system"),
    ],
)
def test_dangerous_globals(module: str, name: str) -> None:
    result = POLICY.classify(module, name)
    assert result.verdict is Verdict.MALICIOUS, (module, name, result)


@pytest.mark.parametrize(
    ("module", "name"),
    [("os system", "x"), (".os", "system"), ("os", ""), ("mod", "a..b"), ("m", "<locals>.f")],
)
def test_non_identifier_names_are_evasive(module: str, name: str) -> None:
    result = POLICY.classify(module, name)
    assert result.verdict is Verdict.MALICIOUS and result.evasive


def test_user_attributes_named_like_stdlib_modules_are_not_dangerous() -> None:
    # Only os/sys/... reached through another module count; "code" or "test" do not.
    assert POLICY.classify("mypkg", "Config.code").verdict is Verdict.UNKNOWN
    assert POLICY.classify("mypkg.test_utils", "helper").verdict is Verdict.UNKNOWN


def test_extra_allow_turns_unknown_into_safe() -> None:
    policy = Policy.default(extra_allow=["mypkg.models.MyNet"])
    assert policy.classify("mypkg.models", "MyNet").verdict is Verdict.SAFE
    assert policy.classify("mypkg.models", "Other").verdict is Verdict.UNKNOWN


@pytest.mark.parametrize(
    "entry", ["os.system", "builtins.eval", "posix.system", "torch.load", "numpy.__builtins__"]
)
def test_extra_allow_never_allows_dangerous(entry: str) -> None:
    with pytest.raises(UsageError, match="dangerous"):
        Policy.default(extra_allow=[entry])


@pytest.mark.parametrize("entry", ["torch", "mypkg.*", "", "a b.c"])
def test_extra_allow_rejects_module_wide_or_malformed(entry: str) -> None:
    with pytest.raises(UsageError, match=r"MODULE\.NAME"):
        Policy.default(extra_allow=[entry])


def test_tables_do_not_overlap() -> None:
    for qualified in ALLOWLIST:
        module, _, name = qualified.rpartition(".")
        assert POLICY.classify(module, name).verdict is Verdict.SAFE, qualified
        assert ALLOWLIST[qualified], f"{qualified} needs a reason"
    for table in (DANGEROUS_MODULES, DANGEROUS_CALLABLES):
        for qualified, reason in table.items():
            assert reason, qualified
            assert qualified not in ALLOWLIST


def test_allowlist_is_per_callable() -> None:
    # modelscan #330: numpy.* globals only, but numpy.size is not a safe callable.
    assert POLICY.classify("numpy", "size").verdict is Verdict.UNKNOWN
    assert POLICY.classify("collections", "OrderedDict.fromkeys").verdict is Verdict.UNKNOWN


def test_combine_verdicts() -> None:
    assert combine_verdicts([]) is Verdict.SAFE
    assert combine_verdicts([Verdict.SAFE, Verdict.UNKNOWN]) is Verdict.UNKNOWN
    assert combine_verdicts([Verdict.ERROR, Verdict.UNKNOWN]) is Verdict.ERROR
    assert combine_verdicts([Verdict.ERROR, Verdict.MALICIOUS]) is Verdict.MALICIOUS


def test_mutation_and_argument_tables() -> None:
    assert POLICY.allows_mutation("collections.OrderedDict", "build")
    assert not POLICY.allows_mutation("torch._utils._rebuild_tensor_v2", "build")
    assert POLICY.check_call("_codecs.encode", ("x", "latin1")) is None
    assert POLICY.check_call("_codecs.encode", ("x", "zlib")) is not None


def test_reason_names_the_spelling_used_whatever_the_hash_seed() -> None:
    # Scan output must be reproducible: the reason once came from iterating a set of
    # {name, alias}, so it read "os: ..." or "posix: ..." depending on PYTHONHASHSEED.
    import os
    import subprocess
    import sys

    code = (
        "from trainguard.scan.policy import Policy; p = Policy.default();"
        "print(p.classify('posix', 'system').reason); print(p.classify('_pickle', 'loads').reason)"
    )
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    posix, pickle_loads = outputs.pop().splitlines()
    assert posix.startswith("posix:") and pickle_loads.startswith("_pickle:")
