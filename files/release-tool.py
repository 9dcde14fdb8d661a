#!/usr/bin/env python3
"""Release choreography on the host, installed by the pyinfra deploy as
<app_root>/bin/release-tool and driven by it (and usable by hand, as root):

    release-tool list                  releases, the live one marked
    release-tool build-venv ID         build the release's venv as the app user
    release-tool check ID              import the release's app as the app user
    release-tool run ID -- COMMAND     run a command in the release as the app user
    release-tool canary ID             call the release's app once for its health path
    release-tool activate [ID]         switch to ID (default: the live one), reload
                                       uWSGI without dropping requests, check health
                                       through nginx, and switch back if it fails
    release-tool rollback [ID]         activate the previous (or the named) release
    release-tool prune                 keep the newest N releases and their venvs
    release-tool health                check the app through nginx
    release-tool history               what went live when (host clock), and how it went
    release-tool lock show|take|release|break   the per-app deploy lock
    release-tool status [--json]       the live release, units, uWSGI, nginx, health, disk
    release-tool exec [--tty] -- CMD   run a command in the live release as the app user
    release-tool maintenance on|off|status      nginx answers 503 with the maintenance page
    release-tool audit [--json] [-n N]          who deployed, rolled back, switched what, when

Everything that runs app code or its dependencies' build steps (build-venv, check,
run, canary) runs as the app user in a transient systemd unit with the service's
own sandbox (`sandbox` in the settings), so no process outlives it.

The host keeps its own record of activations in <app_root>/history.jsonl (root-only,
one JSON object a line, appended): rollback targets and pruning follow that record
in the order its lines were written, never release names (which come from the
deploying machine's clock).

Every deploy, rollback, maintenance switch and lock break also appends one line to
<app_root>/audit.jsonl (root's): who (the laptop's user and machine, `--by`), what,
when, and how it ended.

Settings come from release-tool.json next to the bin/ directory. Standard library
only: this runs on the host's own python3.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import sys
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
    nginx_error_log: str
    health: dict  # the health check (files/healthcheck.py)
    health_module: str  # where files/healthcheck.py is installed
    maintenance_dir: str  # root's: the flag `on` (nginx answers 503 while it exists) and page.html
    workers: list  # the units of the app's worker processes, restarted onto each healthy release
    environment_files: list  # the EnvironmentFile= of the app's units (secrets, REDIS_URL, ...), root's
    uwsgi: str  # uWSGI's binary: the import check and the canary run the app under it (`--pyrun`)
    message_queue: bool  # a Socket.IO app: the import check also proves REDIS_URL's queue carries a message


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


# Releases -----------------------------------------------------------------

def releases() -> list[str]:
    """Complete releases, oldest first (a deploy interrupted while unpacking leaves
    a directory without metadata: not a release; prune removes it)."""
    if not RELEASES.is_dir():
        return []
    return sorted(p.name for p in RELEASES.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / META).is_file())


def live() -> str | None:
    try:
        return Path(os.readlink(CURRENT)).name
    except OSError:
        return None


def release_dir(release: str) -> Path:
    path = RELEASES / release
    if release.startswith(".") or "/" in release or not (path / META).is_file():
        raise Failure(f"no release {release!r} in {RELEASES} (see: release-tool list)")
    return path


def venv_of(release: str) -> str:
    return os.path.realpath(RELEASES / release / ".venv")


def switch(release: str) -> None:
    """Point `current` at a release atomically: a new link renamed over the old
    one, so there is no moment without a `current`."""
    release_dir(release)
    tmp = ROOT / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, CURRENT)
    log(f"current -> releases/{release}")


# uWSGI ---------------------------------------------------------------------

def service_active() -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", CONFIG["service"]]).returncode == 0


def journal_tail(lines: int = 30) -> str:
    out = subprocess.run(
        ["journalctl", "-u", CONFIG["service"], "-n", str(lines), "--no-pager", "-o", "cat"],
        capture_output=True, text=True,
    )
    return out.stdout


def systemctl(action: str) -> None:
    result = subprocess.run(["systemctl", action, CONFIG["service"]], capture_output=True, text=True)
    if result.returncode != 0:
        raise Failure(f"systemctl {action} {CONFIG['service']} failed: {result.stderr.strip()}\n"
                      f"its last log lines:\n{journal_tail()}")


def _open_no_follow(path: str, flags: int, kind: int, what: str) -> int:
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


def open_master_fifo() -> int:
    """uWSGI's master FIFO, open for writing (ENXIO: nobody reads it, uWSGI is not up)."""
    try:
        return _open_no_follow(CONFIG["master_fifo"], os.O_WRONLY | os.O_NONBLOCK, stat.S_IFIFO,
                               "uWSGI's master FIFO")
    except OSError as exc:
        raise Failure(f"uWSGI's master FIFO {CONFIG['master_fifo']} is not answering: {exc}") from exc


STATS_LIMIT = 4 << 20  # bytes: uWSGI's stats of a few hundred workers fit many times over


def main_pid() -> int:
    """The app's uWSGI master, by systemd (0: the service is not running)."""
    out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", CONFIG["service"]],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0


