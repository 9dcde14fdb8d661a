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

Links are never followed on the laptop, and never shipped: a link among what would ship
(`static/about.txt -> ../.env`, `static -> /home/me`) could carry any file the laptop's
user can read, whatever its name, to a host that serves it. So the settings check
(tasks/config/checks.py) refuses an app_source holding one, naming it, before any host is
touched; so does anything else that is not a regular file or a directory (a FIFO would
block the laptop forever on the first read, a socket or device has no content to ship).
What never ships anyway (clutter, secrets by name, shared and configured paths) may be a
link: a `venv -> ~/.virtualenvs/app` or `.env -> ../prod.env` is left where it is, unopened.
Files are read without following a link (O_NOFOLLOW) and only if regular, so a swap after
the check is refused too.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import logger
from pyinfra.api import DeployError

SECRET_NAMES = (".env*", "*.env", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
                ".netrc", ".pgpass", ".pypirc", ".git-credentials", ".htpasswd")
SECRET_TOP_DIRS = ("instance",)
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# Local clutter that must never reach a server: skipped without a word.
EXCLUDE_FILES = ("*.pyc", "*.pyo", ".DS_Store", "*.swp")
EXCLUDE_DIRS = ("__pycache__", ".git", ".venv", "venv", ".pytest_cache", "node_modules")


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


def excluded(rel: str) -> bool:
    """Local clutter (caches, VCS, venvs), by its path relative to the app."""
    path = Path(rel)
    return any(part in EXCLUDE_DIRS for part in path.parts) or any(
        path.match(pattern) for pattern in EXCLUDE_FILES)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """Control characters (escape sequences, CR, LF) shown escaped, never sent to the terminal."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


@dataclass
class Tree:
    """What `sort_out` found in an app's directory, in walk order."""

    # (rel, path) of each regular file that would ship, and (rel, None) of each secret
    # kept on the laptop (a directory's rel ends with /), in walk order.
    seen: list[tuple[str, Path | None]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "<rel> is a symbolic link (to ...)", ...

    @property
    def left_out(self) -> list[str]:
        return [rel for rel, path in self.seen if path is None]


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def _refused(path: Path, rel: str, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"{printable(rel)} is a symbolic link (to {printable(target)})"
    return f"{printable(rel)} is {_kind(mode)}"


def sort_out(source: Path, shared: Iterable[str] = (), never: Iterable[str] = ()) -> Tree:
    """The app directory `source`, walked without following any link and without
    opening anything: the regular files that would ship, the secrets left out, and
    what is refused (links and special files among what would ship). `shared`: the
    shared paths (never shipped: a link into shared/ stands there); `never`: paths
    kept home by configuration (app_env_file, tls_certificate_key inside the app)."""
    shared = {path.rstrip("/") for path in shared}
    never = set(never)
    tree = Tree()

    def visit(directory: Path, base: str) -> None:
        # As os.walk goes (top-down): a directory's own entries, then its directories'.
        with os.scandir(directory) as scan:
            entries = sorted(((entry, entry.stat(follow_symlinks=False).st_mode) for entry in scan),
                             key=lambda found: (not stat.S_ISDIR(found[1]), found[0].name))
        below = []
        for entry, mode in entries:
            rel, is_dir = f"{base}{entry.name}", stat.S_ISDIR(mode)
            if excluded(rel):
                continue
            if secret_path(rel + "/" if is_dir else rel) or rel in never:
                # Named, never opened nor entered (nor a link's target looked at).
                if not is_dir:
                    tree.seen.append((rel, None))
                elif _holds_files(Path(entry.path)):
                    tree.seen.append((rel + "/", None))
            elif rel in shared:
                continue  # the release holds a link into shared/ there
            elif is_dir:
                below.append(entry)
            elif stat.S_ISREG(mode):
                tree.seen.append((rel, Path(entry.path)))
            else:
                tree.refused.append(_refused(Path(entry.path), rel, mode))
        for entry in below:
            visit(Path(entry.path), f"{base}{entry.name}/")

    visit(source, "")
    return tree


def _holds_files(directory: Path) -> bool:
    """Whether a (real) directory holds anything but directories, its links not followed."""
    return any(files for _, _, files in os.walk(directory))


def refusal(app_source: str, refused: list[str]) -> str:
    """The one line refusing an app_source that holds links or special files."""
    return (f"app_source: {summary(refused, limit=5)} in {printable(app_source)}; links and special files are "
            "never shipped (the laptop never follows a link: one can reach any file outside app_source, "
            "a .env or a key): put the file itself there, or move it out of app_source")


def read_regular(path: Path, rel: str, app_source: str) -> tuple[bytes, os.stat_result]:
    """The bytes of a file of the app, opened without following a link and read only
    if it is a regular file (checked on the opened file, so a swap after the settings
    check is refused as well)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW answers for a link
            raise DeployError(refusal(app_source, [_refused(path, rel, stat.S_IFLNK)])) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DeployError(refusal(app_source, [_refused(path, rel, info.st_mode)]))
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read(), info
    finally:
        os.close(fd)


def configured_secrets(app) -> frozenset[str]:
    """The app's environment file and TLS key, relative to app_source when they lie in it:
    each is uploaded as a secret of its own, never as part of a release."""
    inside = (_inside(app.source_dir, app.local_path(path)) for path in (app.app_env_file, app.tls_certificate_key)
              if path)
    return frozenset(path for path in inside if path)


def _inside(source: Path, path: Path) -> str | None:
    """`path` relative to `source` when it lies inside it (the entry itself: a link
    there names the link, not where it points)."""
    try:
        return (path.parent.resolve() / path.name).relative_to(source.resolve()).as_posix()
    except ValueError:
        return None
