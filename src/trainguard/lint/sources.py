"""Taint sources: the values sabotage keys on (scale, rank, host, environment, chance, time).

The incident's sleeps fired only in jobs over 256 GPUs; its kills picked a random
rank. What makes such code sabotage rather than a retry loop is *what the branch
tests*. This module names those values: each expression that reads one of them is a
source of a :class:`Source` kind, and :mod:`trainguard.lint.flow` carries the kinds
through assignments, calls and returns.
"""

from __future__ import annotations

import ast
import enum

from trainguard.lint.aliases import const_str, last_part


class Source(enum.StrEnum):
    """Kinds of values a condition or an argument can depend on."""

    WORLD_SIZE = "world size"
    RANK = "rank"
    HOST = "host or user identity"
    ENV = "environment variable"
    RANDOM = "randomness"
    TIME = "wall-clock time"
    TIMEBOMB = "comparison with a fixed date"
    STEP = "training step"
    PID = "process id"
    WORKER_SEED = "data-loader worker seed"
    DECODED = "decoded or decompressed data"
    FETCHED = "network data"
    FILE_READ = "file contents"


# Environment variables set by launchers (torchrun, SLURM, MPI, PMI) and what they mean.
_ENV_KINDS: dict[str, Source] = {
    **dict.fromkeys(
        (
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "GROUP_WORLD_SIZE",
            "ROLE_WORLD_SIZE",
            "SLURM_NTASKS",
            "SLURM_NPROCS",
            "SLURM_NNODES",
            "SLURM_JOB_NUM_NODES",
            "SLURM_GPUS",
            "SLURM_GPUS_ON_NODE",
            "SLURM_NTASKS_PER_NODE",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "PMI_SIZE",
            "PMIX_SIZE",
            "NNODES",
            "NPROC_PER_NODE",
            "NUM_GPUS",
            "CUDA_VISIBLE_DEVICES",
        ),
        Source.WORLD_SIZE,
    ),
    **dict.fromkeys(
        (
            "RANK",
            "LOCAL_RANK",
            "NODE_RANK",
            "GROUP_RANK",
            "ROLE_RANK",
            "SLURM_PROCID",
            "SLURM_LOCALID",
            "SLURM_NODEID",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "PMI_RANK",
            "PMIX_RANK",
        ),
        Source.RANK,
    ),
    **dict.fromkeys(
        (
            "HOSTNAME",
            "HOST",
            "SLURMD_NODENAME",
            "SLURM_NODELIST",
            "SLURM_JOB_NODELIST",
            "MASTER_ADDR",
            "USER",
            "LOGNAME",
            "USERNAME",
            "SLURM_JOB_USER",
            "SLURM_JOB_ACCOUNT",
            "SLURM_JOB_NAME",
        ),
        Source.HOST,
    ),
}

WORLD_SIZE_IDS = frozenset(
    {
        "world_size",
        "worldsize",
        "ws",
        "num_gpus",
        "n_gpus",
        "ngpus",
        "num_gpu",
        "gpu_count",
        "num_processes",
        "num_procs",
        "nprocs",
        "nproc",
        "nproc_per_node",
        "num_nodes",
        "nnodes",
        "n_nodes",
        "num_machines",
        "num_devices",
        "n_devices",
        "ndevices",
        "device_count",
        "dp_size",
        "data_parallel_size",
        "dp_world_size",
        "global_world_size",
        "local_world_size",
        "total_gpus",
    }
)
RANK_IDS = frozenset(
    {
        "rank",
        "local_rank",
        "global_rank",
        "node_rank",
        "world_rank",
        "group_rank",
        "dp_rank",
        "tp_rank",
        "pp_rank",
        "rank_id",
        "process_index",
        "local_process_index",
        "is_main_process",
        "is_local_main_process",
        "is_master",
        "is_rank_zero",
        "is_world_process_zero",
    }
)
HOST_IDS = frozenset({"hostname", "host_name", "nodename", "node_name", "machine_name"})
STEP_IDS = frozenset(
    {
        "step",
        "global_step",
        "iteration",
        "iter_num",
        "epoch",
        "batch_idx",
        "step_idx",
        "completed_steps",
        "train_step",
        "curr_step",
        "current_step",
        "micro_step",
        "num_updates",
    }
)
# Containers whose length is a scale: ``len(devices)``, ``len(hosts)``.
_SCALE_CONTAINER_WORDS = ("device", "gpu", "rank", "host", "node", "worker_list")

