"""What `harden` means for one host, decided before any operation is added: whether
root may log in, the admin user's key, and the settings that would lock the deploy out
of its own server, refused with one line each (`lockouts`, run by
tasks/config/inventory.py). The steps are in tasks/steps/hardening.py; the settings in
tasks/config/settings/hardening.py.

The inventory's own SSH data (`ssh_user`, `ssh_password`, `ssh_key`) is pyinfra's, not a
setting of ours: it is read here only to know how the deploy logs in.
"""

from __future__ import annotations

import re
from typing import Any

from tasks.config.app import App, local_path

# One public key line as authorized_keys takes it: a type, base64, an optional comment.
PUBLIC_KEY_RE = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?"
)


def root_login(app: App, login: str | None) -> bool:
    """Whether sshd lets root in (by key only): as set, else only when the deploy itself
    logs in as root or names no user (pyinfra then takes one from ~/.ssh/config or the
    laptop's, which may be root)."""
    if app.harden_root_login is not None:
        return app.harden_root_login
    return login in (None, "root")


def admin_key(app: App) -> str | None:
    """harden_admin_key's one line, or None when no admin user is asked for; ValueError
    naming the key when it is not one public key."""
    if not app.harden_admin_user:
        return None
    if not app.harden_admin_key:
        raise ValueError("harden_admin_key: required with harden_admin_user (the user logs in by key only)")
    path = local_path(app.harden_admin_key)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"harden_admin_key: {app.harden_admin_key!r} cannot be read ({exc.__class__.__name__})")
    if len(lines) != 1 or not PUBLIC_KEY_RE.fullmatch(lines[0]):
        raise ValueError(f"harden_admin_key: {app.harden_admin_key!r} is not one SSH public key "
                         "(the .pub file, one line: 'ssh-ed25519 AAAA... comment')")
    return lines[0]


def lockouts(apps: list[App], data: dict[str, Any]) -> list[str]:
    """One line per setting that would lock the deploy out of the host once hardened
    (none when `harden` is off); the host's values are its first app's, `data` is its
    pyinfra data."""
    app = apps[0]
    if not app.harden:
        return []
    problems = []
    login = data.get("ssh_user")
    if data.get("ssh_password") and not data.get("ssh_key"):
        problems.append("harden: the inventory logs in with a password (ssh_password) and no ssh_key, and a "
                        "hardened sshd takes keys only: give the deploy a key first (ssh-copy-id, then ssh_key)")
    if login == "root" and app.harden_root_login is False:
        problems.append("harden_root_login = False: the inventory logs in as root (ssh_user), which this would "
                        "lock out; create a sudo user first (harden_admin_user), then connect as it")
    if app.harden_admin_user in ("root", *(other.app_user for other in apps)):
        problems.append(f"harden_admin_user = {app.harden_admin_user!r}: is root or an app's own user (app code "
                        "never runs as root, nor does an admin share an app's account); name a user of its own")
    try:
        admin_key(app)
    except ValueError as exc:
        problems.append(str(exc))
    return problems