def stats() -> dict | None:
    """uWSGI's stats (JSON on a unix socket), or None while it is not answering. The
    socket is opened as a path (O_PATH, no links followed), checked to be a socket, and
    connected to through /proc/self/fd: what is checked is what is connected to. A
    link or another kind of file there is refused (Failure), and so is a socket that
    the uWSGI master systemd started does not serve (SO_PEERCRED): the app user can
    replace the socket in its directory with one of its own.

    Even uWSGI's own answer is the app's word: its workers (app code) write the
    figures in memory they share with the master. So they are only shown (ops.py
    status) and waited on; what root decides rests on the kernel's facts
    (`worker_pids`) and the health check. The answer is read within a size and a
    time limit and must be a JSON object."""
    try:
        fd = _open_no_follow(CONFIG["stats_socket"], os.O_PATH, stat.S_IFSOCK, "uWSGI's stats socket")
    except OSError:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(f"/proc/self/fd/{fd}")
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
            master = main_pid()
            if pid != master:
                raise Failure(f"refusing uWSGI's stats socket {CONFIG['stats_socket']}: it is served by pid "
                              f"{pid} (uid {uid}), not by the uWSGI master of {CONFIG['service']} "
                              f"({f'pid {master}' if master else 'not running'}): the app user replaced it? "
                              f"(systemctl restart {CONFIG['service']} makes a new one)")
            chunks, size, deadline = [], 0, time.monotonic() + 5
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > STATS_LIMIT or time.monotonic() > deadline:
                    return None
        data = json.loads(b"".join(chunks))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def stats_workers(data: dict | None) -> list[dict]:
    """The workers of a stats answer, as far as they have the expected shape."""
    workers = (data or {}).get("workers")
    return [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []


def worker_pids() -> set[int]:
    """uWSGI's worker processes, by the kernel: the children of the master systemd
    started (the app cannot add to them, nor keep one there once it ended)."""
    master = main_pid()
    if not master:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            process = _process(int(entry))
            if process is not None and process[1] == master:
                found.add(int(entry))
    return found


def wait_for_new_workers(old: set[int], timeout: float) -> None:
    """Until every worker is a new process (by the kernel: none of `old` is left) and
    uWSGI reports each of them loaded and accepting. The report alone decides nothing:
    a forged one cannot end the wait while an old worker still serves, and the health
    check that follows reaches new workers only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids()
        workers = stats_workers(stats())
        if (pids and not pids & old and workers and {w.get("pid") for w in workers} <= pids
                and all(w.get("accepting", 1) == 1 and w.get("status") in ("idle", "busy") for w in workers)):
            return
        time.sleep(0.2)
    raise Failure(f"uWSGI workers were not all replaced within {timeout:.0f}s\n"
                  f"its last log lines:\n{journal_tail()}")


def reload(mode: str, fifo: int | None = None) -> None:
    """Load the live release into uWSGI.

    chain:   workers are replaced one at a time (lazy-apps), the others keep serving;
             for code-only changes.
    graceful: SIGHUP, uWSGI re-executes itself with the socket open (requests wait in
             the listen queue); for a new venv or uWSGI config.
    restart: systemctl restart; for a new unit or uWSGI binary.
    """
    timeout = CONFIG["reload_timeout"]
    if not service_active():
        log(f"starting {CONFIG['service']}")
        systemctl("start")
        wait_for_new_workers(set(), timeout)
        return
    old = worker_pids()
    if mode == "restart":
        log(f"restarting {CONFIG['service']}")
        systemctl("restart")
    elif mode == "graceful":
        log(f"reloading {CONFIG['service']} gracefully (SIGHUP)")
        systemctl("reload")
    else:
        log(f"chain-reloading {CONFIG['service']}: one worker at a time")
        fd = fifo if fifo is not None else open_master_fifo()
        try:
            os.write(fd, b"c")
        finally:
            if fifo is None:
                os.close(fd)
    wait_for_new_workers(old, timeout)


# Health --------------------------------------------------------------------

def healthcheck():
    """The deploy's one health check (files/healthcheck.py, installed beside the
    release tool's settings name it), loaded once."""
    module = sys.modules.get("pyinfra_flask_healthcheck")
    if module is None:
        spec = importlib.util.spec_from_file_location("pyinfra_flask_healthcheck", CONFIG["health_module"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
    return module


def health(attempts: int | None = None) -> None:
    """Request the health path until it answers as expected."""
    check = healthcheck()
    try:
        check.wait_healthy(CONFIG["health"], attempts)
    except check.Unhealthy as failure:
        raise Failure(str(failure)) from None


# History -------------------------------------------------------------------
# One JSON object a line, appended by root in <app_root> (which the app user cannot
# write): `created` (checked, ready to switch to), `switched`, `live` (healthy after
# an activation; kind deploy, rollback, rollback-to, recheck or restored), `failed`
# (after the switch: never a rollback target) and `removed`. The order of the lines
# is the host's order of events; the names of releases play no part in it.

def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _own_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """A regular file of root's in a directory of root's, never through a link."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise Failure(f"refusing {path}: not a regular file owned by uid {os.geteuid()}")
    return fd


def record(event: str, release: str, **extra) -> None:
    moment = time.time()
    entry = {"at": iso(moment), "time": round(moment, 3), "event": event, "release": release,
             **{key: value for key, value in extra.items() if value not in (None, "")}}
    _append(HISTORY, entry)
    if event == "live":
        _write_own(ROOT / "live-confirmed", release + "\n")


def _append(path: Path, entry: dict) -> None:
    """One JSON line appended to a log of root's (history, audit)."""
    fd = _own_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        # After a line cut short by a crash, a new line of its own.
        start = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
        os.write(fd, (start + json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict]:
    """The JSON objects of a log of root's, skipping a line cut short by a crash."""
    try:
        fd = _own_file(path, os.O_RDONLY)
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


def _write_own(path: Path, text: str) -> None:
    """Replace a small file of root's atomically (a new file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_history() -> list[dict]:
    return [entry for entry in _read_lines(HISTORY)
            if isinstance(entry.get("release"), str) and isinstance(entry.get("event"), str)]


def confirmed() -> str | None:
    """The release whose activation last ended healthy (what uWSGI last ran well)."""
    try:
        fd = _own_file(ROOT / "live-confirmed", os.O_RDONLY)
    except (FileNotFoundError, Failure):
        return None
    with os.fdopen(fd) as handle:
        return handle.read().strip() or None


def failed_releases(entries: list[dict]) -> dict[str, dict]:
    return {entry["release"]: entry for entry in entries if entry["event"] == "failed"}


def rollback_target(entries: list[dict], current: str | None, present: set[str]) -> str | None:
    """The release live before the current one, by the host's record: every
    activation puts its release on top of a stack, a rollback (without an id) takes
    the release it leaves off it, so rolling back again goes further back; releases
    that failed after a switch, or are gone, never qualify. Releases the record does
    not know (made before it existed) come after it, by name."""
    stack: list[str] = []
    failed = set(failed_releases(entries))
    for entry in entries:
        release, event = entry["release"], entry["event"]
        if event == "live":
            if entry.get("kind") == "rollback" and entry.get("from"):
                stack = [name for name in stack if name != entry["from"]]
            stack = [name for name in stack if name != release] + [release]
        elif event in ("failed", "removed"):
            stack = [name for name in stack if name != release]
    for release in reversed(stack):
        if release != current and release in present and release not in failed:
            return release
    known = {entry["release"] for entry in entries}
    older = sorted(name for name in present if name not in known and (current is None or name < current))
    return older[-1] if older else None


def prune_choice(names: list[str], entries: list[dict], current: str | None, keep: int) -> list[str]:
    """Releases to remove: all but the `keep` newest by the host's record (its last
    event for each; releases it does not know count as older, by name) and the live
    one. Releases that failed after a switch are removed first."""
    failed = set(failed_releases(entries))
    last: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry["event"] != "removed":
            last[entry["release"]] = index
    ranked = sorted((name for name in names if name not in failed), key=lambda name: (last.get(name, -1), name))
    kept = set(ranked[-keep:]) | ({current} if current else set())
    return [name for name in names if name not in kept]


# Running things as the app user ---------------------------------------------

def sandboxed(release: str, command: list[str], writable: list[str], venv: str | None,
              extra_env: dict | None = None, tty: bool = False) -> int:
    """Run a command as the app user in a transient systemd unit with the service's
    own sandbox, writing only to `writable`; every process it starts ends with it.
    With tty, on a pseudo-terminal of its own, connected to this one (`flask shell`)."""
    path = release_dir(release)
    env = {
        "PATH": (f"{venv}/bin:" if venv else "") + "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(ROOT),
        "LANG": "C.UTF-8",
        "DEPLOY_RELEASE": release,
        **({"VIRTUAL_ENV": venv} if venv else {}),
        **(extra_env or {}),
        **({"TERM": os.environ.get("TERM") or "xterm"} if tty else {}),
    }
    user = CONFIG["user"]
    argv = [
        "systemd-run", "--wait", "--pty" if tty else "--pipe", "--collect", "--quiet", "--service-type=exec",
        f"--unit={CONFIG['app']}-release-{secrets.token_hex(4)}",
        f"--description=release {release} of {CONFIG['app']}: a step as {user}",
        "-p", f"User={user}", "-p", f"Group={user}", "-p", f"WorkingDirectory={path}",
        # The app's environment as its units have it (secrets, REDIS_URL, ...), read by
        # systemd (never on a command line).
        *[arg for path in CONFIG["environment_files"] for arg in ("-p", f"EnvironmentFile=-{path}")],
        *[arg for prop in CONFIG["sandbox"] for arg in ("-p", prop)],
        # /run/<app> is the running service's (its socket, FIFO, stats): a step never
        # writes there, nor anywhere in /run (which ProtectKernelTunables= and
        # ProtectControlGroups= can leave writable, as seen on the test hosts).
        "-p", "ReadOnlyPaths=/run",
        *[arg for where in writable for arg in ("-p", f"ReadWritePaths=-{where}")],
        *[f"--setenv={key}={value}" for key, value in env.items()],
        "--", *command,
    ]
    return subprocess.run(argv, stdin=None if tty else subprocess.DEVNULL).returncode


def in_release(release: str, command: list[str], extra_env: dict | None = None, tty: bool = False) -> int:
    """A step in a release: the venv on PATH, the shared paths writable."""
    return sandboxed(release, command, CONFIG["writable"], f"{release_dir(release)}/.venv", extra_env, tty)


def discard(release: str) -> None:
    if release == live():
        raise Failure(f"refusing to remove the live release {release}")
    shutil.rmtree(RELEASES / release, ignore_errors=True)
    record("removed", release)
    log(f"removed release {release}")


def cmd_list(args) -> None:
    current = live()
    rows = releases()
    if args.json:
        print(json.dumps({"live": current, "confirmed": confirmed(), "releases": rows}))
        return
    if not rows:
        log("no releases yet")
    failed = failed_releases(read_history())
    deployed = deployers(read_audit())
    for name in rows:
        meta = json.loads((RELEASES / name / META).read_text())
        marker = "* live" if name == current else ("(failed after its switch)" if name in failed else "")
        by = deployed.get(name, {}).get("by") or {}
        deployer = f"  deployed by {by.get('user', '?')}@{by.get('machine', '?')}" if by else ""
        log(f"{name}  commit={meta.get('commit') or '-'}  venv={Path(venv_of(name)).name}  {marker}".rstrip()
            + deployer)


def cmd_history(args) -> None:
    for entry in read_history()[-args.last:]:
        extra = " ".join(f"{key}={value}" for key, value in entry.items()
                         if key not in ("at", "time", "event", "release"))
        log(f"{entry.get('at', '?')}  {entry['event']:<8} {entry['release']}  {extra}".rstrip())


# Venvs ----------------------------------------------------------------------

def venv_ready(venv: Path) -> bool:
    """Built, handed to root, then marked: root owns the venv and its marker."""
    try:
        return all(os.lstat(path).st_uid == 0 and not stat.S_ISLNK(os.lstat(path).st_mode)
                   for path in (venv, venv / VENV_MARKER))
    except OSError:
        return False


def cmd_build_venv(args) -> None:
    """The release's venv, built by the app user in the sandbox (pip and every
    dependency's build step run as the app user, never as root) into a directory
    only that build may write, then handed to root (owner root, group the app's,
    no write bits for group or others) before its completion marker is written."""
    path = release_dir(args.release)
    meta = json.loads((path / META).read_text())
    venv = VENVS / meta["venv"]
    if os.path.realpath(path / ".venv") != os.path.realpath(venv):
        raise Failure(f"release {args.release}: .venv does not point at {venv}")
    if venv_ready(venv):
        log(f"venv {venv.name} is built already")
        return
    account = pwd.getpwnam(CONFIG["user"])
    if os.path.lexists(venv):  # half-built by an interrupted run: from scratch
        shutil.rmtree(venv) if stat.S_ISDIR(os.lstat(venv).st_mode) else venv.unlink()
    os.mkdir(venv, 0o750)
    os.chown(venv, account.pw_uid, account.pw_gid, follow_symlinks=False)
    requirements = CONFIG["requirements"]
    script = ('python3 -m venv "$1" && exec "$1/bin/pip" install --no-input --disable-pip-version-check '
              '--no-cache-dir -q -r "$2"')
    code = sandboxed(args.release, ["/bin/sh", "-c", script, "build-venv", str(venv), requirements],
                     [str(venv)], None)
    if code != 0:
        shutil.rmtree(venv, ignore_errors=True)
        discard(args.release)
        raise Failure(f"building venv {venv.name} from {requirements} failed ({code}, output above); "
                      "the live release was left alone")
    # The build's processes ended with its unit, and the service's sandbox never
    # could write here; -P and -h: links are changed themselves, never followed.
    for command in (["chown", "-R", "-P", "-h", f"root:{CONFIG['user']}", "--", str(venv)],
                    ["chmod", "-R", "go-w,ug-s", "--", str(venv)]):
        subprocess.run(command, check=True)
    marker = os.open(venv / VENV_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    os.fchown(marker, 0, account.pw_gid)
    os.close(marker)
    log(f"venv {venv.name} built as {CONFIG['user']} from {requirements}, now root's")


# Checks before the switch -------------------------------------------------------

# Run as the app user by uWSGI itself (`uwsgi --pyrun`, the release's venv as its
# `virtualenv`), so the app imports the way uWSGI runs it: with uWSGI's embedded
# Python and its `uwsgi` module (an app that needs them, such as Flask-SocketIO in
# `gevent_uwsgi` mode or one on uWSGI's WebSocket API, is not refused). It imports
# the app through the release's loader and (for the canary) calls it once, as a
# WSGI server would, for the health path. Its arguments come in DEPLOY_CANARY.
CANARY = r"""
import importlib, importlib.util, json, os, runpy, sys, time, traceback


# Publish once through REDIS_URL and receive it, with the client Flask-SocketIO would
# use (python-socketio's RedisManager: `redis`, or `valkey`): without it, or with a
# queue that does not answer, every broadcast and every emit from a worker would be
# dropped with no more than a line in the log.
def message_queue(url):
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    names = {"redis": ["redis"], "rediss": ["redis"], "valkey": ["valkey"], "valkeys": ["valkey"],
             "unix": ["redis", "valkey"]}.get(scheme)
    if names is None:
        print(f"message queue: a {scheme}:// URL, not checked (only Redis's are)", flush=True)
        return
    for name in names:
        try:
            client = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        sys.exit(f"socketio: the release's venv has no {' or '.join(names)} package, the client of the message "
                 f"queue (REDIS_URL): Flask-SocketIO would drop every broadcast and every emit from a worker; "
                 f"add {names[0]} to the app's requirements")
    token = os.urandom(16).hex()
    try:
        connection = client.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        pubsub = connection.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"pyinfra-flask-check-{token}")
        connection.publish(f"pyinfra-flask-check-{token}", token)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message.get("data") in (token, token.encode()):
                break
        else:
            sys.exit("socketio: a message published through REDIS_URL never came back within 10 s")
        pubsub.close()
    except Exception as error:
        # redis-py's messages name the address, never the password.
        sys.exit(f"socketio: the message queue (REDIS_URL) does not work: {type(error).__name__}: {error}")
    print(f"message queue: a message went through REDIS_URL and back ({name} "
          f"{getattr(client, '__version__', '')})", flush=True)


def main():
    loader, check, what, module, queue = json.loads(os.environ["DEPLOY_CANARY"])
    spec = importlib.util.spec_from_file_location("healthcheck", module)
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    application = runpy.run_path(loader, run_name="deploy_canary")["application"]
    if what == "import":
        print("the app imports (under uWSGI)", flush=True)
        if queue:
            if not os.environ.get("REDIS_URL"):
                sys.exit("socketio: the app's environment has no REDIS_URL for its message queue")
            message_queue(os.environ["REDIS_URL"])
        return
    status, text = healthcheck.wsgi_get(check, application)
    wrong = healthcheck.verdict(check, status, text)
    if wrong:
        sys.exit(f"GET {check['path']} {wrong}")
    print(f"canary: GET {check['path']} answered {status} (called in-process, under uWSGI)", flush=True)


# uWSGI ends with 0 after a script that raised: only SystemExit sets its exit code.
try:
    main()
except Exception:
    traceback.print_exc()
    sys.exit(1)
"""
CANARY_FILE = ".deploy-canary.py"


def _canary(release: str, what: str) -> int:
    path = release_dir(release)
    # Root's, in the release (root's directory, which the app user cannot write),
    # for as long as the step runs.
    fd = os.open(path / CANARY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(CANARY)
    os.chown(path / CANARY_FILE, 0, pwd.getpwnam(CONFIG["user"]).pw_gid, follow_symlinks=False)
    arguments = json.dumps([str(path / LOADER), CONFIG["health"], what, CONFIG["health_module"],
                            CONFIG["message_queue"]])
    try:
        return in_release(release, [CONFIG["uwsgi"], "--pyrun", str(path / CANARY_FILE), "--virtualenv",
                                    f"{path}/.venv"], {"DEPLOY_CANARY": arguments})
    finally:
        # Gone again: the release holds what was uploaded, and nothing else.
        (path / CANARY_FILE).unlink(missing_ok=True)


def cmd_check(args) -> None:
    """Before the switch, first: the release's app must import (as the app user, in
    the sandbox)."""
    if _canary(args.release, "import") != 0:
        discard(args.release)
        what = "import, or its message queue does not work" if CONFIG["message_queue"] else "import"
        raise Failure(f"release {args.release} failed its check before the switch: the app does not "
                      f"{what} (output above); the live release was left alone and kept serving")
    record("created", args.release, run=args.run)
    log(f"release {args.release}: the app imports")


def cmd_canary(args) -> None:
    """Before the switch, last (after the before-switch commands, so that the tables
    a first `flask init-db` creates exist): the app answers its health path, called
    in-process, so a release that would fail never takes live traffic."""
    if _canary(args.release, "call") != 0:
        discard(args.release)
        raise Failure(f"release {args.release} failed its check before the switch: the app does not "
                      "answer its health path as expected (output above); the live release was left alone "
                      "and kept serving")
    log(f"release {args.release}: the app answers its health check")


def cmd_run(args) -> None:
    command = " ".join(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    code = in_release(args.release, ["/bin/sh", "-c", command])
    if code != 0:
        discard(args.release)
        raise Failure(f"before-switch command failed ({code}): {command}; "
                      "the live release was left alone")
    log(f"release {args.release}: `{command}` succeeded")


# Activation -------------------------------------------------------------------

def activate(target: str, mode: str, host_name: str, kind: str = "deploy", run: str = "") -> None:
    """Switch to `target` (see _activate), and say how it went in the audit log."""
    previous = live()
    event = "rollback" if kind.startswith("rollback") else "deploy"
    try:
        _activate(target, mode, host_name, kind, run)
    except RolledBack as failure:
        audit(event, "rolled-back", run=run, kind=kind, to=target, reason=str(failure), **{"from": previous})
        raise
    except Failure as failure:
        audit(event, "failed", run=run, kind=kind, to=target, reason=str(failure), **{"from": previous})
        raise
    audit(event, "ok", run=run, kind=kind, to=target, **{"from": previous})


def _activate(target: str, mode: str, host_name: str, kind: str = "deploy", run: str = "") -> None:
    release_dir(target)
    previous = live()
    present = set(releases())
    # What uWSGI last ran well: the live release, unless an activation of it was
    # interrupted (then the one before).
    running = confirmed() if confirmed() in present else previous
    fallback = previous if previous != target else running
    if fallback == target or fallback not in present:
        fallback = None
    if mode == "auto":
        mode = "chain" if running and running in present and venv_of(running) == venv_of(target) else "graceful"
    fifo = None
    if service_active():
        # Opened (and checked) before anything changes: refused, nothing is switched.
        try:
            stats()
            if mode == "chain":
                fifo = open_master_fifo()
        except Failure as failure:
            raise Failure(f"release {target} was not activated on host {host_name}: {failure}; "
                          f"the live release {previous} was left alone") from None
    try:
        if previous != target:
            switch(target)
        record("switched", target, **{"from": previous, "run": run, "kind": kind})
        try:
            reload(mode, fifo)
            health()
        except Failure as failure:
            record("failed", target, run=run, reason=str(failure).splitlines()[0][:300])
            if fallback is None:
                raise Failure(f"release {target} FAILED on host {host_name}: {failure}") from None
            log(f"release {target} failed ({failure}); switching back to {fallback}")
            switch(fallback)
            try:
                back = "chain" if venv_of(fallback) == venv_of(target) and mode == "chain" else "graceful"
                reload(back, fifo if back == "chain" else None)
                health()
                record("live", fallback, kind="restored", run=run)
            except Failure as again:
                raise Failure(f"release {target} FAILED on host {host_name}: {failure}. Rolled back to "
                              f"{fallback}, but it is not healthy either: {again}") from None
            raise RolledBack(f"release {target} FAILED on host {host_name}: {failure}. Rolled back: "
                             f"{fallback} is live and healthy again.") from None
    finally:
        if fifo is not None:
            os.close(fifo)
    record("live", target, kind=kind, run=run, mode=mode, **{"from": previous})
    log(f"release {target} is live and healthy on host {host_name}")
    restart_workers(target, host_name)


def restart_workers(target: str, host_name: str) -> None:
    """The workers onto the live release, only once it passed the health gate (a
    release that fails it never runs them)."""
    units = CONFIG.get("workers") or []
    if not units:
        return
    result = subprocess.run(["systemctl", "restart", *units], capture_output=True, text=True)
    if result.returncode != 0:
        raise Failure(f"release {target} is live on host {host_name}, but its workers did not restart: "
                      f"{result.stderr.strip()} (see: journalctl -u '{CONFIG['app']}-*')")
    log(f"workers restarted on release {target}: {' '.join(units)}")


def cmd_activate(args) -> None:
    target = args.release or live()
    if target is None:
        raise Failure("there is no release to activate yet")
    kind = "recheck" if target == live() and confirmed() != target else "deploy"
    activate(target, args.mode, args.host_name, kind=kind, run=args.run)


def cmd_rollback(args) -> None:
    current = live()
    entries = read_history()
    if args.release:
        target = args.release
        release_dir(target)
        failed = failed_releases(entries).get(target)
        if failed:
            raise Failure(f"release {target} failed after its switch ({failed.get('at')}: "
                          f"{failed.get('reason', '?')}): not a rollback target")
        kind = "rollback-to"
    else:
        target = rollback_target(entries, current, set(releases()))
        if target is None:
            raise Failure(f"no release was live before {current} (by this host's record, {HISTORY}) "
                          "to roll back to")
        kind = "rollback"
    if target == current:
        log(f"release {target} is already live")
        return
    activate(target, "auto", args.host_name, kind=kind, run=args.run)


def cmd_prune(args) -> None:
    current = live()
    names = releases()
    for name in prune_choice(names, read_history(), current, CONFIG["keep_releases"]):
        discard(name)
    kept = set(releases())
    # Leftovers of interrupted deploys: half-unpacked releases and uploads.
    for path in RELEASES.iterdir():
        if path.name != current and (path.name.startswith(".upload-") or
                                     (path.is_dir() and not path.is_symlink() and not (path / META).is_file())):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            log(f"removed the leftover {path.name} of an interrupted deploy")
    used = {venv_of(name) for name in kept}
    for venv in sorted(VENVS.iterdir()) if VENVS.is_dir() else []:
        if os.path.realpath(venv) not in used:
            shutil.rmtree(venv, ignore_errors=True) if not venv.is_symlink() else venv.unlink()
            log(f"removed unused venv {venv.name}")


def cmd_health(args) -> None:
    try:
        health(args.attempts)
    except Failure as failure:
        if args.quiet:
            raise
        error_log = subprocess.run(["tail", "-n", "5", CONFIG["nginx_error_log"]],
                                   capture_output=True, text=True).stdout
        raise Failure(f"HEALTH CHECK FAILED on host {args.host_name}: {failure}\n"
                      f"--- nginx error log ({CONFIG['nginx_error_log']}):\n{error_log}"
                      f"--- {CONFIG['service']} log:\n{journal_tail(20)}") from None
    log(f"healthy: {healthcheck().describe(CONFIG['health'])} answered {CONFIG['health']['status']}")


# The deploy lock -------------------------------------------------------------
# <app_root>/deploy.lock (root's, mode 600) names the run holding it. Taking,
# breaking and releasing it happen under a flock of a guard file, so two tools
# never interleave there. The deploy takes it before it reads anything (see
# tasks/lock.py). Taken over SSH, it also names the SSH connection it came
# through (the sshd process serving it, by pid and start time): once that
# connection is gone (the run ended and disconnected, or its machine went away
# and sshd gave up on it) the lock counts as free, with no command to release it.
# Taken any other way, it is held until released or broken.

SSH_SERVERS = ("sshd", "sshd-session")  # the per-connection process (OpenSSH < 9.8, >= 9.8)


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


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def ssh_connection(pid: int | None = None) -> dict | None:
    """The SSH connection a process runs under: its nearest sshd ancestor (one per
    connection, alive as long as it is), or None when it runs under none."""
    pid = os.getpid() if pid is None else pid
    while pid > 1:
        process = _process(pid)
        if process is None:
            return None
        name, parent, start = process
        if name in SSH_SERVERS:
            return {"pid": pid, "start": start, "boot": _boot_id()}
        pid = parent
    return None


def connection_gone(holder: dict) -> bool:
    """The SSH connection a holder took the lock through has ended (False when it named none)."""
    connection = holder.get("connection")
    if not isinstance(connection, dict):
        return False
    if connection.get("boot") != _boot_id():
        return True
    process = _process(connection["pid"]) if isinstance(connection.get("pid"), int) else None
    return process is None or process[0] not in SSH_SERVERS or process[2] != connection.get("start")


@contextlib.contextmanager
def _flocked(name: str):
    """An exclusive flock of a root-only file in the app root, held for the block."""
    fd = _own_file(ROOT / name, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _guard():
    return _flocked(".deploy.lock.guard")


# What changes the host (a release's steps, switching, pruning) runs under a flock
# of its own for as long as it runs. A lock whose connection is gone is still held
# while one of those is at work: a command cut off from its laptop may go on to
# its end, and the next run must not start beside it.
CHANGING = ("build-venv", "check", "run", "canary", "activate", "rollback", "prune")


def _working():
    return _flocked(".deploy.work")


def work_in_progress() -> bool:
    """A command that changes the host is running (it holds the work flock)."""
    try:
        fd = _own_file(ROOT / ".deploy.work", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lock_holder() -> dict | None:
    """The run holding the lock, None when it is free (or its holder's connection is
    gone and nothing it started is still at work)."""
    holder = _lock_entry()
    return None if holder is None or (connection_gone(holder) and not work_in_progress()) else holder


def _lock_entry() -> dict | None:
    try:
        fd = _own_file(LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, errors="replace") as handle:
        text = handle.read()
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"run": "?", "unreadable": text[:200]}
    if isinstance(holder.get("since"), (int, float)):
        holder["age"] = round(time.time() - holder["since"])
    return holder


def describe_holder(holder: dict) -> str:
    who = f"{holder.get('user', '?')}@{holder.get('machine', '?')}"
    return (f"{who} (pid {holder.get('pid', '?')}, run {holder.get('run', '?')}) since "
            f"{holder.get('since_at', '?')} host time ({holder.get('age', '?')} s ago)")


def lock_take(run: str, holder: dict, wait: float, break_run: str | None = None,
              force: bool = False) -> tuple[bool, dict | None, dict | None]:
    """(taken, the holder when not taken, the holder broken if any). `holder` may
    name the SSH connection it asks through ("connection", see ssh_connection)."""
    deadline = time.monotonic() + wait
    broken = None
    while True:
        with _guard():
            current = lock_holder()
            if current and current.get("run") != run and (force or (break_run and current.get("run") == break_run)):
                broken, current = current, None
            if current is None:
                LOCK.unlink(missing_ok=True)  # free: absent, broken, or left by a connection that is gone
                moment = time.time()
                entry = {**holder, "run": run, "since": round(moment, 3), "since_at": iso(moment)}
                fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(json.dumps(entry) + "\n")
                return True, None, broken
            if current.get("run") == run:
                return True, None, broken
        if time.monotonic() >= deadline:
            return False, current, broken
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def lock_release(run: str) -> bool:
    with _guard():
        current = lock_holder()
        if current and current.get("run") == run:
            LOCK.unlink()
            return True
    return False


def cmd_lock(args) -> None:
    """Machine-readable answers (one `LOCK ...` line each) for tasks/lock.py."""
    if args.lock_action == "show":
        holder = lock_holder()
        print("LOCK free" if holder is None else f"LOCK held {json.dumps(holder)}", flush=True)
    elif args.lock_action == "take":
        holder = json.loads(args.holder)
        connection = ssh_connection()
        if connection:
            holder["connection"] = connection
        taken, current, broken = lock_take(args.run, holder, args.wait, args.break_run, args.force)
        if broken:
            print(f"LOCK broke {json.dumps(broken)}", flush=True)
            audit("lock-break", "ok", run=args.run, holder=describe_holder(broken),
                  why="its process is gone" if args.break_run and broken.get("run") == args.break_run
                  else "deploy_lock_break")
        if not taken:
            print(f"LOCK held {json.dumps(current)}", flush=True)
            sys.exit(3)
        # "ssh": freed when this SSH connection ends, no release needed.
        print("LOCK taken ssh" if connection else "LOCK taken", flush=True)
    elif args.lock_action == "release":
        print("LOCK released" if lock_release(args.run) else "LOCK not-ours", flush=True)
    else:  # break
        with _guard():
            holder = lock_holder()
            LOCK.unlink(missing_ok=True)
        log(f"broke the deploy lock held by {describe_holder(holder)}" if holder else "the deploy lock is free")
        if holder:
            audit("lock-break", "ok", holder=describe_holder(holder), why="release-tool lock break")


# Audit and maintenance -----------------------------------------------------------
# <app_root>/audit.jsonl (root's, mode 640, in a directory the app user cannot
# write): one JSON object a line per deploy, rollback, maintenance switch and lock
# break: when (host clock), who (`by`: the laptop's user and machine, as the
# deploy gives them with --by; by hand on the host, the sudo user and this host),
# what (release ids from -> to) and how it ended (`result`).

def who() -> dict:
    """The person behind this command: --by (user@machine), else the holder of
    this run's deploy lock, else whoever runs it here (by hand, through sudo)."""
    if BY:
        user, _, machine = BY.rpartition("@")
        return {"user": user or BY, "machine": machine if user else "?"}
    holder = _lock_entry() or {}
    if RUN and holder.get("run") == RUN and holder.get("user"):
        return {"user": holder["user"], "machine": holder.get("machine", "?")}
    return {"user": os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid()),
            "machine": socket.gethostname(), "on_host": True}


