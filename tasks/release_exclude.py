"""What never goes into a release: secrets that sit in the app's directory on the laptop.

A release is readable by the app's group, which nginx's user belongs to, and every
release is kept on the host until pruned. So these stay on the laptop, at any depth:

- `.env*` and `*.env` files (and directories: a venv called `.env`): python-dotenv's and
  Flask's convention for local secrets. Templates such as `.env.example` too: the rule is
  simply "no `.env*` ever leaves the laptop", and the app's environment on the host comes
  from `app_env_file` / `app_env_from` (a root-only file of its own, never a release).
- private keys and key stores by name (`*.key`, `*.p12`, `*.pfx`, `*.jks`, `*.keystore`,
  `id_rsa`, `id_ed25519`, ...), and any file holding a PEM private key
  (`-----BEGIN ... PRIVATE KEY-----`) whatever its name (`*.pem` bundles, `*.json`
  service-account files, ...).
- credential files of common tools: `.netrc`, `.pgpass`, `.pypirc`, `.git-credentials`,
  `.htpasswd`.
- the top-level `instance/` folder: Flask's place for deployment-specific config and
  secrets, "not under version control"; on the host it is `shared/instance/`.
- the configured `app_env_file` and `tls_certificate_key`, when they lie inside `app_source`.

`.flaskenv` does ship: Flask meant it for public settings (FLASK_APP) that belong with the code.
What was left out is named on one line of the run's output; contents are never printed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from pyinfra import logger

SECRET_NAMES = (".env*", "*.env", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
                ".netrc", ".pgpass", ".pypirc", ".git-credentials", ".htpasswd")
SECRET_TOP_DIRS = ("instance",)
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def secret_name(name: str) -> bool:
    """Whether a file or directory name alone marks it as a secret (case-insensitive:
    the laptop's file system may be)."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in SECRET_NAMES)


def secret_path(rel: str) -> bool:
    """Whether a path relative to the app (`a/b/c`) is, or lies in, something secret by name."""
    parts = rel.split("/")
    return (parts[0] in SECRET_TOP_DIRS and len(parts) > 1) or any(secret_name(part) for part in parts if part)


def holds_private_key(data: bytes) -> bool:
    return PRIVATE_KEY.search(data) is not None


def summary(left_out: Iterable[str], limit: int = 12) -> str:
    """One line naming what was left out (directories end with `/`)."""
    names = list(left_out)
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def report_left_out(app_source: str, left_out: Iterable[str]) -> None:
    """Say, once per run and app, what stayed on the laptop: names only."""
    names = list(left_out)
    if names:
        logger.warning(f"Not uploaded from {app_source} (secrets stay on this machine; the app's environment "
                       f"goes by app_env_file): {summary(names)}")
