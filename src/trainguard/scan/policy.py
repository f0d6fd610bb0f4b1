"""Allow/deny policy for pickle globals: default deny, per callable, with reasons.

Three outcomes for an imported ``module.name``:

- ``malicious``: the name is in the curated table of dangerous callables and
  gadgets (:data:`DANGEROUS_MODULES`, :data:`DANGEROUS_CALLABLES`,
  :data:`DANGEROUS_ATTRIBUTES`), or spelled to evade one (non-identifier
  characters, attribute walks through dunders, a dangerous module reached through
  another module's attribute such as ``pathlib`` + ``os.system``). Referencing such
  a global is enough: a pickle has no reason to import ``os.system`` but to call it.
- ``safe``: the exact name is in :data:`ALLOWLIST` (or in ``extra_allow``). Every
  entry names one callable, never a module, and says why calling it with any
  arguments the pickle can build is harmless.
- ``unknown``: everything else (a user's own class, HF ``TrainingArguments``...).

``extra_allow`` turns *unknown* into *safe* only: a dangerous name stays dangerous
whatever the configuration says, because the adversary can edit configuration too
(:class:`trainguard.core.errors.UsageError` is raised for such an entry).
"""

from __future__ import annotations

import _compat_pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainguard.core.errors import UsageError
from trainguard.core.findings import Verdict
from trainguard.core.record import FrozenRecord

# --------------------------------------------------------------------------------------
# Allowlist: exact "module.name" -> why calling it (or using it as a value) is harmless.
# --------------------------------------------------------------------------------------

_TORCH_DTYPES = [
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "complex32",
    "complex64",
    "complex128",
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "int1",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
    "uint1",
    "uint2",
    "uint3",
    "uint4",
    "uint5",
    "uint6",
    "uint7",
    "half",
    "float",
    "double",
    "long",
    "int",
    "short",
    "cfloat",
    "cdouble",
    "chalf",
]

STORAGE_DTYPES: Mapping[str, str] = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ByteStorage": "uint8",
    "CharStorage": "int8",
    "ShortStorage": "int16",
    "IntStorage": "int32",
    "LongStorage": "int64",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QUInt8Storage": "quint8",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
"""Legacy typed storage class -> element dtype (torch.storage._dtype_to_storage_type_map)."""

_STORAGE_REASON = (
    "torch storage type named in a persistent id; the loader reads raw bytes of this "
    "dtype from the archive and runs no code"
)


def _torch_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for cls in STORAGE_DTYPES:
        entries[f"torch.{cls}"] = _STORAGE_REASON
        if not cls.startswith("Q"):
            entries[f"torch.cuda.{cls}"] = _STORAGE_REASON + " (legacy CUDA class name)"
    entries["torch.storage.UntypedStorage"] = _STORAGE_REASON
    entries["torch.storage.TypedStorage"] = _STORAGE_REASON
    entries["torch.UntypedStorage"] = _STORAGE_REASON
    entries["torch.TypedStorage"] = _STORAGE_REASON
    for dtype in _TORCH_DTYPES:
        entries[f"torch.{dtype}"] = "torch dtype constant (a value, pickled by name)"
    for name in ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc"):
        entries[f"torch.{name}"] = "torch layout constant"
    for name in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
        entries[f"torch.{name}"] = "torch memory-format constant"
    for name in (
        "per_tensor_affine",
        "per_tensor_symmetric",
        "per_channel_affine",
        "per_channel_symmetric",
        "per_channel_affine_float_qparams",
    ):
        entries[f"torch.{name}"] = "torch quantization scheme constant"
    rebuild = (
        "torch tensor rebuild function (in torch.load's weights_only allowlist): makes a "
        "tensor view over a storage the loader already read; arguments are plain data"
    )
    for fn in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_wrapper_subclass",
    ):
        entries[f"torch._utils.{fn}"] = rebuild
    entries["torch._tensor._rebuild_from_type_v2"] = (
        "rebuilds a tensor subclass: calls its func argument, which the pickle can only "
        "supply as another global (classified on its own)"
    )
    entries["torch.nn.parameter.Parameter"] = "torch Parameter class (a tensor wrapper)"
    entries["torch.Size"] = "tuple subclass of ints (tensor shapes)"
    entries["torch.device"] = "device descriptor built from a string such as 'cpu'"
    entries["torch.serialization._get_layout"] = "maps a layout name string to a constant"
    return entries