def audit(event: str, result: str, **details) -> None:
    global AUDITED
    AUDITED = True
    moment = time.time()
    entry = {"at": iso(moment), "time": round(moment, 3), "app": CONFIG.get("app"), "event": event,
             "result": result, "by": who(),
             **{key: value for key, value in details.items() if value not in (None, "")}}
    _append(AUDIT, entry)


def read_audit() -> list[dict]:
    return [entry for entry in _read_lines(AUDIT) if isinstance(entry.get("event"), str)]


def describe_audit(entry: dict) -> str:
    by = entry.get("by") if isinstance(entry.get("by"), dict) else {}
    what = entry.get("to") or entry.get("release") or entry.get("holder") or ""
    if entry.get("from") or entry.get("to"):
        what = f"{entry.get('from') or '-'} -> {entry.get('to') or '-'}"
    extra = " ".join(f"{key}={entry[key]}" for key in ("state", "kind", "stage", "run") if entry.get(key))
    line = (f"{entry.get('at', '?')}  {entry['event']:<11} {str(entry.get('result', '?')):<11} "
            f"{by.get('user', '?')}@{by.get('machine', '?')}  {what}  {extra}").rstrip()
    reason = str(entry.get("reason") or "").splitlines()
    return line + (f"  ({reason[0][:200]})" if reason else "")


