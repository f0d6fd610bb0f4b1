"""End-to-end verdicts on real checkpoints and their malicious rewrites (must-catch + twin)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.factories import archives as af
from tests.factories import checkpoints as cf
from trainguard.core.findings import FileReport, Verdict
from trainguard.scan import scan_bytes, scan_path

pytest.importorskip("torch")


def _scan(data: bytes, name: str = "x.bin") -> FileReport:
    return scan_bytes(data, name=name)


def _rules(report: FileReport) -> set[str]:
    return {f.rule for f in report.findings}


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "PWNED"


# -- benign twins --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(cf.state_dicts()))
def test_state_dicts_are_safe(name: str) -> None:
    report = _scan(cf.state_dicts()[name], name)
    assert report.format == "torch-zip"
    assert report.verdict is Verdict.SAFE, report.findings


def test_training_checkpoint_is_safe() -> None:
    report = _scan(cf.training_checkpoint())
    assert report.verdict is Verdict.SAFE, report.findings


def test_legacy_checkpoint_is_safe() -> None:
    report = _scan(cf.legacy_checkpoint())
    assert report.format == "torch-legacy"
    assert report.verdict is Verdict.SAFE, report.findings


def test_whole_module_is_unknown_not_malicious() -> None:
    report = _scan(cf.whole_module())
    assert report.verdict is Verdict.UNKNOWN, report.findings


def test_npz_and_safetensors_are_safe() -> None:
    assert _scan(cf.npz_bytes()).format == "numpy-npz"
    assert _scan(cf.npz_bytes()).verdict is Verdict.SAFE
    st = _scan(cf.safetensors_bytes(), "model.bin")
    assert (st.format, st.verdict) == ("safetensors", Verdict.SAFE)


def test_joblib_dumps_are_safe() -> None:
    np = pytest.importorskip("numpy")
    for value in (
        [np.arange(10.0), {"k": np.ones((2, 3), dtype=np.int32)}],
        {"plain": [1, 2, 3], "text": "abc"},
    ):
        report = _scan(cf.joblib_bytes(value))
        assert report.verdict is Verdict.SAFE, report.findings
    compressed = _scan(cf.joblib_bytes([np.arange(100.0)], compress=3))
    assert compressed.verdict is Verdict.SAFE, compressed.findings


def test_dcp_checkpoint_is_safe(tmp_path: Path) -> None:
    directory = cf.dcp_checkpoint(tmp_path / "dcp")
    reports = scan_path(directory)
    meta = next(r for r in reports if r.path.endswith(".metadata"))
    assert meta.format == "dcp-metadata"
    assert all(r.verdict is Verdict.SAFE for r in reports), [(r.path, r.findings) for r in reports]


def test_user_class_is_unknown() -> None:
    report = _scan(cf.pickle_with_user_class())
    assert report.verdict is Verdict.UNKNOWN


# -- must-catch ----------------------------------------------------------------------------
def test_injected_reduce_in_torch_zip(marker: Path) -> None:
    report = _scan(cf.malicious_torch_zip(str(marker)), "model.pt")
    assert report.verdict is Verdict.MALICIOUS
    assert any(f.global_name and "exec" in f.global_name for f in report.findings)
    assert any(f.member and f.member.endswith("data.pkl") for f in report.findings)
    assert not marker.exists()


def test_payload_in_legacy_fourth_pickle(marker: Path) -> None:
    report = _scan(cf.malicious_legacy(str(marker)))
    assert report.verdict is Verdict.MALICIOUS
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2])
def test_bare_pickle_any_extension(marker: Path, protocol: int) -> None:
    for name in ("model.safetensors", "weights.bin", "data.txt", "noext"):
        report = _scan(cf.malicious_pickle(str(marker), protocol), name)
        assert report.verdict is Verdict.MALICIOUS, (name, report)


def test_object_npy_payload(marker: Path) -> None:
    report = _scan(cf.object_npy_with_payload(str(marker)))
    assert report.verdict is Verdict.MALICIOUS
    np = pytest.importorskip("numpy")
    twin = _scan(cf.npy_bytes(np.array([{"a": 1}, "x"], dtype=object)))
    assert twin.verdict is Verdict.SAFE, twin.findings


def test_joblib_payload_after_array(marker: Path) -> None:
    report = _scan(cf.joblib_with_payload_after_array(str(marker)))
    assert report.format == "joblib"
    assert report.verdict is Verdict.MALICIOUS, report.findings


def test_dcp_metadata_with_exec(tmp_path: Path, marker: Path) -> None:
    directory = cf.dcp_checkpoint(tmp_path / "dcp")
    meta = directory / ".metadata"
    meta.write_bytes(cf.inject_reduce(meta.read_bytes(), af.marker_payload(str(marker))))
    report = next(r for r in scan_path(directory) if r.path.endswith(".metadata"))
    assert report.verdict is Verdict.MALICIOUS


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: af.rename_local(d, "data.pkl", b"archive/datap.kl"),
        lambda d: af.set_flags(d, "data.pkl", 0x01),
        lambda d: af.corrupt_crc(d, "data.pkl"),
    ],
    ids=["name-mismatch", "encryption-flag", "bad-crc"],
)
def test_zip_tricks_on_malicious_checkpoint(marker: Path, mutate: object) -> None:
    data = af.replace_member(
        cf.torch_save_bytes({"w": 1}), "/data.pkl", af.marker_payload(str(marker))
    )
    report = _scan(mutate(data))  # type: ignore[operator]
    assert report.verdict is Verdict.MALICIOUS


def test_duplicate_names_both_scanned(marker: Path) -> None:
    payload = af.marker_payload(str(marker))
    benign = cf.dump({"ok": 1})
    for first, second in ((payload, benign), (benign, payload)):
        report = _scan(af.duplicate_names(first, second))
        assert report.verdict is Verdict.MALICIOUS
        assert "zip.duplicate_name" in _rules(report)


def test_hidden_entry_is_scanned(marker: Path) -> None:
    data = af.hide_member([("a.txt", b"x"), ("evil", af.marker_payload(str(marker)))], 1)
    report = _scan(data)
    assert report.verdict is Verdict.MALICIOUS
    assert "zip.hidden_entry" in _rules(report)


def test_pickle_member_under_any_name(marker: Path) -> None:
    report = _scan(af.zip_bytes([("readme.txt", af.os_system_payload(str(marker)))]))
    assert report.verdict is Verdict.MALICIOUS
    twin = _scan(af.zip_bytes([("readme.txt", b"hello, this is text")]))
    assert twin.verdict is Verdict.SAFE


def test_polyglot_pickle_before_zip(marker: Path) -> None:
    data = af.with_prefix(cf.torch_save_bytes({"w": 1}), af.marker_payload(str(marker)))
    report = _scan(data)
    assert report.verdict is Verdict.MALICIOUS
    assert "zip.polyglot" in _rules(report)


def test_nested_archives(marker: Path) -> None:
    evil = cf.malicious_torch_zip(str(marker))
    for wrapped in (
        af.gzip_bytes(evil),
        af.bz2_bytes(evil),
        af.xz_bytes(evil),
        af.zip_bytes([("inner.pt", evil)]),
        af.tar_bytes([("m/model.pt", evil)]),
    ):
        assert _scan(wrapped).verdict is Verdict.MALICIOUS
    benign = cf.torch_save_bytes({"w": 1})
    for wrapped in (af.gzip_bytes(benign), af.zip_bytes([("inner.pt", benign)])):
        report = _scan(wrapped)
        assert report.verdict is Verdict.SAFE, report.findings


def test_zips_back_to_back_each_scanned(marker: Path) -> None:
    """``cat a.pt b.pt``: readers disagree on which archive they see; each is scanned."""
    benign = cf.torch_save_bytes({"w": 1})
    evil = cf.malicious_torch_zip(str(marker))
    report = _scan(benign + af.zip_bytes([("a.txt", b"x")]))
    assert report.format == "zip-concatenation"
    assert report.verdict is Verdict.SAFE, report.findings
    for data in (evil + benign, benign + evil):
        report = _scan(data)
        assert report.format == "zip-concatenation"
        assert report.verdict is Verdict.MALICIOUS
    assert not marker.exists()


def test_nesting_depth_limit() -> None:
    data = cf.torch_save_bytes({"w": 1})
    for _ in range(8):
        data = af.zip_bytes([("x.zip", data)])
    report = _scan(data)
    assert report.verdict is Verdict.ERROR
    assert "limit.exceeded" in _rules(report)


def test_zip_bomb_ratio_limit() -> None:
    report = _scan(
        af.zip_bytes(
            [("zeros.pt", b"\x80\x02" + b"\0" * (64 << 20))], compress=zipfile.ZIP_DEFLATED
        )
    )
    assert report.verdict is Verdict.ERROR


def test_storage_too_small_and_twin() -> None:
    torch = pytest.importorskip("torch")
    data = cf.torch_save_bytes({"w": torch.arange(100, dtype=torch.float32)})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        storage = next(n for n in archive.namelist() if "/data/" in n)
    shrunk = af.replace_member(data, storage, b"\0" * 16)
    report = _scan(shrunk)
    assert report.verdict is Verdict.MALICIOUS
    assert "torch.storage_too_small" in _rules(report)
    assert _scan(data).verdict is Verdict.SAFE


def test_legacy_tar_walked_and_payload_caught(marker: Path) -> None:
    benign = _scan(cf.legacy_tar(cf.dump({"step": 1})))
    assert benign.format == "torch-legacy-tar"
    assert benign.verdict is Verdict.SAFE, benign.findings
    evil = _scan(cf.legacy_tar(af.marker_payload(str(marker))))
    assert evil.verdict is Verdict.MALICIOUS
