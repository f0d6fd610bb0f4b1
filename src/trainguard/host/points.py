"""The login and persistence points ``host`` watches, and how bad a change to each is.

Severity follows what the point gives an attacker: a new uid-0 account, an SSH
key, a preloaded library or a PAM module is a login or code-execution backdoor
for every future session (critical); cron, systemd, sudoers and sshd changes run
code or widen access (high); a user's shell start-up file runs code only in that
user's interactive shells (medium).
"""

from __future__ import annotations

import enum
from typing import Final

from trainguard.core.findings import Severity


class Point(enum.StrEnum):
    """A kind of persistence point."""

    PASSWD = "passwd"  # noqa: S105 - the name of a file, not a password
    SSH_KEYS = "ssh_authorized_keys"
    SSHD = "sshd_config"
    CRON = "cron"
    AT = "at"
    SYSTEMD = "systemd"
    SHELL_RC = "shell_rc"
    PROFILE_D = "profile_d"
    ENVIRONMENT = "environment"
    LD_PRELOAD = "ld_so_preload"
    SUDOERS = "sudoers"
    PAM = "pam"
    PAM_MODULE = "pam_module"
    SETUID = "setuid"


SEVERITY: Final = {
    Point.PASSWD: Severity.MEDIUM,
    Point.SSH_KEYS: Severity.CRITICAL,
    Point.SSHD: Severity.HIGH,
    Point.CRON: Severity.HIGH,
    Point.AT: Severity.HIGH,
    Point.SYSTEMD: Severity.HIGH,
    Point.SHELL_RC: Severity.MEDIUM,
    Point.PROFILE_D: Severity.HIGH,
    Point.ENVIRONMENT: Severity.HIGH,
    Point.LD_PRELOAD: Severity.CRITICAL,
    Point.SUDOERS: Severity.HIGH,
    Point.PAM: Severity.CRITICAL,
    Point.PAM_MODULE: Severity.CRITICAL,
    Point.SETUID: Severity.HIGH,
}
"""Severity of a new or changed entry at each point (escalated per entry, see check.py)."""

DESCRIPTION: Final = {
    Point.PASSWD: "user account",
    Point.SSH_KEYS: "SSH authorized key",
    Point.SSHD: "sshd configuration",
    Point.CRON: "cron job",
    Point.AT: "at job",
    Point.SYSTEMD: "systemd unit",
    Point.SHELL_RC: "shell start-up file",
    Point.PROFILE_D: "login profile script",
    Point.ENVIRONMENT: "login environment",
    Point.LD_PRELOAD: "preloaded library",
    Point.SUDOERS: "sudo rule",
    Point.PAM: "PAM configuration",
    Point.PAM_MODULE: "PAM module",
    Point.SETUID: "setuid/setgid file",
}
"""Human name of each point, for messages."""