def deployers(entries: list[dict]) -> dict[str, dict]:
    """Release id -> the audit entry of the deploy that first made it live."""
    found: dict[str, dict] = {}
    for entry in entries:
        if entry.get("event") == "deploy" and entry.get("result") == "ok" and isinstance(entry.get("to"), str):
            found.setdefault(entry["to"], entry)
    return found


def cmd_audit(args) -> None:
    entries = read_audit()[-args.n:] if args.n else read_audit()
    for entry in entries:
        print(json.dumps(entry) if args.json else describe_audit(entry), flush=True)


def _maintenance_dir() -> Path:
    """The app's maintenance directory: root's, no link, nobody else may write it
    (nginx reads the flag and the page there)."""
    path = Path(CONFIG["maintenance_dir"])
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise Failure(f"{path} does not exist: deploy first (it makes it)") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise Failure(f"refusing {path}: not a directory of uid {os.geteuid()}'s that only it can write "
                      "(a link, or writable by others)")
    return path


def maintenance_state() -> dict | None:
    """The flag's content ({since_at, by}) while maintenance is on, else None."""
    flag = _maintenance_dir() / "on"
    try:
        fd = _own_file(flag, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, errors="replace") as handle:
        try:
            found = json.loads(handle.read())
        except ValueError:
            found = {}
    return found if isinstance(found, dict) else {}


