"""Records: the dataclass semantics the scanner's result types rely on."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from trainguard.core.findings import FileReport, Finding, Severity, Verdict
from trainguard.core.limits import DEFAULT_LIMITS, Limits
from trainguard.scan.formats.zipreader import ZipEntry
from trainguard.scan.picklevm.values import Call, GlobalRef


def _finding(**changes: object) -> Finding:
    base = Finding("pickle.dangerous_global", Severity.HIGH, "os.system", member="a/data.pkl")
    return base.replace(**changes) if changes else base


def test_equality_is_field_wise_and_same_class_only() -> None:
    assert _finding() == _finding()
    assert _finding() != _finding(offset=3)
    assert _finding().evidence == {} and _finding().evidence is not _finding().evidence
    report = FileReport("a.pt", "torch-zip", Verdict.SAFE)
    assert report == FileReport("a.pt", "torch-zip", Verdict.SAFE, ())
    assert report != ("a.pt", "torch-zip", Verdict.SAFE, ())


def test_frozen_records_refuse_assignment_and_hash_by_fields() -> None:
    finding = _finding()
    with pytest.raises(AttributeError, match="frozen"):
        finding.rule = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del finding.message
    assert hash(Limits()) == hash(DEFAULT_LIMITS) and Limits() == DEFAULT_LIMITS
    with pytest.raises(TypeError):
        hash(finding)  # its evidence is a dict, as with the frozen dataclass it replaced


def test_replace_copies_and_rejects_unknown_fields() -> None:
    finding = _finding(evidence={"k": 1})
    moved = finding.replace(path="b.pt", offset=7)
    assert (moved.path, moved.offset, moved.rule, moved.evidence) == (
        "b.pt",
        7,
        finding.rule,
        {"k": 1},
    )
    assert finding.path is None
    with pytest.raises(TypeError, match="no field"):
        finding.replace(bogus=1)
    assert Limits(max_pickle_opcodes=5).replace(max_stack_depth=9).max_pickle_opcodes == 5
    with pytest.raises(ValueError, match="positive"):
        DEFAULT_LIMITS.replace(max_stack_depth=0)  # validation runs again


def test_mutable_records_are_unhashable_and_assignable() -> None:
    entry = ZipEntry("a", b"a", 0, 0, 0, 0, 0, 1, 1)
    entry.local_ok = True
    assert entry.local_ok and entry.data_offset == -1
    with pytest.raises(TypeError):
        hash(entry)
    assert repr(entry).startswith("ZipEntry(") and "name='a'" in repr(entry)


def test_nodes_compare_by_identity() -> None:
    ref = GlobalRef("os", "system", 3)
    assert ref != GlobalRef("os", "system", 3) and ref == ref
    assert ref.qualified == "os.system" and len({ref, ref}) == 1
    call = Call(ref, (), "reduce", 4)
    call.builds += 1
    assert call.builds == 1 and not call.has_state


def test_pickle_and_copy_round_trip() -> None:
    """Scan workers send reports back through pickle; frozen slots must survive it."""
    report = FileReport("a.pt", "pickle", Verdict.MALICIOUS, (_finding(evidence={"x": [1]}),))
    for clone in (pickle.loads(pickle.dumps(report)), copy.deepcopy(report), copy.copy(report)):
        assert clone == report
        with pytest.raises(AttributeError):
            clone.path = "b"  # type: ignore[misc]
    ref = pickle.loads(pickle.dumps(GlobalRef("os", "system", 3, via="getattr")))
    assert (ref.qualified, ref.via) == ("os.system", "getattr")


def test_scan_start_up_imports_no_dataclasses() -> None:
    """The reason records exist: ``trainguard scan`` must not import dataclasses/inspect."""
    code = (
        "import sys; from trainguard.cli.app import build_parser; build_parser(['scan', 'x']); "
        "import trainguard.cli.commands.scan, trainguard.scan.api, trainguard.scan.memo, "
        "trainguard.scan.formats.dispatch, trainguard.scan.formats.archive, "
        "trainguard.scan.formats.torch_zip; heavy = ('dataclasses', 'inspect', 'shutil'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
