"""Reuse of analyses across files (scan/memo.py): the reports must equal a fresh scan's."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.factories import archives as af
from tests.factories import checkpoints as cf
from trainguard.core.findings import Finding, Severity, Verdict
from trainguard.core.limits import DEFAULT_LIMITS
from trainguard.scan import scan_path
from trainguard.scan.api import AUTO_MIN_FILES, auto_jobs
from trainguard.scan.formats import torch_zip
from trainguard.scan.memo import MAX_PICKLE_ENTRIES, MemberResult, PickleSummary, ScanMemo
from trainguard.scan.policy import Policy

pytest.importorskip("torch")


def _rooted(data: bytes, root: str, **replace: bytes | None) -> bytes:
    """Rewrite a ``torch.save`` zip under archive name ``root``.

    ``replace`` maps a member path under the root (``data/0``) to new content, or None
    to drop it; paths the archive does not have are added at the end.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    buffer = io.BytesIO()
    todo = dict(replace)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            _, rest = info.filename.split("/", 1)
            body: bytes | None = source.read(info)
            if rest in todo:
                body = todo.pop(rest)
            if body is not None:
                out.writestr(f"{root}/{rest}", body)
        for rest, extra in todo.items():
            if extra is not None:
                out.writestr(f"{root}/{rest}", extra)
    return buffer.getvalue()