def cmd_maintenance(args) -> None:
    """on: nginx answers 503 (the page, Retry-After) from the next request, except the
    health check, ACME challenges and the allowed clients; off: the app again. nginx
    looks for the flag on every request: no reload. Deploys leave it alone."""
    flag = _maintenance_dir() / "on"
    before = maintenance_state()
    if args.state == "status":
        print("MAINTENANCE off" if before is None else f"MAINTENANCE on {json.dumps(before)}", flush=True)
        return
    if args.state == "on":
        if before is None:
            moment = time.time()
            _write_own(flag, json.dumps({"since_at": iso(moment), "by": who()}) + "\n")
            os.chmod(flag, 0o644)  # nginx's workers only test it, but may read it
        log(f"maintenance is on for {CONFIG['app']}" + (" (it already was)" if before is not None else ""))
    else:
        flag.unlink(missing_ok=True)
        log(f"maintenance is off for {CONFIG['app']}" + (" (it already was)" if before is None else ""))
    audit("maintenance", "ok", state=args.state, changed=(before is None) == (args.state == "on"))


# Day-two: status and exec (ops.py on the laptop) ----------------------------------

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result")


def unit_states(units: list[str]) -> dict[str, dict]:
    """systemctl's state of each unit, in one call (a unit it does not know is
    LoadState=not-found)."""
    if not units:
        return {}
    out = subprocess.run(["systemctl", "show", "--no-pager", f"--property={','.join(UNIT_PROPERTIES)}",
                          "--", *units], capture_output=True, text=True).stdout
    blocks, block = [], {}
    for line in [*out.splitlines(), ""]:
        if line.strip():
            key, _, value = line.partition("=")
            block[key] = value
        elif block:
            blocks.append(block)
            block = {}
    return dict(zip(units, blocks))