_ALLOW: dict[str, str] = {
    **_torch_entries(),
    "collections.OrderedDict": "ordered dict (state_dict container); stores plain items",
    "collections.defaultdict": (
        "dict with a default factory; the factory must itself be an allowlisted global"
    ),
    "collections.Counter": "dict subclass of counts",
    "collections.deque": "double-ended queue of items",
    "copyreg._reconstructor": (
        "protocol 0/1 object rebuild: calls base.__new__/base.__init__ of two globals that "
        "are classified on their own"
    ),
    "builtins.object": "plain object base (copyreg._reconstructor argument)",
    "builtins.set": "set of items",
    "builtins.frozenset": "frozenset of items",
    "builtins.slice": "slice of three plain values",
    "builtins.complex": "complex number from two floats",
    "builtins.range": "range of ints (lazy, no allocation)",
    "builtins.bytearray": "bytearray from bytes (arguments checked: no integer sizes)",
    "builtins.bytes": "empty bytes as protocol < 3 writes it (arguments checked)",
    "builtins.int": "int from a plain value",
    "builtins.float": "float from a plain value",
    "builtins.str": "str from a plain value",
    "builtins.tuple": "tuple from items",
    "builtins.list": "list from items (also a defaultdict factory)",
    "builtins.dict": "dict from items (also a defaultdict factory)",
    "builtins.bool": "bool from a plain value",
    "_codecs.encode": (
        "protocol-2 spelling of a bytes object: encode(str, 'latin1'); arguments are "
        "checked, any other codec or operand makes the call unknown"
    ),
    "datetime.datetime": "timestamp value",
    "datetime.date": "date value",
    "datetime.time": "time value",
    "datetime.timedelta": "duration value",
    "datetime.timezone": "fixed-offset timezone value",
    "decimal.Decimal": "decimal number value",
    "fractions.Fraction": "rational number value",
    "uuid.UUID": "UUID value (the class only; uuid's helpers are denied)",
    "numpy.ndarray": "numpy array class (subtype argument of _reconstruct)",
    "numpy.dtype": "numpy dtype descriptor built from a type string",
    "numpy.core.multiarray._reconstruct": "numpy array rebuild (numpy < 2 module path)",
    "numpy._core.multiarray._reconstruct": "numpy array rebuild (numpy >= 2 module path)",
    "numpy.core.multiarray.scalar": "numpy scalar from dtype and raw bytes (numpy < 2)",
    "numpy._core.multiarray.scalar": "numpy scalar from dtype and raw bytes (numpy >= 2)",
    "numpy.random._pickle.__randomstate_ctor": "rebuilds a legacy RandomState (RNG state)",
    "numpy.random._pickle.__generator_ctor": "rebuilds a numpy Generator (RNG state)",
    "numpy.random._pickle.__bit_generator_ctor": "rebuilds a numpy bit generator by name",
    "numpy.random.mtrand.RandomState": "legacy numpy RNG class",
    "numpy.random._generator.Generator": "numpy Generator class",
    "numpy.random._mt19937.MT19937": "numpy bit generator class",
    "numpy.random._pcg64.PCG64": "numpy bit generator class",
    "numpy.random._pcg64.PCG64DXSM": "numpy bit generator class",
    "numpy.random._philox.Philox": "numpy bit generator class",
    "numpy.random._sfc64.SFC64": "numpy bit generator class",
    "numpy.random.bit_generator.SeedSequence": "numpy seed sequence class",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": (
        "Cython unpickle helper: SeedSequence.__new__ plus its state"
    ),
}

for _dt in [
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "Int8DType",
    "Int16DType",
    "Int32DType",
    "Int64DType",
    "UInt8DType",
    "UInt16DType",
    "UInt32DType",
    "UInt64DType",
    "BoolDType",
    "Complex64DType",
    "Complex128DType",
    "StrDType",
    "BytesDType",
    "VoidDType",
    "ObjectDType",
    "DateTime64DType",
    "TimeDelta64DType",
    "LongDoubleDType",
    "CLongDoubleDType",
]:
    # numpy >= 1.25 can pickle a dtype through its DType class.
    _ALLOW[f"numpy.dtypes.{_dt}"] = "numpy DType class"

ALLOWLIST: Mapping[str, str] = _ALLOW
"""Every allowlisted callable, ``"module.name": "why it is safe"``."""

