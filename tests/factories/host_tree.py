"""A fake host root for `host` tests: users, SSH, cron, systemd, sudo, PAM, setuid.

Every file is plain text written by code; nothing here is ever executed.
"""

from __future__ import annotations

import os
from pathlib import Path

KEY_ALICE = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxJ3h8Qv0bJm1c0cFQh2l1mZpQ3q2S7F8Wm6Vn4T1aB alice@laptop"
)
KEY_EVIL = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9mR2sY7tQpZ1xL3vN8cW4eB6aH0uJ5fD2gS9kT7yXq intern@box"
)


def write(root: Path, rel: str, text: str | bytes, mode: int = 0o644) -> Path:
    """Write a file below ``root`` (``rel`` is an absolute in-root path)."""
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def build_host(root: Path) -> Path:
    """A small but complete host tree; returns ``root``."""
    write(
        root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    )
    write(
        root,
        "/etc/ssh/sshd_config",
        "# defaults\nPermitRootLogin prohibit-password\nInclude /etc/ssh/sshd_config.d/*.conf\n",
    )
    write(root, "/etc/ssh/sshd_config.d/10-site.conf", "PasswordAuthentication no\n")
    write(root, "/home/alice/.ssh/authorized_keys", f"# alice's keys\n{KEY_ALICE}\n", 0o600)
    write(root, "/home/alice/.bashrc", "export PATH=$HOME/bin:$PATH\nalias ll='ls -l'\n")
    write(root, "/root/.bashrc", "umask 022\n")
    write(
        root,
        "/etc/crontab",
        "SHELL=/bin/sh\n# m h dom mon dow user command\n"
        "17 * * * * root cd / && run-parts /etc/cron.hourly\n",
    )
    write(root, "/etc/cron.d/backup", "0 3 * * * root /usr/local/bin/backup\n")
    write(
        root,
        "/etc/cron.daily/logrotate",
        "#!/bin/sh\n/usr/sbin/logrotate /etc/logrotate.conf\n",
        0o755,
    )
    write(
        root,
        "/etc/systemd/system/train-agent.service",
        "[Unit]\nDescription=agent\n[Service]\nExecStart=/usr/local/bin/agent\n",
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    os.symlink("/etc/systemd/system/train-agent.service", wants / "train-agent.service")
    write(
        root,
        "/etc/sudoers",
        "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n#includedir /etc/sudoers.d\n",
        0o440,
    )
    write(
        root,
        "/etc/sudoers.d/ops",
        "%ops ALL=(root) /usr/bin/systemctl restart train-agent\n",
        0o440,
    )
    write(
        root,
        "/etc/pam.d/sshd",
        "@include common-auth\naccount required pam_nologin.so\nsession required pam_unix.so\n",
    )
    write(root, "/lib/x86_64-linux-gnu/security/pam_unix.so", b"\x7fELF\x02\x01\x01" + b"\x00" * 64)
    write(root, "/etc/profile", "if [ -d /etc/profile.d ]; then :; fi\n")
    write(root, "/etc/profile.d/cuda.sh", "export PATH=/usr/local/cuda/bin:$PATH\n")
    write(root, "/etc/environment", 'PATH="/usr/local/bin:/usr/bin:/bin"\n')
    write(root, "/usr/bin/sudo", b"\x7fELF sudo", 0o4755)
    write(root, "/usr/bin/ls", b"\x7fELF ls", 0o755)
    return root