_WORLD_SIZE_CALLS = frozenset(
    {
        "get_world_size",
        "get_local_world_size",
        "device_count",
        "xrt_world_size",
        "process_count",
        "get_data_parallel_world_size",
        "get_tensor_model_parallel_world_size",
        "get_pipeline_model_parallel_world_size",
        "get_local_size",
    }
)
_RANK_CALLS = frozenset(
    {
        "get_rank",
        "get_local_rank",
        "get_global_rank",
        "get_node_local_rank",
        "get_group_rank",
        "get_ordinal",
        "get_local_ordinal",
        "get_data_parallel_rank",
        "get_tensor_model_parallel_rank",
        "get_pipeline_model_parallel_rank",
        "is_main_process",
        "is_rank_zero",
    }
)
_EXACT_CALLS: dict[str, Source] = {
    "horovod.torch.size": Source.WORLD_SIZE,
    "horovod.torch.local_size": Source.WORLD_SIZE,
    "horovod.torch.rank": Source.RANK,
    "horovod.torch.local_rank": Source.RANK,
    "jax.process_index": Source.RANK,
    "socket.gethostname": Source.HOST,
    "socket.getfqdn": Source.HOST,
    "socket.gethostbyname": Source.HOST,
    "platform.node": Source.HOST,
    "platform.uname": Source.HOST,
    "os.uname": Source.HOST,
    "getpass.getuser": Source.HOST,
    "os.getlogin": Source.HOST,
    "os.getuid": Source.HOST,
    "os.geteuid": Source.HOST,
    "pwd.getpwuid": Source.HOST,
    "pwd.getpwnam": Source.HOST,
    "os.getenv": Source.ENV,
    "os.getenvb": Source.ENV,
    "os.environ.get": Source.ENV,
    "os.environ.copy": Source.ENV,
    "os.environ.items": Source.ENV,
    "os.urandom": Source.RANDOM,
    "uuid.uuid1": Source.RANDOM,
    "uuid.uuid4": Source.RANDOM,
    "torch.rand": Source.RANDOM,
    "torch.randn": Source.RANDOM,
    "torch.randint": Source.RANDOM,
    "torch.randperm": Source.RANDOM,
    "torch.rand_like": Source.RANDOM,
    "torch.randn_like": Source.RANDOM,
    "torch.randint_like": Source.RANDOM,
    "torch.bernoulli": Source.RANDOM,
    "torch.multinomial": Source.RANDOM,
    "torch.normal": Source.RANDOM,
    "torch.seed": Source.RANDOM,
    "time.time": Source.TIME,
    "time.time_ns": Source.TIME,
    "time.monotonic": Source.TIME,
    "time.monotonic_ns": Source.TIME,
    "time.perf_counter": Source.TIME,
    "time.perf_counter_ns": Source.TIME,
    "time.process_time": Source.TIME,
    "time.localtime": Source.TIME,
    "time.gmtime": Source.TIME,
    "time.ctime": Source.TIME,
    "time.strftime": Source.TIME,
    "datetime.datetime.now": Source.TIME,
    "datetime.datetime.utcnow": Source.TIME,
    "datetime.datetime.today": Source.TIME,
    "datetime.date.today": Source.TIME,
    "os.getpid": Source.PID,
    "os.getppid": Source.PID,
    "threading.get_ident": Source.PID,
    "threading.get_native_id": Source.PID,
    "torch.initial_seed": Source.WORKER_SEED,
    "torch.utils.data.get_worker_info": Source.WORKER_SEED,
    "base64.b64decode": Source.DECODED,
    "base64.b32decode": Source.DECODED,
    "base64.b16decode": Source.DECODED,
    "base64.b85decode": Source.DECODED,
    "base64.a85decode": Source.DECODED,
    "base64.decodebytes": Source.DECODED,
    "base64.standard_b64decode": Source.DECODED,
    "base64.urlsafe_b64decode": Source.DECODED,
    "zlib.decompress": Source.DECODED,
    "gzip.decompress": Source.DECODED,
    "bz2.decompress": Source.DECODED,
    "lzma.decompress": Source.DECODED,
    "codecs.decode": Source.DECODED,
    "binascii.unhexlify": Source.DECODED,
    "binascii.a2b_hex": Source.DECODED,
    "binascii.a2b_base64": Source.DECODED,
    "bytes.fromhex": Source.DECODED,
    "bytearray.fromhex": Source.DECODED,
    "marshal.loads": Source.DECODED,
    "chr": Source.DECODED,
    "bytes": Source.DECODED,
    "bytearray": Source.DECODED,
    "open": Source.FILE_READ,
    "io.open": Source.FILE_READ,
    "codecs.open": Source.FILE_READ,
}
_RANDOM_PREFIXES = ("random.", "numpy.random.", "secrets.")
_FETCH_PREFIXES = (
    "requests.",
    "httpx.",
    "urllib.request.",
    "urllib3.",
    "http.client.",
    "aiohttp.",
    "ftplib.",
    "paramiko.",
    "websocket.",
    "websockets.",
)
_DECODE_METHODS = frozenset({"b64decode", "decompress", "fromhex", "unhexlify"})
_OBFUSCATING_CODECS = frozenset({"rot13", "rot_13", "base64", "hex", "zlib", "bz2", "uu"})


