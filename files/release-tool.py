#!/usr/bin/env python3
"""Release choreography on the host, installed by the pyinfra deploy as
<app_root>/bin/release-tool and driven by it (and usable by hand, as root):

    release-tool list                  releases, the live one marked
    release-tool check ID              import the release's app as the app user
    release-tool run ID -- COMMAND     run a command in the release as the app user
    release-tool activate [ID]         switch to ID (default: the live one), reload
                                       uWSGI without dropping requests, check health
                                       through nginx, and switch back if it fails
    release-tool rollback [ID]         activate the previous (or the named) release
    release-tool prune                 keep the newest N releases and their venvs
    release-tool health                check the app through nginx

Settings come from release-tool.json next to the bin/ directory. Standard library
only: this runs on the host's own python3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / "release-tool.json").read_text())
RELEASES = ROOT / "releases"
CURRENT = ROOT / "current"
VENVS = ROOT / "venvs"
META = ".deploy-release.json"
LOADER = ".deploy-loader.py"


class Failure(Exception):
    pass


def log(message: str) -> None:
    print(message, flush=True)


# Releases -----------------------------------------------------------------

def releases() -> list[str]:
    if not RELEASES.is_dir():
        return []
    return sorted(p.name for p in RELEASES.iterdir() if p.is_dir() and not p.name.startswith("."))


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


def stats() -> dict | None:
    """uWSGI's stats (JSON on a unix socket), or None while it is not answering."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(CONFIG["stats_socket"])
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None


def worker_pids() -> set[int]:
    data = stats() or {}
    return {worker["pid"] for worker in data.get("workers", []) if worker.get("pid")}


