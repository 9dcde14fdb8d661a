"""What every part of the release tool shares: its settings (`Settings`, `configure`), the app
root's paths, who runs it (`BY`, `RUN`), its errors, and the low-level ways root opens files
(never through a link; in a directory the app user can write, only what should be there)."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path
from typing import TypedDict


META = ".deploy-release.json"
LOADER = ".deploy-loader.py"
VENV_MARKER = ".deploy-complete"


class Settings(TypedDict):
    """release-tool.json: what the deploy tells the tool about its app. The deploy
    builds it from this very definition (tasks/release.py `tool_settings`), so the
    two sides cannot drift apart."""
    app: str
    service: str  # the app's systemd unit
    user: str  # the app user, who runs every step with app code
    requirements: str  # the requirements file, relative to a release
    sandbox: list  # systemd properties confining each step (tasks/settings.py SANDBOX)
    writable: list  # the shared paths a step may write
    master_fifo: str  # uWSGI's master FIFO, in a directory of the app user's
    stats_socket: str  # uWSGI's stats socket, likewise
    reload_timeout: int  # seconds for the workers of a reload to come up
    keep_releases: int
    static_dir: str  # the static directory in each release that nginx serves (assets.py), or ""
    nginx_error_log: str
    health: dict  # the health check (files/healthcheck.py)
    health_module: str  # where files/healthcheck.py is installed
    maintenance_dir: str  # root's: the flag `on` (nginx answers 503 while it exists) and page.html
    workers: list  # the units of the app's worker processes, restarted onto each healthy release
    environment_files: list  # the EnvironmentFile= of the app's units (secrets, REDIS_URL, ...), root's
    uwsgi: str  # uWSGI's binary: the import check and the canary run the app under it (`--pyrun`)
    message_queue: bool  # a Socket.IO app: the import check also proves REDIS_URL's queue carries a message
    canary: dict  # the canary by share of traffic (split.py): its share, window, verdict and places; {} when off


# Set by configure() (main() calls it; tests call it with a temporary root).
ROOT = RELEASES = CURRENT = VENVS = HISTORY = LOCK = AUDIT = Path("/nonexistent")
CONFIG: Settings = {}  # type: ignore[typeddict-item]
# Who runs this (the laptop's user@machine, given by the deploy as --by), and the run's id.
BY = RUN = ""
AUDITED = False  # the activation said how it went in the audit log


def configure(root: Path, config: Settings | None = None) -> None:
    global ROOT, RELEASES, CURRENT, VENVS, HISTORY, LOCK, AUDIT, CONFIG
    ROOT = Path(root)
    RELEASES, CURRENT, VENVS = ROOT / "releases", ROOT / "current", ROOT / "venvs"
    HISTORY, LOCK, AUDIT = ROOT / "history.jsonl", ROOT / "deploy.lock", ROOT / "audit.jsonl"
    CONFIG = config if config is not None else json.loads((ROOT / "release-tool.json").read_text())


class Failure(Exception):
    pass


class RolledBack(Failure):
    """An activation failed its health gate and the release before it is live and healthy again."""


def log(message: str) -> None:
    print(message, flush=True)


def open_no_follow(path: str, flags: int, kind: int, what: str) -> int:
    """Open a path in a directory the app user can write (/run/<app>) the only safe way
    for root: never through a link (O_NOFOLLOW), and only if it is what it should be,
    with one name (a hard link the app made to a file of someone else's is refused)
    (checked on the opened file, so a swap between check and use is impossible)."""
    link = Failure(f"refusing {what} {path}: it is a symbolic link (in a directory the app user "
                   "can write; root never follows links there)")
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link from None
        raise
    info = os.fstat(fd)
    mode = info.st_mode
    if stat.S_ISLNK(mode):  # O_PATH|O_NOFOLLOW opens the link itself
        os.close(fd)
        raise link
    if stat.S_IFMT(mode) != kind:
        os.close(fd)
        raise Failure(f"refusing {what} {path}: it is not a {'FIFO' if kind == stat.S_IFIFO else 'socket'} "
                      f"(mode {stat.filemode(mode)})")
    if info.st_nlink != 1:
        os.close(fd)
        raise Failure(f"refusing {what} {path}: it has {info.st_nlink} hard links (in a directory the app "
                      "user can write; root reads nothing there that has another name)")
    return fd


# History -------------------------------------------------------------------
# One JSON object a line, appended by root in <app_root> (which the app user cannot
# write): `created` (checked, ready to switch to), `switched`, `live` (healthy after
# an activation; kind deploy, rollback, rollback-to, recheck or restored), `failed`
# (after the switch: never a rollback target) and `removed`. The order of the lines
# is the host's order of events; the names of releases play no part in it.

def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def own_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """A regular file of root's in a directory of root's, never through a link."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise Failure(f"refusing {path}: not a regular file owned by uid {os.geteuid()}")
    return fd


def append_line(path: Path, entry: dict) -> None:
    """One JSON line appended to a log of root's (history, audit)."""
    fd = own_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        # After a line cut short by a crash, a new line of its own.
        start = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
        os.write(fd, (start + json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a log of root's, skipping a line cut short by a crash."""
    try:
        fd = own_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def read_own_json(path: Path) -> dict | None:
    """A small JSON object in a file of root's (a flag, a marker): None if there is no
    file, {} if it holds no object."""
    try:
        fd = own_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, errors="replace") as handle:
        try:
            found = json.loads(handle.read())
        except ValueError:
            found = {}
    return found if isinstance(found, dict) else {}


def write_own(path: Path, text: str) -> None:
    """Replace a small file of root's atomically (a new file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _process(pid: int) -> tuple[str, int, str] | None:
    """(command name, parent pid, start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            text = handle.read()
    except (OSError, ValueError):
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    try:
        return head.partition("(")[2], int(fields[1]), fields[19]
    except (IndexError, ValueError):
        return None
