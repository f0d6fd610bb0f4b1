"""``lint.unsafe-load``: deserialisers that run code from the file they read.

The incident planted backdoors in checkpoints through pickle. Every pickle-based
loader executes whatever the file tells it to import and call; ``torch.load``
does too unless ``weights_only=True``. The runtime answer is ``trainguard scan``
and ``safe_load``; this rule finds the call sites that bypass them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo
from trainguard.lint.sources import Source

_ALWAYS: dict[str, tuple[Severity, str]] = {
    "pickle.load": (Severity.HIGH, "unpickles a file"),
    "pickle.loads": (Severity.HIGH, "unpickles bytes"),
    "pickle.Unpickler": (Severity.HIGH, "builds an unpickler"),
    "dill.load": (Severity.HIGH, "unpickles a file with dill"),
    "dill.loads": (Severity.HIGH, "unpickles bytes with dill"),
    "dill.Unpickler": (Severity.HIGH, "builds a dill unpickler"),
    "cloudpickle.load": (Severity.HIGH, "unpickles a file with cloudpickle"),
    "cloudpickle.loads": (Severity.HIGH, "unpickles bytes with cloudpickle"),
    "joblib.load": (Severity.HIGH, "loads a joblib pickle"),
    "pandas.read_pickle": (Severity.HIGH, "unpickles a pandas file"),
    "marshal.load": (Severity.HIGH, "loads marshalled code objects"),
    "marshal.loads": (Severity.HIGH, "loads marshalled code objects"),
    "jsonpickle.decode": (Severity.HIGH, "decodes jsonpickle (arbitrary objects)"),
    "yaml.unsafe_load": (Severity.HIGH, "loads YAML with arbitrary Python objects"),
    "yaml.unsafe_load_all": (Severity.HIGH, "loads YAML with arbitrary Python objects"),
    "torch.package.PackageImporter": (Severity.HIGH, "imports code from a torch package"),
    "torch.hub.load": (Severity.HIGH, "runs hubconf.py code fetched from a repository"),
    "shelve.open": (Severity.MEDIUM, "opens a shelve (pickle) database"),
    "yaml.full_load": (Severity.LOW, "loads YAML with the FullLoader"),
    "yaml.full_load_all": (Severity.LOW, "loads YAML with the FullLoader"),
    "torch.distributed.broadcast_object_list": (Severity.LOW, "unpickles objects from peers"),
    "torch.distributed.all_gather_object": (Severity.LOW, "unpickles objects from peers"),
    "torch.distributed.gather_object": (Severity.LOW, "unpickles objects from peers"),
    "torch.distributed.scatter_object_list": (Severity.LOW, "unpickles objects from peers"),
    "torch.distributed.recv_object_list": (Severity.LOW, "unpickles objects from peers"),
}
_SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})
_HOSTILE_INPUT = frozenset({Source.FETCHED, Source.DECODED})

INFO = RuleInfo(
    id="lint.unsafe-load",
    title="unsafe deserialisation",
    catches=(
        "pickle/dill/cloudpickle load(s) and Unpickler, joblib.load, pandas.read_pickle, "
        "marshal.load(s), torch.load without weights_only=True (explicit False: high), "
        "numpy.load(allow_pickle=True), yaml.load without a safe Loader, yaml.unsafe_load, "
        "torch.hub.load, torch.package, trust_remote_code=True, object collectives"
    ),
    rationale=(
        "The incident planted backdoors in checkpoints through pickle: loading such a "
        "file runs the attacker's code in every job that resumes from it."
    ),
    fix=(
        "Save weights as safetensors; load with torch.load(..., weights_only=True) or "
        "trainguard.load.safe_load after `trainguard scan`; yaml.safe_load; "
        "numpy.load(allow_pickle=False)."
    ),
    severity="low-critical",
)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _judge(ctx: FileContext, call: ast.Call, qualname: str) -> tuple[Severity, str] | None:
    known = _ALWAYS.get(qualname)
    if known is not None:
        return known
    if qualname == "torch.load":
        weights_only = _keyword(call, "weights_only")
        if weights_only is None:
            return Severity.MEDIUM, "torch.load without weights_only=True unpickles arbitrary code"
        if _is_false(weights_only):
            return Severity.HIGH, "torch.load(weights_only=False) unpickles arbitrary code"
        if not _is_true(weights_only):
            return Severity.MEDIUM, "torch.load with a computed weights_only"
        return None
    if qualname == "numpy.load":
        allow = _keyword(call, "allow_pickle")
        if _is_true(allow):
            return Severity.HIGH, "numpy.load(allow_pickle=True) unpickles object arrays"
        if allow is not None and not _is_false(allow):
            return Severity.MEDIUM, "numpy.load with a computed allow_pickle"
        return None
    if qualname in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader")
        if loader is None and len(call.args) >= 2:
            loader = call.args[1]
        name = (ctx.resolve(loader) or "").rsplit(".", 1)[-1] if loader is not None else ""
        if name in _SAFE_YAML_LOADERS:
            return None
        return Severity.HIGH, f"{qualname} without SafeLoader builds arbitrary Python objects"
    if _is_true(_keyword(call, "trust_remote_code")):
        return Severity.MEDIUM, "trust_remote_code=True runs model code fetched from a hub"
    return None


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield unsafe deserialisation call sites."""
    for call in ctx.calls():
        qualname = ctx.resolve(call.func) or ""
        if qualname == "torch.serialization.load":
            qualname = "torch.load"
        verdict = _judge(ctx, call, qualname)
        if verdict is None:
            continue
        severity, message = verdict
        kinds: frozenset[Source] = frozenset()
        for arg in call.args:
            kinds |= ctx.flow.taint(arg) & _HOSTILE_INPUT
        if kinds:
            severity = Severity.CRITICAL
            message += " from network or decoded data"
        if qualname and not message.startswith(qualname):
            message = f"{qualname}: {message}"
        yield Hit(call, severity, message, kinds)


RULE = Rule(info=INFO, check=check)