MUTABLE_RESULTS: Mapping[str, frozenset[str]] = {
    "collections.OrderedDict": frozenset({"build", "setitem"}),
    "collections.defaultdict": frozenset({"build", "setitem"}),
    "collections.Counter": frozenset({"build", "setitem"}),
    "collections.deque": frozenset({"append"}),
    "builtins.set": frozenset({"additem"}),
    "builtins.list": frozenset({"append"}),
    "builtins.dict": frozenset({"setitem"}),
    "builtins.object": frozenset({"build"}),
    "copyreg._reconstructor": frozenset({"build"}),
    "numpy.dtype": frozenset({"build"}),
    "numpy.core.multiarray._reconstruct": frozenset({"build"}),
    "numpy._core.multiarray._reconstruct": frozenset({"build"}),
    "numpy.random._pickle.__randomstate_ctor": frozenset({"build"}),
    "numpy.random._pickle.__generator_ctor": frozenset({"build"}),
    "numpy.random._pickle.__bit_generator_ctor": frozenset({"build"}),
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": frozenset({"build"}),
    "datetime.datetime": frozenset({"build"}),
}
"""Allowlisted callables whose *results* may then be mutated, and by which opcodes.

``build`` (BUILD: ``__setstate__`` or ``__dict__`` update), ``append``
(APPEND/APPENDS), ``setitem`` (SETITEM/SETITEMS), ``additem`` (ADDITEMS). Any other
mutation of an allowlisted result is *unknown*: e.g. BUILD on a tensor would run
``Tensor.__setstate__`` and ``set_()`` with attacker geometry (CVE-2026-24747 class).
"""

# --------------------------------------------------------------------------------------
# Deny tables.
# --------------------------------------------------------------------------------------

_EXEC = "runs arbitrary code"
_PROC = "starts processes or changes the process"
_FILE = "reads or writes files"
_NET = "opens network connections (exfiltration, downloads)"
_IMPORT = "imports modules or resolves callables from strings (hides the real target)"
_NESTED = "deserialises nested data with an unsafe loader (pickle in pickle)"
_GADGET = "call/attribute gadget that reaches arbitrary callables"

