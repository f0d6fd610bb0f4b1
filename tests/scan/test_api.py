"""scan_path: walking, symlinks, parallelism, lean imports, fuzzing of the zip path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import archives as af
from tests.factories import checkpoints as cf
from trainguard.core.errors import ScanInputError
from trainguard.core.findings import Verdict
from trainguard.scan import scan_bytes, scan_path
from trainguard.scan.api import _child, display_path


def test_import_is_lean() -> None:
    code = (
        "import sys, trainguard.scan, trainguard.scan.api, trainguard.cli.commands.scan;"
        "import trainguard.scan.formats.dispatch;"
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "text",
    ["", ".", "./", "a", "a/", "a//b", "./a/./b/", "../a/..", "/", "//", "///", "//a", "///a/"],
)
def test_display_path_matches_pathlib(text: str) -> None:
    # Report paths must not change when the walk stopped importing pathlib.
    assert display_path(text) == str(Path(text))


@given(st.lists(st.sampled_from(["", ".", "..", "a", "b c", "é"]), max_size=6))
def test_display_path_matches_pathlib_fuzzed(parts: list[str]) -> None:
    for lead in ("", "/", "//", "///"):
        text = lead + "/".join(parts)
        assert display_path(text) == str(Path(text))
        directory = display_path(text)
        assert _child(directory, "x.pt") == str(Path(directory) / "x.pt")


def test_walk_paths_are_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative roots with "." components and trailing slashes, as users type them.
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "m.bin").write_bytes(b"plain data")
    (tmp_path / "d" / "top.bin").write_bytes(b"plain data")
    monkeypatch.chdir(tmp_path)
    in_d = ["d/e/m.bin", "d/top.bin"]
    for root, expected in (("d", in_d), ("d/", in_d), ("./d/.", in_d), (".", in_d), ("./", in_d)):
        assert [r.path for r in scan_path(root)] == expected, root
    assert [r.path for r in scan_path(str(tmp_path) + "//d/")] == [
        f"{tmp_path}/{name}" for name in in_d
    ]


def test_missing_path_raises() -> None:
    with pytest.raises(ScanInputError):
        scan_path("/no/such/path/anywhere")


def test_walk_recurses_and_reports_every_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "model.bin").write_bytes(cf.torch_save_bytes({"w": 1}))
    (tmp_path / "a" / "notes.md").write_text("# notes\n")
    (tmp_path / "empty").write_bytes(b"")
    reports = scan_path(tmp_path)
    by_name = {Path(r.path).name: r for r in reports}
    assert set(by_name) == {"model.bin", "notes.md", "empty"}
    assert all(r.verdict is Verdict.SAFE for r in reports), reports


def test_symlink_inside_tree_followed_outside_reported(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = outside / "evil.pkl"
    evil.write_bytes(af.os_system_payload(str(tmp_path / "PWNED")))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.pt").write_bytes(cf.torch_save_bytes({"w": 1}))
    os.symlink(tree / "ok.pt", tree / "alias.pt")
    os.symlink(evil, tree / "linked.pkl")
    os.symlink(outside, tree / "outdir")
    os.symlink(tmp_path / "nothing", tree / "dangling")
    reports = {Path(r.path).name: r for r in scan_path(tree)}
    assert reports["alias.pt"].verdict is Verdict.SAFE
    linked = reports["linked.pkl"]
    assert linked.verdict is Verdict.MALICIOUS
    assert "scan.symlink_outside_tree" in {f.rule for f in linked.findings}
    assert reports["outdir"].verdict is Verdict.UNKNOWN
    assert reports["dangling"].verdict is Verdict.ERROR


def test_parallel_matches_serial(tmp_path: Path) -> None:
    for index in range(6):
        (tmp_path / f"m{index}.pt").write_bytes(cf.torch_save_bytes({"i": index}))
    (tmp_path / "evil.bin").write_bytes(af.os_system_payload("/tmp/never"))
    serial = scan_path(tmp_path)
    parallel = scan_path(tmp_path, jobs=2)
    assert [(r.path, r.verdict) for r in serial] == [(r.path, r.verdict) for r in parallel]


def test_time_budget_gives_error() -> None:
    report = scan_bytes(cf.torch_save_bytes({"w": list(range(1000))}), seconds=1e-9)
    assert report.verdict is Verdict.ERROR


_BENIGN = cf.torch_save_bytes({"w": [1, 2, 3]})
_EVIL = af.replace_member(_BENIGN, "/data.pkl", af.marker_payload("/tmp/trainguard-never"))
_PICKLE_AT = af.find_member(_EVIL, "data.pkl")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_torch_zips(data: st.DataObject) -> None:
    blob = bytearray(_EVIL)
    _, local = _PICKLE_AT
    nlen, elen = (
        int.from_bytes(blob[local + 26 : local + 28], "little"),
        int.from_bytes(blob[local + 28 : local + 30], "little"),
    )
    pickle_start = local + 30 + nlen + elen
    pickle_end = pickle_start + len(af.marker_payload("/tmp/trainguard-never"))
    protected = range(pickle_start, pickle_end)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        if pos in protected:
            continue
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(pickle_end, len(blob)))
        del blob[cut:]
    report = scan_bytes(bytes(blob), seconds=30)
    assert report.verdict is not Verdict.SAFE
    if report.verdict is Verdict.ERROR:
        assert report.findings


@pytest.mark.timeout(60)
def test_fifo_is_reported_not_waited_on(tmp_path: Path) -> None:
    """A named pipe, given directly or reached through a symlink, has no writer: opening
    it for reading must not block the scan (the read is never attempted)."""
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    (report,) = scan_path([str(fifo)])
    assert report.verdict is Verdict.ERROR
    assert [f.rule for f in report.findings] == ["scan.special_file"]
    (tmp_path / "model.pt").symlink_to(fifo)
    by_name = {Path(r.path).name: r for r in scan_path([str(tmp_path)])}
    assert by_name["model.pt"].verdict is Verdict.ERROR  # followed, then refused
    assert [f.rule for f in by_name["model.pt"].findings] == ["scan.special_file"]
    assert [f.rule for f in by_name["pipe.pt"].findings] == ["scan.special_file"]


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    from trainguard.core.limits import Limits

    path = tmp_path / "big.pt"
    path.write_bytes(cf.torch_save_bytes({"w": 1}))
    (report,) = scan_path([str(path)], limits=Limits(max_file_size=100))
    assert report.verdict is Verdict.ERROR
    assert [f.rule for f in report.findings] == ["limit.file_size"]


def test_file_that_grows_while_read_is_read_to_its_end(tmp_path: Path) -> None:
    from trainguard.scan.api import _read_all

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_all(fd, 100) == b"x" * 5000  # fstat said 100: the file grew
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_all(fd, 9000) == b"x" * 5000  # it shrank
    finally:
        os.close(fd)
