"""load.unsafe_global: the PEP 578 audit hook blocks unsafe unpickling in-process.

Audit hooks are permanent, so every case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.guard.harness import REPO

pytestmark = pytest.mark.timeout(180)

SCRIPT = textwrap.dedent(
    """
    import json, os, pickle, sys
    sys.path.insert(0, {repo!r})
    import trainguard.guard.hooks as hooks
    hooks.install_early()
    import torch
    from trainguard.guard import watch
    from trainguard.guard.sink import MemorySink
    from tests.guard.jobs.proc_payload import Payload, SystemPayload

    tmp = {tmp!r}
    results = {{}}
    torch.set_num_threads(1)
    model = torch.nn.Linear(2, 2)
    sink = MemorySink()
    guard = watch(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=tmp + "/run",
                  sink=sink, settings={{"patch_check_seconds": 0.0}})

    def attempt(name, fn):
        try:
            fn()
            results[name] = "loaded"
        except Exception as exc:
            results[name] = type(exc).__name__ + ": " + str(exc)

    # 1. torch.load(weights_only=False) of a checkpoint with a non-allowlisted global
    bad = tmp + "/bad.pt"
    torch.save({{"w": torch.ones(2), "x": Payload(tmp + "/marker-torch")}}, bad)
    attempt("torch_unsafe", lambda: torch.load(bad, weights_only=False))  # LINE:torch
    # 2. plain pickle.loads of a known-dangerous global
    data = pickle.dumps(SystemPayload(tmp + "/marker-pickle"))
    attempt("pickle_loads", lambda: pickle.loads(data))  # LINE:pickle
    # 3. legitimate loads pass
    good = tmp + "/good.pt"
    torch.save(model.state_dict(), good)
    attempt("weights_only", lambda: torch.load(good, weights_only=True))
    attempt("full_state_dict", lambda: torch.load(good, weights_only=False))
    attempt("pickle_plain", lambda: pickle.loads(pickle.dumps({{"a": [1, 2.0, "x"]}})))
    # 4. DataLoader worker results (multiprocessing IPC) pass
    ds = torch.utils.data.TensorDataset(torch.randn(8, 2))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1))
    results["dataloader_batches"] = len(batches)
    # 5. a second audit hook is reported
    sys.addaudithook(lambda event, args: None)  # LINE:addhook
    guard.close()
    results["findings"] = [f.to_dict() for f in sink.findings]
    results["markers"] = sorted(p for p in os.listdir(tmp) if p.startswith("marker"))
    print("RESULT " + json.dumps(results, default=str))
    """
)


def run_script(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    script = tmp_path / "audit_case.py"
    script.write_text(SCRIPT.format(repo=str(REPO), tmp=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=150, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[0][len("RESULT ") :]), script


def line_of(script: Path, tag: str) -> int:
    for number, line in enumerate(script.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# LINE:{tag}"):
            return number
    raise AssertionError(tag)


def test_audit_hook_blocks_before_the_callable_runs(tmp_path: Path) -> None:
    results, script = run_script(tmp_path)
    # Blocked: nothing ran, the loader raised our error.
    assert results["markers"] == []
    assert results["torch_unsafe"].startswith("UnsafeGlobalBlocked")
    assert "tests.guard.jobs.proc_payload.write_marker" in results["torch_unsafe"]
    assert results["pickle_loads"].startswith("UnsafeGlobalBlocked")
    # The legitimate twins load.
    assert results["weights_only"] == "loaded"
    assert results["full_state_dict"] == "loaded"
    assert results["pickle_plain"] == "loaded"
    assert results["dataloader_batches"] == 2
    unsafe = [f for f in results["findings"] if f["kind"] == "load.unsafe_global"]
    by_global = {f["global"]: f for f in unsafe}
    torch_case = by_global["tests.guard.jobs.proc_payload.write_marker"]
    assert torch_case["path"] == str(tmp_path / "bad.pt")
    assert torch_case["location"] == f"{script}:{line_of(script, 'torch')}"
    assert torch_case["severity"] == "critical"
    assert torch_case["evidence"]["verdict"] == "unknown"
    pickle_case = by_global["posix.system"]
    assert pickle_case["evidence"]["verdict"] == "malicious"
    assert pickle_case["location"] == f"{script}:{line_of(script, 'pickle')}"
    assert len(unsafe) == 2  # the legitimate loads produced nothing
    hooks = [f for f in results["findings"] if f["kind"] == "guard.disabled"]
    assert [h["location"] for h in hooks] == [f"{script}:{line_of(script, 'addhook')}"]


def test_hook_cannot_be_widened_or_switched_off(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import pickle, sys
        sys.path.insert(0, {str(REPO)!r})
        from trainguard.guard.hooks.audit import install_audit_hook, audit_status
        assert install_audit_hook() is True
        # A later install cannot widen the allowlist, and there is no off switch.
        assert install_audit_hook(allow=["tests.guard.jobs.proc_payload.write_marker"]) is False
        import trainguard.guard.hooks.audit as audit
        audit.install_audit_hook = lambda *a, **k: False
        from tests.guard.jobs.proc_payload import Payload
        try:
            pickle.loads(pickle.dumps(Payload({str(tmp_path / "marker")!r})))
            print("LOADED")
        except Exception as exc:
            print("BLOCKED", type(exc).__name__)
        print(audit_status()["blocked"])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BLOCKED", "UnsafeGlobalBlocked", "1"]
    assert not (tmp_path / "marker").exists()
