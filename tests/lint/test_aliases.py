"""Alias resolution follows the spellings an insider would use to dodge name matching."""

from __future__ import annotations

import ast

import pytest

from trainguard.lint.aliases import ImportMap, canonical, const_str


def _resolve(source: str, expression: str) -> str | None:
    tree = ast.parse(source + "\n" + expression)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr)
    return ImportMap(tree).resolve(last.value)


@pytest.mark.parametrize(
    ("source", "expression", "expected"),
    [
        ("import time as t", "t.sleep", "time.sleep"),
        ("from time import sleep as nap", "nap", "time.sleep"),
        ("from os import kill", "kill", "os.kill"),
        (
            "import torch.distributed as dist",
            "dist.get_world_size",
            "torch.distributed.get_world_size",
        ),
        ("from torch import distributed", "distributed.get_rank", "torch.distributed.get_rank"),
        ("import torch.distributed", "torch.distributed.get_rank", "torch.distributed.get_rank"),
        ("import numpy as np", "np.random.seed", "numpy.random.seed"),
        ("import time", "getattr(time, 'sl' + 'eep')", "time.sleep"),
        ("", "__import__('os').kill", "os.kill"),
        ("import importlib", "importlib.import_module('time').sleep", "time.sleep"),
        ("import _pickle", "_pickle.loads", "pickle.loads"),
        ("import posix", "posix.kill", "os.kill"),
        ("import time\nnap = time.sleep", "nap", "time.sleep"),
        ("import torch\nAdam = torch.optim.Adam", "Adam.step", "torch.optim.Adam.step"),
        ("import builtins", "builtins.exec", "builtins.exec"),
        ("", "__builtins__['exec']", "builtins.exec"),
        ("import sys", "sys.modules['os'].kill", "os.kill"),
        ("from time import *", "sleep", "time.sleep"),
        ("", "open", "open"),
        ("from .utils import sleep", "sleep", ".utils.sleep"),
    ],
)
def test_resolve(source: str, expression: str, expected: str) -> None:
    assert _resolve(source, expression) == expected


def test_locally_defined_function_does_not_resolve_to_builtin() -> None:
    assert _resolve("def exec(x):\n    return x", "exec") is None


def test_call_results_have_no_static_name() -> None:
    assert _resolve("import torch", "torch.optim.Adam([])") is None


def test_const_str_folds_concatenation_and_fstrings() -> None:
    assert const_str(ast.parse("'a' + 'b' + f'c'", mode="eval").body) == "abc"
    assert const_str(ast.parse("'a' + x", mode="eval").body) is None


def test_canonical() -> None:
    assert canonical("cPickle.loads") == "pickle.loads"
    assert canonical("torch.load") == "torch.load"