DANGEROUS_MODULES: Mapping[str, str] = {
    # processes, OS, FFI
    "os": _PROC,
    "posix": _PROC,
    "nt": _PROC,
    "posixpath": _FILE,
    "ntpath": _FILE,
    "genericpath": _FILE,
    "subprocess": _PROC,
    "_posixsubprocess": _PROC,
    "_winapi": _PROC,
    "msvcrt": _PROC,
    "winreg": _PROC,
    "pty": _PROC,
    "shutil": _FILE,
    "signal": _PROC,
    "resource": _PROC,
    "fcntl": _FILE,
    "mmap": _FILE,
    "ctypes": "foreign function interface: calls any C function",
    "_ctypes": "foreign function interface: calls any C function",
    "cffi": "foreign function interface: calls any C function",
    "multiprocessing": _PROC,
    "_multiprocessing": _PROC,
    "concurrent": _PROC,
    "threading": _PROC,
    "_thread": _PROC,
    "atexit": "registers code to run at exit",
    "sys": "interpreter internals (sys.modules, settrace, exit)",
    "gc": "reaches every live object (gc.get_objects)",
    "platform": "runs shell commands (platform.popen and helpers)",
    "_aix_support": "runs shell commands (_read_cmd_output), GHSA-g38g-8gr9-h9xp",
    "_osx_support": "runs shell commands (_read_output, _find_build_tool), GHSA-g38g-8gr9-h9xp",
    "_interpreters": _EXEC,
    "_xxsubinterpreters": _EXEC,
    "_xxinterpchannels": _EXEC,
    "interpreters": _EXEC,
    # code execution and compilation
    "code": _EXEC,
    "codeop": _EXEC,
    "runpy": _EXEC,
    "trace": "trace.Trace.run executes code",
    "profile": "profile.run executes code",
    "cProfile": "cProfile.run executes code",
    "timeit": "timeit.timeit executes code strings",
    "pdb": _EXEC,
    "bdb": _EXEC,
    "doctest": "doctest.debug_script executes code",
    "idlelib": "IDLE helpers execute code (runcode, runcommand)",
    "lib2to3": "grammar loaders unpickle files (Grammar.loads)",
    "pydoc": "pydoc.locate resolves names; pydoc.pipepager runs shell commands",
    "_pyrepl": "pager helpers run shell commands (pipe_pager)",
    "rlcompleter": _EXEC,
    "test": "test.support helpers run interpreters (assert_python_ok)",
    "tkinter": "Tcl interpreter evaluates strings",
    "turtle": "imports tkinter",
    "marshal": "loads code objects",
    "compileall": _FILE,
    "py_compile": _FILE,
    "site": "site.addsitedir executes .pth files",
    "sitecustomize": _EXEC,
    "usercustomize": _EXEC,
    "ensurepip": "runs pip (_run_pip)",
    "venv": "creates environments and runs pip",
    "pip": "installs packages whose build hooks run code (CVE-2025-1716)",
    "setuptools": "builds and runs packages",
    "distutils": "spawns processes and writes files (spawn, file_util.write_file)",
    "pkg_resources": "loads entry points",
    "importlib": _IMPORT,
    "imp": _IMPORT,
    "pkgutil": _IMPORT + " (pkgutil.resolve_name, GHSA-vvpj-8cmc-gx39)",
    "zipimport": _IMPORT,
    "inspect": _IMPORT + " (inspect.getattr_static)",
    "linecache": _FILE,
    "difflib": "listed by fickling as unsafe import (GHSA reports)",
    "mailcap": "mailcap.findmatch builds shell commands",
    "pipes": _PROC,
    "asyncio": "event loop with subprocess transports (asyncio.unix_events, CVE-2025-10157)",
    "uvloop": _PROC,
    # files
    "tempfile": _FILE,
    "glob": _FILE,
    "fileinput": _FILE,
    "filecmp": _FILE,
    "tarfile": _FILE,
    "zipfile": _FILE,
    "gzip": _FILE,
    "bz2": _FILE,
    "lzma": _FILE,
    "zipapp": _FILE,
    "shelve": _NESTED,
    "dbm": _FILE,
    "sqlite3": _FILE,
    "logging.config": "logging.config.listen executes received configuration",
    "logging.handlers": _FILE + " and sockets",
    # network
    "socket": _NET,
    "_socket": _NET,
    "socketserver": _NET,
    "ssl": _NET + " (ssl.get_server_certificate DNS exfiltration)",
    "_ssl": _NET,
    "select": _NET,
    "selectors": _NET,
    "http": _NET,
    "urllib": _NET,
    "urllib3": _NET,
    "requests": _NET,
    "httpx": _NET,
    "aiohttp": _NET,
    "ftplib": _NET,
    "smtplib": _NET + " (GHSA-mxhj-88fx-4pcv)",
    "smtpd": _NET,
    "imaplib": _NET + " (IMAP4_stream runs commands)",
    "poplib": _NET,
    "telnetlib": _NET,
    "nntplib": _NET,
    "xmlrpc": _NET,
    "wsgiref": _NET,
    "webbrowser": "opens URLs with external programs",
    "antigravity": "opens a web browser",
    "paramiko": _NET,
    "pexpect": _PROC,
    "sh": _PROC,
    "plumbum": _PROC,
    "docker": _PROC,
    "boto3": _NET,
    "botocore": _NET,
    "fsspec": _NET,
    "s3fs": _NET,
    "gcsfs": _NET,
    "huggingface_hub": _NET,
    "mlflow.projects": "runs project entry points (_run_entry_point)",
    # nested deserialisers
    "pickle": _NESTED,
    "_pickle": _NESTED,
    "pickletools": _NESTED,
    "copy_reg": _NESTED,
    "cloudpickle": _NESTED + " and rebuilds functions (_make_function, subimport)",
    "dill": _NESTED,
    "joblib": _NESTED,
    "jsonpickle": _NESTED,
    "yaml": _NESTED,
    "_yaml": _NESTED,
    "numpy.testing": "numpy.testing._private.utils.runstring executes code",
    "numpy.f2py": "f2py helpers evaluate expressions (getlincoef)",
    "numpy.distutils": _PROC,
    "numpy.ctypeslib": "foreign function interface",
    "numpy.lib.npyio": _NESTED,
    "numpy.lib.format": _NESTED,
    "pandas.io": _FILE + " and URLs (read_csv exfiltration, modelscan #338)",
    # torch
    "torch.serialization": _NESTED,
    "torch.hub": "downloads and runs repository code",
    "torch.package": "imports code stored in packages",
    "torch.jit": "compiles and runs TorchScript (unsupported_tensor_ops.execWrapper)",
    "torch._dynamo": "guard builders evaluate strings (GuardBuilder.get)",
    "torch._inductor": "compiles and loads native code (codecache.compile_file)",
    "torch._export": "loads serialized programs",
    "torch.export": "loads serialized programs",
    "torch.fx": "generates and executes Python code (GraphModule, symbolic_shapes)",
    "torch.utils.bottleneck": "runs profilers on code (run_cprofile)",
    "torch.utils.collect_env": "runs shell commands (run, run_and_read_all)",
    "torch.utils._config_module": "ConfigModule.load_config unpickles (pickle in pickle)",
    "torch.utils.data.datapipes": "decoder handlers unpickle data (basichandlers)",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.utils.tensorboard": _FILE,
    "torch.distributed": "remote procedure calls and process launchers",
    "torch.multiprocessing": _PROC,
    "torch.testing._internal": _PROC,
    "torch.onnx": _FILE,
    "transformers.dynamic_module_utils": "downloads and imports remote code",
}
"""Module (and every submodule) -> why any global from it is dangerous."""