def env_key_kind(key: str | None) -> frozenset[Source]:
    """Kinds of one environment variable read (``None``: key not a literal)."""
    if key is None:
        return frozenset({Source.ENV})
    kind = _ENV_KINDS.get(key)
    if kind is None and key.startswith(("SLURM_", "PBS_", "LSB_")):
        kind = Source.ENV
    return frozenset({Source.ENV} if kind is None else {Source.ENV, kind})


def identifier_kinds(name: str) -> frozenset[Source]:
    """Kinds implied by a variable or attribute name (``args.world_size``, ``rank``)."""
    lowered = name.lower()
    if lowered in WORLD_SIZE_IDS:
        return frozenset({Source.WORLD_SIZE})
    if lowered in RANK_IDS:
        return frozenset({Source.RANK})
    if lowered in HOST_IDS:
        return frozenset({Source.HOST})
    if lowered in STEP_IDS:
        return frozenset({Source.STEP})
    return frozenset()


def call_kinds(qualname: str | None, call: ast.Call) -> frozenset[Source]:
    """Kinds produced by calling ``qualname`` (already alias-resolved)."""
    if qualname is None:
        return frozenset()
    exact = _EXACT_CALLS.get(qualname)
    kinds: set[Source] = set() if exact is None else {exact}
    last = last_part(qualname)
    if last in _WORLD_SIZE_CALLS:
        kinds.add(Source.WORLD_SIZE)
    elif last in _RANK_CALLS:
        kinds.add(Source.RANK)
    if qualname in ("os.getenv", "os.environ.get", "os.getenvb") and call.args:
        kinds |= env_key_kind(const_str(call.args[0]))
    if qualname.startswith(_RANDOM_PREFIXES) or qualname == "random":
        kinds.add(Source.RANDOM)
    if qualname.startswith(_FETCH_PREFIXES):
        kinds.add(Source.FETCHED)
    if last in _DECODE_METHODS and Source.DECODED not in kinds:
        kinds.add(Source.DECODED)
    if last in ("read_text", "read_bytes"):
        kinds.add(Source.FILE_READ)
    if last in ("recv", "recvfrom", "recv_into"):
        kinds.add(Source.FETCHED)
    if last == "decode" and call.args:
        codec = const_str(call.args[0])
        if codec is not None and codec.lower().replace("-", "_") in _OBFUSCATING_CODECS:
            kinds.add(Source.DECODED)
    if qualname == "len" and call.args:
        kinds |= _scale_container(call.args[0])
    return frozenset(kinds)


def _scale_container(node: ast.expr) -> frozenset[Source]:
    text = ""
    if isinstance(node, ast.Name):
        text = node.id
    elif isinstance(node, ast.Attribute):
        text = node.attr
    elif isinstance(node, ast.Call):
        func = node.func
        text = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    text = text.lower()
    if any(word in text for word in _SCALE_CONTAINER_WORDS):
        return frozenset({Source.WORLD_SIZE})
    return frozenset()


# A Unix timestamp after 2001-09-09 or a datetime built from literals: the other side
# of a time bomb's comparison.
_TIMESTAMP_FLOOR = 1_000_000_000


def is_fixed_date(node: ast.expr, qualname: str | None) -> bool:
    """True for ``datetime(2024, 9, 1)``, ``date(...)`` with literal args, or a big epoch number."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return not isinstance(node.value, bool) and node.value >= _TIMESTAMP_FLOOR
    if isinstance(node, ast.Call) and qualname in (
        "datetime.datetime",
        "datetime.date",
        "datetime.datetime.fromisoformat",
        "datetime.datetime.strptime",
        "datetime.date.fromisoformat",
    ):
        return all(isinstance(arg, ast.Constant) for arg in node.args)
    return False


# Kinds that make a branch suspicious when it guards a sink (rules pick their subset).
SCALE_OR_HOST = frozenset({Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB})
TARGETING = frozenset(
    {Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB, Source.RANK, Source.RANDOM, Source.ENV}
)
