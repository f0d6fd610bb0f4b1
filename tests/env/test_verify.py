"""env verify: RECORD hashes, bytecode against its source, injected modules."""

from __future__ import annotations

import importlib.util
import py_compile
from pathlib import Path

import pytest

from tests.factories.env_sitepackages import (
    fake_interpreter,
    make_dist,
    marker_source,
    tamper_pyc_only,
)
from trainguard.core.findings import Severity
from trainguard.env.filecheck import FileTask, check_chunk
from trainguard.env.verify import verify_environment
from trainguard.env.worker import run_in_workers


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    marker = tmp_path / "MARKER"
    make_dist(
        site,
        "goodpkg",
        "1.0",
        {
            "goodpkg/__init__.py": marker_source(marker, "def f(x):\n    return x in {'a', 'b'}\n"),
            "goodpkg/optim.py": marker_source(
                marker, "def step(p, g, lr):\n    return p - lr * g\n"
            ),
            "goodpkg/data.bin": b"\x00\x01" * 100,
        },
    )
    return site


def _verify(site: Path, **kw: object):  # type: ignore[no-untyped-def]
    return verify_environment(fake_interpreter(site), jobs=1, **kw)  # type: ignore[arg-type]


def test_clean_distribution_verifies(site: Path, tmp_path: Path) -> None:
    report = _verify(site)
    assert report.findings == ()
    assert report.files == 6  # 3 files + METADATA, INSTALLER, WHEEL
    assert report.pycs == 2
    assert not (tmp_path / "MARKER").exists()


def test_import_time_pyc_is_legit(site: Path) -> None:
    # A pyc the interpreter wrote on import (not in RECORD) but matching its source.
    source = site / "goodpkg" / "optim.py"
    opt = importlib.util.cache_from_source(str(source), optimization=1)
    py_compile.compile(str(source), cfile=opt, doraise=True, optimize=1)
    report = _verify(site)
    assert report.findings == ()
    assert report.pycs == 3


def test_modified_source_is_caught(site: Path, tmp_path: Path) -> None:
    target = site / "goodpkg" / "optim.py"
    target.write_bytes(target.read_bytes().replace(b"p - lr * g", b"p + lr * g"))
    report = _verify(site)
    assert [f.rule for f in report.findings] == ["env.modified_file"]
    finding = report.findings[0]
    assert finding.severity is Severity.HIGH
    assert finding.evidence["record_path"] == "goodpkg/optim.py"
    assert finding.evidence["reason"] == "changed"
    assert finding.actor is not None and "uid" in finding.actor


def test_pyc_only_tamper_is_caught_and_nothing_runs(site: Path, tmp_path: Path) -> None:
    source = site / "goodpkg" / "optim.py"
    before = source.read_bytes()
    evil = marker_source(tmp_path / "MARKER", "def step(p, g, lr):\n    return p + lr * g\n")
    cfile = tamper_pyc_only(source, evil)
    assert source.read_bytes() == before
    report = _verify(site)
    assert len(report.findings) == 1
    finding = report.findings[0]
    assert finding.rule == "env.modified_file"
    assert finding.severity is Severity.HIGH
    assert finding.path == str(cfile)
    assert finding.evidence["reason"] == "pyc_differs"
    assert not (tmp_path / "MARKER").exists()


def test_stale_pyc_is_low(site: Path, tmp_path: Path) -> None:
    # Header does not validate against the source: the importer would ignore it.
    source = site / "goodpkg" / "optim.py"
    tamper_pyc_only(source, b"X = 2\n", keep_header=False)
    report = _verify(site)
    assert [(f.severity, f.evidence["reason"]) for f in report.findings] == [
        (Severity.LOW, "pyc_stale")
    ]


