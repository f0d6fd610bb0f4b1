"""Dataflow: taint through assignments, attributes, returns, parameters; conditions."""

from __future__ import annotations

import ast

from trainguard.lint.aliases import ImportMap
from trainguard.lint.flow import Flow
from trainguard.lint.sources import Source


def _flow(source: str) -> tuple[Flow, ast.Module]:
    tree = ast.parse(source)
    return Flow(tree, ImportMap(tree)), tree


def _call(tree: ast.Module, name: str) -> ast.Call:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
            return node
    raise AssertionError(f"no call to {name}")


def test_taint_flows_through_local_assignments() -> None:
    flow, tree = _flow(
        "import torch.distributed as dist\n"
        "ws = dist.get_world_size()\n"
        "big = ws > 256\n"
        "if big:\n"
        "    go()\n"
    )
    assert flow.condition_kinds(_call(tree, "go")) == {Source.WORLD_SIZE}


def test_env_keys_are_classified() -> None:
    flow, tree = _flow(
        "import os\n"
        "if os.environ['LOCAL_RANK'] == '0' and os.getenv('SLURMD_NODENAME') == 'n1':\n"
        "    go()\n"
    )
    assert flow.condition_kinds(_call(tree, "go")) == {Source.ENV, Source.RANK, Source.HOST}


def test_guard_clause_controls_following_statements() -> None:
    flow, tree = _flow(
        "import socket\n"
        "def f():\n"
        "    if socket.gethostname() != 'victim':\n"
        "        return\n"
        "    go()\n"
    )
    assert Source.HOST in flow.condition_kinds(_call(tree, "go"))


def test_parameters_receive_argument_taint() -> None:
    flow, tree = _flow(
        "import random\ndef f(x):\n    if x:\n        go()\nf(random.random() < 0.1)\n"
    )
    assert Source.RANDOM in flow.condition_kinds(_call(tree, "go"))


def test_time_bomb_comparison() -> None:
    flow, tree = _flow("import time\nif time.time() > 1726000000:\n    go()\n")
    assert Source.TIMEBOMB in flow.condition_kinds(_call(tree, "go"))


def test_plain_deadline_is_time_not_time_bomb() -> None:
    flow, tree = _flow(
        "import time\ndeadline = time.time() + 30\nwhile time.time() < deadline:\n    go()\n"
    )
    assert flow.condition_kinds(_call(tree, "go")) == {Source.TIME}


def test_loops_and_loop_called_functions() -> None:
    flow, tree = _flow(
        "def inner():\n"
        "    leaf()\n"
        "def helper():\n"
        "    inner()\n"
        "for _ in range(3):\n"
        "    helper()\n"
        "setup()\n"
    )
    assert flow.in_loop(_call(tree, "helper"))
    assert not flow.in_loop(_call(tree, "setup"))
    assert set(flow.loop_called_functions()) == {"helper", "inner"}


def test_sink_functions_are_transitive() -> None:
    flow, _ = _flow(
        "import time\ndef a():\n    time.sleep(1)\ndef b():\n    a()\ndef c():\n    pass\n"
    )
    sinks = flow.sink_functions(lambda call: ast.unparse(call.func) == "time.sleep")
    assert set(sinks) == {"a", "b"}


def test_values_of_follows_enclosing_scopes() -> None:
    flow, tree = _flow("CMD = 'pkill x'\ndef f():\n    run(CMD)\n")
    call = _call(tree, "run")
    arg = call.args[0]
    assert isinstance(arg, ast.Name)
    values = flow.values_of(arg.id, flow.scope_of(call))
    assert [ast.literal_eval(v) for v in values] == ["pkill x"]