def _data_pkl(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints that share data.pkl (and members) byte for byte, benign and not."""
    root = tmp_path_factory.mktemp("memo")
    benign = cf.torch_save_bytes(cf.models()["mlp"].state_dict())
    payload = cf.inject_reduce(_data_pkl(benign), af.marker_payload(str(root / "PWNED")))
    evil = _rooted(benign, "archive", **{"data.pkl": payload})
    system = af.os_system_payload(str(root / "PWNED"))
    files: dict[str, bytes] = {
        "a.pt": _rooted(benign, "a"),
        "b.pt": _rooted(benign, "b"),  # same member offsets as a.pt
        "long.pt": _rooted(benign, "a_much_longer_archive_name"),  # other offsets
        "missing.pt": _rooted(benign, "m", **{"data/0": None}),
        "small.pt": _rooted(benign, "s", **{"data/1": b"\0"}),
        "crc.pt": af.corrupt_crc(_rooted(benign, "c"), "/data.pkl"),
        "evil1.pt": _rooted(evil, "e"),
        "sub/evil1.pt": _rooted(evil, "e"),  # same member name and offset as evil1.pt
        "evil2.pt": _rooted(evil, "evil_two"),
        "member1.pt": _rooted(benign, "x", extra=system),
        "member2.pt": _rooted(benign, "longer_root", extra=system),
        # a small member with a.pt's bytes but another CRC: its replay must not hide it
        "vcrc.pt": af.corrupt_crc(_rooted(benign, "v"), "v/version"),
        # text members: one that imports os.system, one holding an end-record signature
        "text.pt": _rooted(benign, "t2", notes=b"cos\nsystem\n"),
        "eocd.pt": _rooted(benign, "p", notes=b"12PK\x05\x0634"),
        "train.pt": cf.training_checkpoint(),
        "train2.pt": _rooted(cf.training_checkpoint(), "t"),
        "plain.pkl": system,
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def _dicts(reports: list[Any]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in reports]


def test_reuse_gives_the_reports_of_a_fresh_scan(tree: Path) -> None:
    fresh = _dicts(scan_path(tree, reuse=False))
    assert _dicts(scan_path(tree)) == fresh
    assert _dicts(scan_path(tree, jobs=2)) == fresh
    assert _dicts(scan_path(tree, jobs=2, reuse=False)) == fresh


def test_findings_name_each_files_own_member(tree: Path) -> None:
    by_name = {Path(r.path).relative_to(tree).as_posix(): r for r in scan_path(tree)}
    assert by_name["a.pt"].verdict is Verdict.SAFE
    assert by_name["long.pt"].verdict is Verdict.SAFE
    assert by_name["train2.pt"].verdict is Verdict.SAFE
    for name, root in (("evil1.pt", "e"), ("sub/evil1.pt", "e"), ("evil2.pt", "evil_two")):
        report = by_name[name]
        assert report.verdict is Verdict.MALICIOUS
        bad = [f for f in report.findings if f.rule == "pickle.dangerous_global"]
        assert bad and {f.member for f in bad} == {f"{root}/data.pkl"}
        assert all(f.path == report.path for f in report.findings)
    missing = by_name["missing.pt"]
    assert [f.member for f in missing.findings if f.rule == "torch.missing_storage"] == ["m/data/0"]
    assert [f.member for f in by_name["small.pt"].findings] == ["s/data/1"]
    assert {f.rule for f in by_name["crc.pt"].findings} == {"zip.bad_crc"}
    assert [(f.rule, f.member) for f in by_name["vcrc.pt"].findings] == [
        ("zip.bad_crc", "v/version")
    ]
    assert by_name["text.pt"].verdict is Verdict.MALICIOUS
    assert {f.member for f in by_name["text.pt"].findings} == {"t2/notes"}
    for name, root in (("member1.pt", "x"), ("member2.pt", "longer_root")):
        members = {f.member for f in by_name[name].findings}
        assert members == {f"{root}/extra"}, by_name[name].findings


def test_identical_pickles_are_analysed_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    original = torch_zip._analyse

    def counting(ctx: Any, content: Any, member: str | None, offset: int) -> PickleSummary:
        calls.append(member)
        return original(ctx, content, member, offset)

    monkeypatch.setattr(torch_zip, "_analyse", counting)
    scan_path(tree, reuse=False)
    fresh = len(calls)
    calls.clear()
    scan_path(tree)
    # Every benign copy shares a.pt's data.pkl (crc.pt too: only its CRC field differs);
    # sub/evil1.pt has evil1.pt's member name and offset; evil2.pt's findings would
    # name another member, so it is analysed again.
    assert fresh == 16  # every torch zip; plain.pkl is not one
    assert calls.count("a/data.pkl") == 1
    assert calls.count("e/data.pkl") == 1
    assert calls.count("evil_two/data.pkl") == 1
    shared = {"b", "a_much_longer_archive_name", "m", "s", "c", "x", "longer_root", "v", "t2", "p"}
    assert not shared & {str(c).split("/")[0] for c in calls}
    assert len(calls) < fresh


def _summary(findings: tuple[Finding, ...], member: str = "a/data.pkl") -> PickleSummary:
    return PickleSummary(
        member=member,
        base_offset=64,
        complete=True,
        end=10,
        findings=findings,
        verdict=Verdict.SAFE,
        storages=(),
        tensors=(),
        problems=(),
    )


def test_summary_with_findings_is_reused_only_for_the_same_member_and_offset() -> None:
    finding = Finding(rule="pickle.unknown_global", severity=Severity.MEDIUM, message="m")
    memo = ScanMemo(None, DEFAULT_LIMITS)
    memo.store_pickle(b"k", _summary((finding,)))
    assert memo.pickle(b"k", "a/data.pkl", 64) is not None
    assert memo.pickle(b"k", "b/data.pkl", 64) is None
    assert memo.pickle(b"k", "a/data.pkl", 65) is None
    memo.store_pickle(b"clean", _summary(()))
    assert memo.pickle(b"clean", "other/data.pkl", 0) is not None


def test_timeouts_are_never_stored_and_entries_are_capped() -> None:
    timeout = Finding(rule="pickle.timeout", severity=Severity.HIGH, message="t")
    memo = ScanMemo(None, DEFAULT_LIMITS)
    memo.store_pickle(b"t", _summary((timeout,)))
    assert memo.pickle(b"t", "a/data.pkl", 64) is None
    for index in range(MAX_PICKLE_ENTRIES + 5):
        memo.store_pickle(index.to_bytes(4, "big"), _summary(()))
    assert memo.pickle((0).to_bytes(4, "big"), "a/data.pkl", 64) is None
    assert memo.pickle((MAX_PICKLE_ENTRIES + 4).to_bytes(4, "big"), "x", 0) is not None
    memo.store_member(b"m", 1, MemberResult((Verdict.SAFE,), ("data",)))
    assert memo.member(b"m", 1) is not None
    assert memo.member(b"m", 2) is None


def test_memo_serves_only_its_own_policy_and_limits() -> None:
    policy = Policy.default()
    memo = ScanMemo(policy, DEFAULT_LIMITS)
    assert memo.serves(policy, DEFAULT_LIMITS)
    assert not memo.serves(Policy.default(extra_allow=("mypkg.models.Config",)), DEFAULT_LIMITS)
    assert not memo.serves(None, DEFAULT_LIMITS)


def test_geometry_problems_use_archive_sizes_only_without_a_recorded_numel() -> None:
    bad = ("w", "0", None, (4,), (1,), 0)
    assert torch_zip.geometry_problems((bad,), {"0": 2})[0][0] == "torch.tensor_out_of_bounds"
    assert torch_zip.geometry_problems((bad,), {"0": 4}) == []
    assert torch_zip.geometry_problems((bad,), {}) == []
    recorded = ("w", "0", 2, (4,), (1,), 0)
    assert torch_zip.geometry_problems((recorded,), {"0": 100})[0][0] == (
        "torch.tensor_out_of_bounds"
    )


def test_auto_jobs_stays_in_process_for_a_few_files() -> None:
    assert auto_jobs(0) == 1
    assert auto_jobs(AUTO_MIN_FILES - 1) == 1
    assert 1 <= auto_jobs(10_000) <= 8


def test_cli_jobs_and_no_reuse(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainguard.cli import main

    args = ["scan", str(tree), "--format", "json", "--no-progress"]
    assert main([*args, "--jobs", "auto"]) == 1
    auto = json.loads(capsys.readouterr().out)
    assert main([*args, "--no-reuse", "--jobs", "1"]) == 1
    assert json.loads(capsys.readouterr().out) == auto
    with pytest.raises(SystemExit) as exc:
        main([*args, "--jobs", "0"])
    assert exc.value.code == 2
    assert "--jobs" in capsys.readouterr().err


class _Recording:
    """A progress observer that remembers what it was told."""

    def __init__(self) -> None:
        self.total: float | None = None
        self.done = 0.0
        self.finished = False

    def start(self, description: str, total: float | None) -> None:
        self.total = total

    def advance(self, amount: float = 1) -> None:
        self.done += amount

    def finish(self) -> None:
        self.finished = True


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_counts_every_file(tree: Path, jobs: int) -> None:
    progress = _Recording()
    reports = scan_path(tree, jobs=jobs, progress=progress)
    assert progress.total == len(reports) == progress.done
    assert progress.finished