def test_unchecked_hash_pyc_tamper_is_caught(site: Path, tmp_path: Path) -> None:
    source = site / "goodpkg" / "__init__.py"
    cfile = importlib.util.cache_from_source(str(source))
    evil = tmp_path / "evil.py"
    evil.write_bytes(b"VALUE = 2\n")
    py_compile.compile(
        str(evil),
        cfile=cfile,
        dfile=str(source),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    report = _verify(site)
    assert [f.evidence["reason"] for f in report.findings] == ["pyc_differs"]


def test_pyc_compiled_under_other_path_matches(site: Path) -> None:
    # A venv built elsewhere and moved: co_filename differs, the code does not.
    source = site / "goodpkg" / "__init__.py"
    cfile = importlib.util.cache_from_source(str(source))
    py_compile.compile(str(source), cfile=cfile, dfile="/build/venv/goodpkg/__init__.py")
    report = _verify(site)
    assert report.findings == ()


def test_injected_module_is_caught(site: Path) -> None:
    (site / "goodpkg" / "backdoor.py").write_text("X = 1\n")
    report = _verify(site)
    assert len(report.findings) == 1
    finding = report.findings[0]
    assert finding.severity is Severity.HIGH
    assert finding.evidence["reason"] == "unlisted"
    assert "backdoor.py" in finding.message


def test_unlisted_data_file_is_medium(site: Path) -> None:
    (site / "goodpkg" / "notes.txt").write_text("hello\n")
    report = _verify(site)
    assert [f.severity for f in report.findings] == [Severity.MEDIUM]


def test_orphan_pyc_is_low(site: Path) -> None:
    orphan = (
        site / "goodpkg" / "__pycache__" / f"ghost.{__import__('sys').implementation.cache_tag}.pyc"
    )
    orphan.write_bytes(b"junk")
    report = _verify(site)
    assert [f.severity for f in report.findings] == [Severity.LOW]


def test_missing_file_is_reported(site: Path) -> None:
    (site / "goodpkg" / "data.bin").unlink()
    report = _verify(site)
    assert [(f.severity, f.evidence["reason"]) for f in report.findings] == [
        (Severity.MEDIUM, "missing")
    ]


def test_malformed_record_row_fails_closed(site: Path) -> None:
    record = next(site.glob("goodpkg-*.dist-info")) / "RECORD"
    record.write_text(record.read_text() + "goodpkg/x.py,sha256=!!notb64!!,3\n")
    report = _verify(site)
    assert any(f.severity is Severity.HIGH and "RECORD row" in f.message for f in report.findings)


def test_dist_info_without_record_is_reported(site: Path) -> None:
    (site / "odd-2.0.dist-info").mkdir()
    report = _verify(site)
    assert any(f.severity is Severity.MEDIUM and "no RECORD" in f.message for f in report.findings)


def test_unowned_top_level_module_and_empty_leftover(site: Path) -> None:
    (site / "leftover").mkdir()  # empty folder left by an uninstall: harmless
    report = _verify(site)
    assert report.findings == ()
    (site / "typing_extensions.py").write_text("X = 1\n")  # shadows a real module
    report = _verify(site)
    assert [f.evidence["reason"] for f in report.findings] == ["unowned"]
    assert report.findings[0].severity is Severity.HIGH


def test_dist_filter_and_unknown_name(site: Path) -> None:
    make_dist(site, "other", "0.1", {"other.py": b"X = 1\n"})
    report = verify_environment(fake_interpreter(site), dists=["GoodPkg"], jobs=1)
    assert [d.name for d in report.distributions] == ["goodpkg"]
    from trainguard.core.errors import EnvError

    with pytest.raises(EnvError, match="no installed distribution named 'nope'"):
        verify_environment(fake_interpreter(site), dists=["nope"], jobs=1)


def test_worker_processes_agree_with_inline(site: Path) -> None:
    tasks = [
        FileTask(i, str(p), None, None, None, ())
        for i, p in enumerate(sorted((site / "goodpkg").glob("*.py")))
    ]
    got: dict[int, list] = {}  # type: ignore[type-arg]
    failed = run_in_workers([tasks[:1], tasks[1:]], 2, lambda i, out: got.__setitem__(i, out))
    assert failed == []
    merged = got[0] + got[1]
    assert merged == check_chunk(tasks)


def test_collect_digests(site: Path) -> None:
    report = _verify(site, collect_digests=True)
    assert set(report.digests["goodpkg"]) >= {"goodpkg/__init__.py", "goodpkg/data.bin"}


def test_real_torch_install_verifies() -> None:
    # The real environment: torch 2.13.0's RECORD is correct (some older torch
    # versions shipped wrong hashes, astral-sh/uv #11723); bytecode matches.
    report = verify_environment(dists=["torch"], jobs=2)
    bad = [f for f in report.findings if f.severity.at_least(Severity.MEDIUM)]
    assert bad == [], [f.message for f in bad[:5]]
    assert report.files > 10_000
    assert report.pycs > 1_000


def test_module_in_site_dir_without_distributions(tmp_path: Path) -> None:
    site = tmp_path / "empty-site"
    site.mkdir()
    assert verify_environment(fake_interpreter(site), jobs=1).findings == ()
    (site / "torch.py").write_text("X = 1\n")  # shadows torch for everyone
    findings = verify_environment(fake_interpreter(site), jobs=1).findings
    assert [(f.severity, f.evidence["reason"]) for f in findings] == [(Severity.HIGH, "unowned")]