def certificate_lines(path: str) -> list[str] | None:
    """openssl's expiry, serial and names of a certificate of root's, None when missing
    (read on the laptop by tasks/acme.py LiveCertificate, the deploy's own reader)."""
    if not os.path.isfile(path):
        return None
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-enddate", "-serial",
                           "-ext", "subjectAltName"], capture_output=True, text=True).stdout.splitlines()


def uwsgi_summary() -> dict:
    """Workers busy and idle and requests served, from the stats socket (safely), as
    uWSGI reports them: for display only (see `stats`)."""
    try:
        data = stats()
    except Failure as refused:
        return {"error": str(refused)}
    if data is None:
        return {"error": f"the stats socket {CONFIG['stats_socket']} is not answering"}
    workers = stats_workers(data)
    requests = [w.get("requests") for w in workers]
    return {"workers": len(workers), "busy": sum(w.get("status") == "busy" for w in workers),
            "idle": sum(w.get("status") == "idle" for w in workers),
            "requests": sum(n for n in requests if isinstance(n, int) and not isinstance(n, bool) and n >= 0)}


def status_report(workers: list[str], jobs: list[str], timers: list[str], nginx: bool,
                  certificates: list[str]) -> dict:
    """Everything `ops.py status` judges, read in one go; the judging is the laptop's
    (tasks/ops_status.py)."""
    current = live()
    meta, entry = None, None
    if current is not None:
        try:
            meta = {key: value for key, value in json.loads((release_dir(current) / META).read_text()).items()
                    if key != "files"}
        except (Failure, OSError, ValueError):
            meta = None
        for event in ("live", "switched"):
            entry = next((e for e in reversed(read_history()) if e["release"] == current and e["event"] == event),
                         None)
            if entry:
                break
        deployer = deployers(read_audit()).get(current)
        if deployer:  # who made it live, from the audit log
            entry = {**(entry or {}), "by": deployer["by"]}
    units = unit_states([CONFIG["service"], *workers, *jobs, *timers, *(["nginx.service"] if nginx else [])])
    try:
        health(1)
        healthy = None
    except Failure as failure:
        healthy = str(failure)
    disk = os.statvfs(ROOT)
    return {
        "app": CONFIG["app"], "live": current, "confirmed": confirmed() == current, "meta": meta,
        "entry": entry, "service": CONFIG["service"], "units": units,
        "workers": workers, "jobs": jobs, "timers": timers, "nginx": nginx,
        "uwsgi": uwsgi_summary() if units[CONFIG["service"]].get("ActiveState") == "active" else None,
        "health": {"check": healthcheck().describe(CONFIG["health"]), "failure": healthy},
        "certificates": {path: certificate_lines(path) for path in certificates},
        "disk": {"path": str(ROOT), "free": disk.f_bavail * disk.f_frsize, "total": disk.f_blocks * disk.f_frsize},
        "lock": lock_holder(),
    }