DANGEROUS_CALLABLES: Mapping[str, str] = {
    **{
        f"builtins.{name}": _EXEC
        for name in ("eval", "exec", "compile", "__import__", "__build_class__", "execfile")
    },
    **{
        f"builtins.{name}": _GADGET
        for name in (
            "getattr",
            "setattr",
            "delattr",
            "globals",
            "locals",
            "vars",
            "dir",
            "type",
            "super",
            "memoryview",
            "classmethod",
            "staticmethod",
            "property",
        )
    },
    "builtins.open": _FILE,
    "io.open": _FILE,
    "io.open_code": _FILE,
    "io.FileIO": _FILE + " (as _io.FileIO, GHSA-9726-w42j-3qjr)",
    "io._io": _FILE,
    "builtins.file": _FILE,
    "builtins.input": "reads the terminal",
    "builtins.raw_input": "reads the terminal",
    "builtins.breakpoint": _EXEC,
    "builtins.help": "imports modules and runs a pager",
    "builtins.exit": _PROC,
    "builtins.quit": _PROC,
    "builtins.reload": _IMPORT,
    "builtins.__loader__": _IMPORT,
    "builtins.__spec__": _IMPORT,
    "operator.attrgetter": _GADGET,
    "operator.methodcaller": _GADGET,
    "operator.itemgetter": _GADGET,
    "operator.call": _GADGET,
    "operator.setitem": _GADGET,
    "operator.delitem": _GADGET,
    "operator.getitem": _GADGET,
    "operator.__getitem__": _GADGET,
    "functools.reduce": _GADGET,
    "types.CodeType": "builds arbitrary bytecode (GHSA-9m3x-qqw2-h32h)",
    "types.FunctionType": "builds functions from code objects",
    "types.LambdaType": "builds functions from code objects",
    "types.MethodType": "binds arbitrary callables",
    "types.ModuleType": _IMPORT,
    "types.CellType": _GADGET,
    "types.new_class": _EXEC,
    "copyreg.add_extension": "changes how later pickles resolve EXT codes",
    "copyreg.remove_extension": "changes how later pickles resolve EXT codes",
    "copyreg.clear_extension_cache": "changes how later pickles resolve EXT codes",
    "copyreg._extension_registry": "changes how later pickles resolve EXT codes",
    "copyreg._inverted_registry": "changes how later pickles resolve EXT codes",
    "copyreg._extension_cache": "changes how later pickles resolve EXT codes",
    "copyreg.dispatch_table": "changes how objects pickle",
    "copyreg.pickle": "changes how objects pickle",
    "copyreg.constructor": "changes how objects pickle",
    "uuid._get_command_stdout": "runs shell commands (GHSA-g38g-8gr9-h9xp)",
    "uuid._popen": "runs shell commands",
    "logging.FileHandler": _FILE + " (GHSA-m7j5-r2p5-c39r)",
    "logging.basicConfig": _FILE,
    "logging.config": "executes received configuration",
    "torch.load": _NESTED + " (functools.partial(torch.load, ...), weights_only=False)",
    "torch.storage._load_from_bytes": _NESTED + " (torch.load(weights_only=False) of bytes)",
    "torch._utils._rebuild_xla_tensor": "imports torch_xla at load time",
    "torch.compile": "compiles and runs code",
    "torch.from_file": _FILE,
    "torch.save": _FILE,
    "torch._C._jit_compile": _EXEC,
    "numpy.load": _NESTED + " (allow_pickle)",
    "numpy.save": _FILE,
    "numpy.savez": _FILE,
    "numpy.savez_compressed": _FILE,
    "numpy.savetxt": _FILE,
    "numpy.loadtxt": _FILE,
    "numpy.genfromtxt": _FILE,
    "numpy.fromfile": _FILE,
    "numpy.memmap": _FILE,
    "numpy.DataSource": _NET,
    "numpy.lib.npyio": _NESTED,
    "numpy.__builtins__": _GADGET + " (numpy.size BUILD gadget, modelscan #330)",
    "pandas.read_pickle": _NESTED,
    "pandas.eval": _EXEC,
    "pandas.read_csv": _NET + " (modelscan #338)",
    "pandas.read_table": _NET,
    "pandas.read_json": _NET,
    "pandas.read_html": _NET,
    "pandas.read_excel": _FILE,
    "pandas.read_parquet": _FILE,
    "pandas.read_sql": _NET,
    "pandas.read_xml": _NET,
    "pandas.read_fwf": _FILE,
    "pandas.read_feather": _FILE,
    "pandas.read_hdf": _FILE,
    "pandas.read_orc": _FILE,
    "pandas.read_sas": _FILE,
    "pandas.read_spss": _FILE,
    "pandas.read_stata": _FILE,
    "pandas.read_clipboard": _PROC,
}
"""Exact callable -> why it is dangerous (modules that are mostly harmless)."""