def wait_for_new_workers(old: set[int], timeout: float) -> None:
    """Until every worker is a new process that has loaded the app and accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = stats()
        workers = (data or {}).get("workers", [])
        pids = {w.get("pid") for w in workers}
        if (workers and not pids & old and 0 not in pids
                and all(w.get("accepting", 1) == 1 and w.get("status") in ("idle", "busy") for w in workers)):
            return
        time.sleep(0.2)
    raise Failure(f"uWSGI workers were not all replaced within {timeout:.0f}s\n"
                  f"its last log lines:\n{journal_tail()}")


def reload(mode: str) -> None:
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
        try:
            fd = os.open(CONFIG["master_fifo"], os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise Failure(f"uWSGI's master FIFO {CONFIG['master_fifo']} is not answering: {exc}") from exc
        try:
            os.write(fd, b"c")
        finally:
            os.close(fd)
    wait_for_new_workers(old, timeout)


# Health --------------------------------------------------------------------

def health() -> None:
    """GET the health path through nginx until it answers as expected."""
    check = CONFIG["health"]
    request = urllib.request.Request(check["url"], headers={"Host": check["host_header"]})
    outcome = "nothing answered"
    for attempt in range(check["retries"]):
        if attempt:
            time.sleep(1)
        try:
            with urllib.request.urlopen(request, timeout=check["timeout"]) as response:
                status, body = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as exc:
            outcome = f"no answer ({exc})"
            continue
        if status != check["status"]:
            outcome = f"answered {status}, expected {check['status']}"
        elif check["body"] and check["body"] not in body:
            outcome = f"answered {status} without {check['body']!r} in the body"
        else:
            return
    raise Failure(f"health check GET {check['url']} (Host: {check['host_header']}) through nginx "
                  f"{outcome}, after {check['retries']} attempts")


# Commands ------------------------------------------------------------------

def as_app_user(release: str, command: list[str]) -> subprocess.CompletedProcess:
    path = release_dir(release)
    env = {
        "PATH": f"{path}/.venv/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(ROOT),
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": f"{path}/.venv",
        "DEPLOY_RELEASE": release,
    }
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return subprocess.run([runuser, "-u", CONFIG["user"], "--", *command], cwd=path, env=env)


def discard(release: str) -> None:
    if release == live():
        raise Failure(f"refusing to remove the live release {release}")
    shutil.rmtree(RELEASES / release, ignore_errors=True)
    log(f"removed release {release}")


def cmd_list(args) -> None:
    current = live()
    rows = releases()
    if args.json:
        print(json.dumps({"live": current, "releases": rows}))
        return
    if not rows:
        log("no releases yet")
    for name in rows:
        meta = json.loads((RELEASES / name / META).read_text())
        marker = "* live" if name == current else ""
        log(f"{name}  commit={meta.get('commit') or '-'}  venv={Path(venv_of(name)).name}  {marker}".rstrip())


def cmd_check(args) -> None:
    path = release_dir(args.release)
    result = as_app_user(args.release, [f"{path}/.venv/bin/python", str(path / LOADER)])
    if result.returncode != 0:
        discard(args.release)
        raise Failure(f"release {args.release} does not load: the app failed to import "
                      "(traceback above); the live release was left alone")
    log(f"release {args.release}: the app imports")


def cmd_run(args) -> None:
    command = " ".join(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    result = as_app_user(args.release, ["sh", "-c", command])
    if result.returncode != 0:
        discard(args.release)
        raise Failure(f"before-switch command failed ({result.returncode}): {command}; "
                      "the live release was left alone")
    log(f"release {args.release}: `{command}` succeeded")


def activate(target: str, mode: str, host_name: str) -> None:
    release_dir(target)
    previous = live()
    if mode == "auto":
        mode = "chain" if previous and venv_of(previous) == venv_of(target) else "graceful"
    if previous != target:
        switch(target)
    try:
        reload(mode)
        health()
    except Failure as failure:
        if previous is None or previous == target:
            raise Failure(f"release {target} FAILED on host {host_name}: {failure}") from None
        log(f"release {target} failed ({failure}); switching back to {previous}")
        switch(previous)
        reload("chain" if venv_of(previous) == venv_of(target) and mode == "chain" else "graceful")
        health()
        raise Failure(f"release {target} FAILED on host {host_name}: {failure}. "
                      f"Rolled back: {previous} is live and healthy again.") from None
    log(f"release {target} is live and healthy on host {host_name}")


def cmd_activate(args) -> None:
    target = args.release or live()
    if target is None:
        raise Failure("there is no release to activate yet")
    activate(target, args.mode, args.host_name)


def cmd_rollback(args) -> None:
    current = live()
    if args.release:
        target = args.release
    else:
        older = [name for name in releases() if current is None or name < current]
        if not older:
            raise Failure(f"no release older than {current} to roll back to")
        target = older[-1]
    if target == current:
        log(f"release {target} is already live")
        return
    activate(target, "auto", args.host_name)


def cmd_prune(args) -> None:
    keep = CONFIG["keep_releases"]
    current = live()
    names = releases()
    kept = set(names[-keep:]) | ({current} if current else set())
    for name in names:
        if name not in kept:
            discard(name)
    used = {venv_of(name) for name in kept}
    for venv in sorted(VENVS.iterdir()) if VENVS.is_dir() else []:
        if str(venv.resolve()) not in used:
            shutil.rmtree(venv, ignore_errors=True)
            log(f"removed unused venv {venv.name}")


def cmd_health(args) -> None:
    try:
        health()
    except Failure as failure:
        error_log = subprocess.run(["tail", "-n", "5", CONFIG["nginx_error_log"]],
                                   capture_output=True, text=True).stdout
        raise Failure(f"HEALTH CHECK FAILED on host {args.host_name}: {failure}\n"
                      f"--- nginx error log ({CONFIG['nginx_error_log']}):\n{error_log}"
                      f"--- {CONFIG['service']} log:\n{journal_tail(20)}") from None
    log(f"healthy: GET {CONFIG['health']['url']} answered {CONFIG['health']['status']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-name", default=socket.gethostname(), help="name used in messages")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list").add_argument("--json", action="store_true")
    sub.add_parser("check").add_argument("release")
    run = sub.add_parser("run")
    run.add_argument("release")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    activate_parser = sub.add_parser("activate")
    activate_parser.add_argument("release", nargs="?")
    activate_parser.add_argument("--mode", choices=["auto", "chain", "graceful", "restart"], default="auto")
    sub.add_parser("rollback").add_argument("release", nargs="?")
    sub.add_parser("prune")
    sub.add_parser("health")
    args = parser.parse_args()
    handlers = {
        "list": cmd_list, "check": cmd_check, "run": cmd_run, "activate": cmd_activate,
        "rollback": cmd_rollback, "prune": cmd_prune, "health": cmd_health,
    }
    try:
        handlers[args.action](args)
    except Failure as failure:
        print(f"ERROR: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
