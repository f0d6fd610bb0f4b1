"""Start-up injection: .pth import lines, sitecustomize, env vars, preload, writable paths."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.factories.env_sitepackages import fake_interpreter, make_dist
from trainguard.core.findings import Severity
from trainguard.env.startup import check_environment_variables, check_startup


def _check(
    site: Path,
    tmp_path: Path,
    *,
    ahead: tuple[Path, ...] = (),
    environ: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    site.mkdir(parents=True, exist_ok=True)
    return check_startup(
        fake_interpreter(site, ahead=ahead),
        environ=environ or {},
        ld_so_preload=tmp_path / "no-ld.so.preload",
    )


def test_clean_site_has_no_findings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_dist(site, "plain", "1.0", {"plain/__init__.py": b"X = 1\n", "plain.pth": b"/opt/extra\n"})
    assert _check(site, tmp_path) == []


def test_unowned_pth_import_is_high(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "zz_init.pth").write_text("import os; exec('print(1)')\n")
    findings = _check(site, tmp_path)
    assert [(f.rule, f.severity) for f in findings] == [("env.startup_injection", Severity.HIGH)]
    assert "no installed distribution owns it" in findings[0].message


def test_dist_shipped_pth_like_litellm_is_high(tmp_path: Path) -> None:
    # LiteLLM 1.82.8 shipped litellm_init.pth through its own wheel: an owner is no excuse.
    site = tmp_path / "site"
    make_dist(
        site,
        "litellm",
        "1.82.8",
        {"litellm_init.pth": b"import base64; exec(base64.b64decode('cGFzcw=='))\n"},
    )
    findings = _check(site, tmp_path)
    assert [f.severity for f in findings] == [Severity.HIGH]
    assert findings[0].evidence["distribution"] == "litellm"


def test_known_setuptools_pth_is_low(tmp_path: Path) -> None:
    site = tmp_path / "site"
    content = b"import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = False\n"
    make_dist(site, "setuptools", "80.0", {"distutils-precedence.pth": content})
    findings = _check(site, tmp_path)
    assert [f.severity for f in findings] == [Severity.LOW]
    assert findings[0].evidence["distribution"] == "setuptools"


def test_known_name_with_tampered_content_is_high(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_dist(site, "setuptools", "80.0", {"distutils-precedence.pth": b"import os\n"})
    (site / "distutils-precedence.pth").write_text("import os; os.system('id')\n")
    findings = _check(site, tmp_path)
    assert [f.severity for f in findings] == [Severity.HIGH]
    assert "differs from RECORD" in findings[0].message


def test_known_name_without_expected_owner_is_high(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "distutils-precedence.pth").write_text("import os\n")
    assert [f.severity for f in _check(site, tmp_path)] == [Severity.HIGH]


def test_sitecustomize_is_high(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("X = 1\n")
    findings = _check(site, tmp_path)
    assert [(f.severity, f.evidence["vector"]) for f in findings] == [
        (Severity.HIGH, "sitecustomize")
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned file")
def test_distro_sitecustomize_in_base_installation_is_medium(tmp_path: Path) -> None:
    # Debian's /usr/lib/python3.X/sitecustomize.py: root-owned, in the base install.
    site = tmp_path / "site"
    site.mkdir()
    custom = site / "sitecustomize.py"
    custom.write_text("X = 1\n")
    custom.chmod(0o644)
    interp = dataclasses.replace(fake_interpreter(site), base_prefix=str(tmp_path))
    findings = check_startup(interp, environ={}, ld_so_preload=tmp_path / "none")
    assert [f.severity for f in findings] == [Severity.MEDIUM]
    custom.chmod(0o666)
    findings = check_startup(interp, environ={}, ld_so_preload=tmp_path / "none")
    assert [f.severity for f in findings] == [Severity.HIGH]


def test_ld_so_preload(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    preload = tmp_path / "ld.so.preload"
    preload.write_text("")
    interp = fake_interpreter(site)
    assert check_startup(interp, environ={}, ld_so_preload=preload) == []
    preload.write_text("/usr/lib/libevil.so\n")
    findings = check_startup(interp, environ={}, ld_so_preload=preload)
    assert [(f.severity, f.evidence["vector"]) for f in findings] == [
        (Severity.HIGH, "ld_so_preload")
    ]


def test_writable_directory_ahead_of_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    ahead = tmp_path / "shared"
    ahead.mkdir()
    ahead.chmod(0o755)
    assert _check(site, tmp_path, ahead=(ahead,)) == []
    ahead.chmod(0o777)
    findings = _check(site, tmp_path, ahead=(ahead,))
    assert [(f.severity, f.evidence["vector"]) for f in findings] == [
        (Severity.HIGH, "writable_path")
    ]


@pytest.mark.parametrize(
    ("name", "value", "severity"),
    [
        ("LD_PRELOAD", "/tmp/x.so", Severity.HIGH),
        ("LD_AUDIT", "/tmp/a.so", Severity.HIGH),
        ("PYTHONHOME", "/tmp/py", Severity.HIGH),
        ("PYTHONSTARTUP", "/tmp/s.py", Severity.MEDIUM),
        ("PYTHONINSPECT", "1", Severity.LOW),
        ("PYTHONWARNINGS", "ignore::evilmod.Boom", Severity.HIGH),
        ("PYTHONBREAKPOINT", "evil.hook", Severity.MEDIUM),
        ("PYTHONPYCACHEPREFIX", "/tmp/pyc", Severity.MEDIUM),
    ],
)
def test_environment_variables(name: str, value: str, severity: Severity) -> None:
    findings = check_environment_variables({name: value})
    assert [(f.severity, f.evidence["variable"]) for f in findings] == [(severity, name)]


def test_environment_variables_legit_twins(tmp_path: Path) -> None:
    safe_dir = tmp_path / "lib"
    safe_dir.mkdir()
    safe_dir.chmod(0o755)
    assert check_environment_variables({}) == []
    assert check_environment_variables({"PYTHONWARNINGS": "ignore::DeprecationWarning,error"}) == []
    assert check_environment_variables({"PYTHONBREAKPOINT": "0"}) == []
    low = check_environment_variables({"LD_LIBRARY_PATH": str(safe_dir)})
    assert [f.severity for f in low] == [Severity.LOW]
    risky = check_environment_variables({"LD_LIBRARY_PATH": str(tmp_path / "missing")})
    assert [f.severity for f in risky] == [Severity.HIGH]
    path = check_environment_variables({"PYTHONPATH": str(safe_dir)})
    assert [f.severity for f in path] == [Severity.MEDIUM]