DANGEROUS_ATTRIBUTES: Mapping[str, str] = dict.fromkeys(
    (
        "__builtins__",
        "__globals__",
        "__code__",
        "__closure__",
        "__subclasses__",
        "__import__",
        "__loader__",
        "__spec__",
        "__dict__",
        "__class__",
        "__bases__",
        "__base__",
        "__mro__",
        "__getattribute__",
        "__getattr__",
        "__setattr__",
        "__delattr__",
        "__reduce__",
        "__reduce_ex__",
        "__func__",
        "__self__",
        "__wrapped__",
        "__init_subclass__",
        "__call__",
        "__get__",
        "__set__",
        "__setstate__",
        "__getstate__",
        "__module__",
        "f_globals",
        "f_locals",
        "f_back",
        "gi_frame",
        "cr_frame",
        "tb_frame",
        "func_globals",
    ),
    "attribute walk into interpreter internals (reaches builtins, code or globals)",
)
"""Attribute names that are dangerous anywhere in a dotted protocol-4 name."""

DANGEROUS_METHODS: frozenset[str] = frozenset(
    [
        "system",
        "popen",
        "popen2",
        "popen3",
        "popen4",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "fork",
        "forkpty",
        "eval",
        "exec",
        "compile",
        "import_module",
        "load_module",
        "exec_module",
        "run_path",
        "run_module",
        "runcode",
        "runsource",
        "runcommand",
        "write_text",
        "write_bytes",
        "unlink",
        "rmtree",
        "remove",
        "removedirs",
        "rmdir",
        "rename",
        "renames",
        "replace",
        "symlink_to",
        "hardlink_to",
        "chmod",
        "chown",
        "truncate",
        "kill",
        "killpg",
        "loads",
        "load_config",
        "from_pretrained",
        "urlopen",
        "urlretrieve",
        "check_output",
        "check_call",
        "getoutput",
        "getstatusoutput",
        "Popen",
        "startfile",
    ]
)
"""Last attribute of a dotted name (``Class.method``) that makes it dangerous."""

WALK_HEADS: frozenset[str] = frozenset(
    [
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "builtins",
        "__builtin__",
        "importlib",
        "ctypes",
        "pty",
        "socket",
        "shutil",
        "marshal",
        "pickle",
        "_pickle",
        "runpy",
        "multiprocessing",
        "pkgutil",
        "asyncio",
        "codeop",
        "webbrowser",
        "urllib",
        "http",
        "signal",
        "_posixsubprocess",
        "io",
        "_io",
        "tempfile",
        "inspect",
        "types",
        "operator",
    ]
)
"""Attribute names that, reached through another module (``pathlib.os``), are that module.

Only these count inside a dotted name: a user attribute called ``code`` or ``test``
is not the stdlib module of that name, but ``os`` reached through ``pathlib`` is.
"""

MODULE_ALIASES: Mapping[str, str] = {
    "posix": "os",
    "nt": "os",
    "__builtin__": "builtins",
    "_io": "io",
    "_pickle": "pickle",
    "cPickle": "pickle",
    "_operator": "operator",
    "_functools": "functools",
    "copy_reg": "copyreg",
    "commands": "subprocess",
    "_posixsubprocess": "subprocess",
    "_socket": "socket",
    "numpy._core": "numpy.core",
}
"""Implementation or Python 2 module names and the public module they stand for.

Classification checks both spellings: ``_operator.attrgetter`` is as dangerous as
``operator.attrgetter``; ``__builtin__.eval`` is dangerous even in a protocol-3
pickle where the real unpickler would not map the name.
"""

# --------------------------------------------------------------------------------------
# Argument checks for allowlisted callables whose safety depends on their arguments.
# --------------------------------------------------------------------------------------

ArgCheck = Callable[[Any], str | None]