def cmd_status(args) -> None:
    report = status_report(args.worker, args.job, args.timer, args.nginx, args.certificate)
    if args.json:
        print(json.dumps(report), flush=True)
        return
    for key, value in report.items():
        log(f"{key}: {json.dumps(value)}")


# Runs a --tty command (the app user's, in its unit). systemd-run --pty (systemd 252)
# stops copying the terminal's output as soon as the unit ends, so what the command
# printed last could be lost: the unit ends a moment after the command, with its exit
# status. Ctrl-C on that terminal is for the command (a REPL's KeyboardInterrupt): the
# wrapper ignores it, the command gets the default handling back, and runs in bash
# (dash ends itself after a Ctrl-C its child handled, with status 130; bash does only
# when the child died of it).
TTY_WRAPPER = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
code = subprocess.call(["/bin/bash", "-c", sys.argv[1]],
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
time.sleep(0.5)
sys.exit(code if code >= 0 else 128 - code)
"""

def cmd_exec(args) -> int:
    """A command in the live release, as its steps run: the app user, the venv on
    PATH, the app's environment files, the sandbox. Its exit status is ours."""
    words = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not words:
        raise Failure("exec: no command given (release-tool exec -- COMMAND)")
    current = live()
    if current is None:
        raise Failure("there is no live release yet")
    command = ["/bin/sh", "-c", " ".join(words)]
    if args.tty:
        command = ["/usr/bin/python3", "-I", "-S", "-c", TTY_WRAPPER, " ".join(words)]
    code = in_release(current, command, tty=args.tty)
    if code:
        print(f"exit status {code}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-name", default=socket.gethostname(), help="name used in messages")
    parser.add_argument("--run", default="", help="the deploy run's id, recorded in the history")
    parser.add_argument("--by", default="", help="USER@MACHINE running the deploy, for the audit log")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list").add_argument("--json", action="store_true")
    sub.add_parser("history").add_argument("--last", type=int, default=50)
    for name in ("build-venv", "check", "canary"):
        sub.add_parser(name).add_argument("release")
    run = sub.add_parser("run")
    run.add_argument("release")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    activate_parser = sub.add_parser("activate")
    activate_parser.add_argument("release", nargs="?")
    activate_parser.add_argument("--mode", choices=["auto", "chain", "graceful", "restart"], default="auto")
    sub.add_parser("rollback").add_argument("release", nargs="?")
    sub.add_parser("prune")
    health_parser = sub.add_parser("health")
    health_parser.add_argument("--attempts", type=int, help="default: the configured retries")
    health_parser.add_argument("--quiet", action="store_true", help="no logs on failure")
    lock = sub.add_parser("lock").add_subparsers(dest="lock_action", required=True)
    lock.add_parser("show")
    take = lock.add_parser("take")
    take.add_argument("--holder", default="{}", help="JSON: user, machine, pid of the deploying run")
    take.add_argument("--wait", type=float, default=0, help="seconds to wait for a holder to release it")
    take.add_argument("--break-run", help="break the lock if this run (known to be gone) holds it")
    take.add_argument("--force", action="store_true", help="break the lock whoever holds it")
    lock.add_parser("release")
    lock.add_parser("break")
    status = sub.add_parser("status", help="what ops.py status judges")
    status.add_argument("--json", action="store_true")
    status.add_argument("--nginx", action="store_true", help="nginx runs the app's site on this host")
    for option in ("worker", "job", "timer", "certificate"):
        status.add_argument(f"--{option}", action="append", default=[], help=f"a {option} of the app (repeatable)")
    exec_parser = sub.add_parser("exec", help="a command in the live release as the app user")
    exec_parser.add_argument("--tty", action="store_true", help="on a terminal (systemd-run --pty)")
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    sub.add_parser("maintenance").add_argument("state", choices=["on", "off", "status"])
    audit_parser = sub.add_parser("audit")
    audit_parser.add_argument("--json", action="store_true", help="the log's JSON lines as they are")
    audit_parser.add_argument("-n", type=int, default=0, help="only the last N entries")
    args = parser.parse_args(argv)
    global BY, RUN
    BY, RUN = args.by, args.run
    handlers = {
        "list": cmd_list, "history": cmd_history, "build-venv": cmd_build_venv, "check": cmd_check,
        "canary": cmd_canary, "run": cmd_run, "activate": cmd_activate, "rollback": cmd_rollback,
        "prune": cmd_prune, "health": cmd_health, "lock": cmd_lock, "status": cmd_status, "exec": cmd_exec,
        "maintenance": cmd_maintenance, "audit": cmd_audit,
    }
    try:
        configure(args.root)
        with _working() if args.action in CHANGING else contextlib.nullcontext():
            code = handlers[args.action](args)
    except RolledBack as failure:  # audited by activate()
        print(f"ERROR: {failure}", file=sys.stderr, flush=True)
        return 1
    except Failure as failure:
        if args.action in ("build-venv", "check", "run", "canary"):
            # A new release that never went live: the deploy failed before its switch.
            audit("deploy", "failed", run=args.run, stage=args.action, to=args.release, reason=str(failure))
        elif args.action == "rollback" and not AUDITED:
            audit("rollback", "failed", run=args.run, to=args.release, reason=str(failure))
        print(f"ERROR: {failure}", file=sys.stderr, flush=True)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