def _check_codecs_encode(args: Any) -> str | None:
    if (
        isinstance(args, tuple)
        and len(args) == 2
        and isinstance(args[1], str)
        and args[1].lower().replace("-", "").replace("_", "") == "latin1"
        and (isinstance(args[0], str) or type(args[0]).__name__ == "LazyStr")
    ):
        return None
    return "_codecs.encode is only allowed as encode(<str>, 'latin1'), the protocol-2 bytes form"


def _check_bytes_like(args: Any) -> str | None:
    if isinstance(args, tuple) and len(args) <= 1:
        if not args:
            return None
        first = args[0]
        if isinstance(first, (bytes, bytearray)) or type(first).__name__ == "LazyBytes":
            return None
        if type(first).__name__ == "Call" and getattr(first, "target", None) == "_codecs.encode":
            return None
    return "bytes/bytearray may only wrap bytes (an integer size would allocate memory)"


ARG_CHECKS: Mapping[str, ArgCheck] = {
    "_codecs.encode": _check_codecs_encode,
    "builtins.bytearray": _check_bytes_like,
    "builtins.bytes": _check_bytes_like,
}
"""Allowlisted callables that are only safe with certain arguments."""


# --------------------------------------------------------------------------------------
# Policy.
# --------------------------------------------------------------------------------------


class Classification(FrozenRecord):
    """The policy's answer for one global: its ``verdict`` (``safe``, ``unknown`` or
    ``malicious``), the ``reason`` (the allowlist or denylist reason, or what made the
    name evasive), and whether the name is ``evasive`` (spelled to dodge a denylist,
    not merely dangerous)."""

    __slots__ = ("evasive", "reason", "verdict")
    verdict: Verdict
    reason: str
    evasive: bool

    def __init__(self, verdict: Verdict, reason: str, evasive: bool = False) -> None:
        """Freeze the answer."""
        _set = object.__setattr__
        _set(self, "verdict", verdict)
        _set(self, "reason", reason)
        _set(self, "evasive", evasive)


_SAFE_UNLISTED = Classification(Verdict.UNKNOWN, "not in the allowlist (default deny)")


def combine_verdicts(verdicts: Iterable[Verdict]) -> Verdict:
    """Combine part verdicts: malicious beats error beats unknown beats safe.

    A file that is both partly malicious and partly unparseable is malicious: the
    payload before the break is what a real loader runs (nullifAI, B05).
    """
    seen = set(verdicts)
    for verdict in (Verdict.MALICIOUS, Verdict.ERROR, Verdict.UNKNOWN):
        if verdict in seen:
            return verdict
    return Verdict.SAFE


def _is_identifier_path(path: str) -> bool:
    return bool(path) and all(part.isidentifier() for part in path.split("."))


def _prefixes(parts: list[str]) -> Iterable[str]:
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


class Policy:
    """Default-deny classification of pickle globals (see the module docstring)."""

    __slots__ = ("_allow", "_cache", "_extensions", "_extra", "extra_allow")

    def __init__(
        self,
        allow: Mapping[str, str] = ALLOWLIST,
        extra_allow: Iterable[str] = (),
        extensions: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        """Build a policy; prefer :meth:`default`.

        Args:
            allow: the allowlist table.
            extra_allow: further exact ``module.name`` entries (``--allow``, config).
            extensions: the copyreg extension registry of the loading process
                (code -> (module, name)); empty in a stock interpreter.

        Raises:
            UsageError: an ``extra_allow`` entry is malformed, module-wide, or names a
                dangerous callable.
        """
        extra: list[str] = []
        self._cache: dict[tuple[str, str], Classification] = {}
        self._allow = dict(allow)
        self._extra: dict[str, str] = {}
        self._extensions = dict(extensions or {})
        for entry in extra_allow:
            name = entry.strip()
            module, _, attr = name.rpartition(".")
            if not module or not attr or not _is_identifier_path(name):
                raise UsageError(
                    f"--allow {entry!r}: expected an exact MODULE.NAME such as "
                    "'mypkg.models.MyConfig' (module-wide wildcards are not accepted)"
                )
            danger = self._danger(module, attr)
            if danger is not None:
                raise UsageError(
                    f"--allow {name}: refusing to allow a known-dangerous callable "
                    f"({danger.reason}); dangerous globals cannot be allowlisted"
                )
            self._extra[name] = "allowed by configuration (--allow / config file)"
            extra.append(name)
        self.extra_allow: tuple[str, ...] = tuple(extra)
        """The configured additions, as given."""

    @classmethod
    def default(
        cls,
        extra_allow: Iterable[str] = (),
        extensions: Mapping[int, tuple[str, str]] | None = None,
    ) -> Policy:
        """The built-in tables plus the caller's exact additions."""
        return cls(ALLOWLIST, extra_allow, extensions)

    def extension(self, code: int) -> tuple[str, str] | None:
        """The (module, name) registered for an EXT code, or None (stock: always None)."""
        return self._extensions.get(code)

    def allows_mutation(self, target: str, operation: str) -> bool:
        """True when the result of allowlisted ``target`` may receive ``operation``."""
        ops = MUTABLE_RESULTS.get(target)
        return ops is not None and operation in ops

    def check_call(self, target: str, args: Any) -> str | None:
        """Why calling allowlisted ``target`` with ``args`` is not safe, or None."""
        check = ARG_CHECKS.get(target)
        return check(args) if check is not None else None

    def classify(self, module: str, name: str) -> Classification:
        """Classify the global ``module.name`` (after the unpickler's own name mapping)."""
        key = (module, name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._classify(module, name)
        if len(self._cache) < 65536:
            self._cache[key] = result
        return result

    def _classify(self, module: str, name: str) -> Classification:
        if not _is_identifier_path(module) or not _is_identifier_path(name):
            return Classification(
                Verdict.MALICIOUS,
                "module or name is not a dotted Python identifier (evasion: real pickles "
                "only name importable objects)",
                evasive=True,
            )
        qualified = f"{module}.{name}"
        builtin = self._allow.get(qualified)
        if builtin is not None and qualified not in DANGEROUS_CALLABLES:
            # A vetted exact entry beats a module-wide denial of its module
            # (torch.serialization._get_layout is in torch's own weights_only list).
            return Classification(Verdict.SAFE, builtin)
        danger = self._danger(module, name)
        if danger is not None:
            return danger
        extra = self._extra.get(qualified)
        if extra is not None:
            return Classification(Verdict.SAFE, extra)
        return _SAFE_UNLISTED

    def _danger(self, module: str, name: str) -> Classification | None:
        """The dangerous classification of ``module.name``, or None when not dangerous."""
        mod_parts = module.split(".")
        name_parts = name.split(".")
        candidates = [module]
        alias = _alias(module)
        if alias != module:
            candidates.append(alias)
        mapped = _compat_pickle.NAME_MAPPING.get((module, name))
        if mapped is not None:
            candidates.append(mapped[0])
            name_parts_mapped = mapped[1].split(".")
        else:
            name_parts_mapped = name_parts
        for mod in candidates:
            for parts in (name_parts, name_parts_mapped):
                hit = self._danger_path(mod.split(".") + parts)
                if hit is not None:
                    return hit
        for part in mod_parts + name_parts:
            if part in DANGEROUS_ATTRIBUTES:
                return Classification(
                    Verdict.MALICIOUS, f"{part}: {DANGEROUS_ATTRIBUTES[part]}", evasive=True
                )
        for index, part in enumerate(name_parts):
            # pathlib + "os.system": the attribute path walks into another module.
            if part in WALK_HEADS:
                hit = self._danger_path(name_parts[index:], walked=True)
                if hit is not None:
                    return hit
        if len(name_parts) > 1 and name_parts[-1] in DANGEROUS_METHODS:
            return Classification(
                Verdict.MALICIOUS,
                f"dotted name ends in the dangerous method {name_parts[-1]!r}",
                evasive=True,
            )
        return None

    @staticmethod
    def _danger_path(parts: list[str], walked: bool = False) -> Classification | None:
        for prefix in _prefixes(parts):
            # the name as written first, then its alias: a dict keeps that order (a set
            # would make the reason text depend on the interpreter's hash seed)
            for candidate in dict.fromkeys((prefix, _alias(prefix))):
                reason = DANGEROUS_MODULES.get(candidate) or DANGEROUS_CALLABLES.get(candidate)
                if reason is not None:
                    if walked:
                        return Classification(
                            Verdict.MALICIOUS,
                            f"attribute path reaches {candidate}: {reason}",
                            evasive=True,
                        )
                    return Classification(Verdict.MALICIOUS, f"{candidate}: {reason}")
        return None


def _alias(path: str) -> str:
    head, dot, rest = path.partition(".")
    for length in (2, 1):
        parts = path.split(".")
        if len(parts) >= length:
            key = ".".join(parts[:length])
            if key in MODULE_ALIASES:
                tail = parts[length:]
                return ".".join([MODULE_ALIASES[key], *tail])
    mapped = _compat_pickle.IMPORT_MAPPING.get(head)
    if mapped is not None:
        return mapped + dot + rest
    return path


DEFAULT_POLICY = Policy.default()
"""The policy every scan uses unless the caller passes its own."""
