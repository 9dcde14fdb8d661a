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
import re
import shutil
import socket
import ssl
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

def http_get(check: dict) -> tuple[int, str]:
    """GET the health path through nginx."""
    request = urllib.request.Request(check["url"], headers={"Host": check["host_header"]})
    # HTTPS to 127.0.0.1: the certificate names the site, not this address; this
    # checks the app, the certificate is nginx's business.
    context = ssl._create_unverified_context() if check["url"].startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=check["timeout"], context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def uwsgi_get(check: dict) -> tuple[int, str]:
    """GET the health path straight from uWSGI's TCP socket, in the uwsgi protocol
    the load balancer speaks (app servers behind a balancer have no nginx)."""
    host, port = check["uwsgi"].rsplit(":", 1)
    if check.get("protocol") == "http":
        return http_get({**check, "url": f"http://{check['uwsgi']}{check['request_path']}"})
    path, _, query = check["request_path"].partition("?")
    env = {
        "REQUEST_METHOD": "GET", "REQUEST_URI": check["request_path"], "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": check["host_header"],
        "SERVER_PORT": "80", "HTTP_HOST": check["host_header"], "REMOTE_ADDR": "127.0.0.1",
    }
    body = b"".join(
        len(key).to_bytes(2, "little") + key + len(value).to_bytes(2, "little") + value
        for key, value in ((k.encode(), v.encode()) for k, v in env.items())
    )
    with socket.create_connection((host.strip("[]"), int(port)), timeout=check["timeout"]) as sock:
        sock.sendall(b"\0" + len(body).to_bytes(2, "little") + b"\0" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        return int(status_line.split()[1]), content.decode(errors="replace")
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP answer: {status_line[:80]!r}") from None


def describe_check(check: dict) -> str:
    if "uwsgi" in check:
        return f"GET {check['request_path']} (Host: {check['host_header']}) from uWSGI at {check['uwsgi']}"
    return f"GET {check['url']} (Host: {check['host_header']}) through nginx"


def health(attempts: int | None = None) -> None:
    """Request the health path until it answers as expected."""
    check = CONFIG["health"]
    attempts = attempts or check["retries"]
    get = uwsgi_get if "uwsgi" in check else http_get
    outcome = "nothing answered"
    for attempt in range(attempts):
        if attempt:
            time.sleep(1)
        try:
            status, body = get(check)
        except (OSError, urllib.error.URLError) as exc:
            outcome = f"no answer ({exc})"
            continue
        if status != check["status"]:
            outcome = f"answered {status}, expected {check['status']}"
        elif check["body"] and check["body"] not in body:
            outcome = f"answered {status} without {check['body']!r} in the body"
        else:
            return
    raise Failure(f"health check {describe_check(check)} {outcome}, after {attempts} attempts")


# Commands ------------------------------------------------------------------

def app_environment() -> dict[str, str]:
    """The app's secrets (systemd's EnvironmentFile, KEY="value" lines), if any."""
    found = {}
    path = ROOT / "secrets" / "app.env"
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if value.startswith('"') and value.endswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if key:
                found[key] = value
    return found


def as_app_user(release: str, command: list[str]) -> subprocess.CompletedProcess:
    path = release_dir(release)
    env = {
        **app_environment(),
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


# Run by the release's own python as the app user: import the app through the
# release's loader and call it once, as a WSGI server would, for the health path.
CANARY = r"""
import io, json, runpy, sys
check = json.loads(sys.argv[2])
try:
    application = runpy.run_path(sys.argv[1], run_name="deploy_canary")["application"]
except ModuleNotFoundError as exc:
    if exc.name in ("uwsgi", "uwsgidecorators"):
        print("canary: the app needs uWSGI's own module; the check after the switch covers it")
        sys.exit(0)
    raise
path, _, query = check["path"].partition("?")
environ = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
    "QUERY_STRING": query, "SERVER_NAME": check["host_header"], "SERVER_PORT": "80",
    "HTTP_HOST": check["host_header"], "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
    "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}
status = []
body = b"".join(application(environ, lambda s, h, e=None: status.append(s) or (lambda data: None)))
code = int(status[0].split()[0])
text = body.decode(errors="replace")
if code != check["status"]:
    sys.exit(f"GET {check['path']} answered {code}, expected {check['status']}")
if check["body"] and check["body"] not in text:
    sys.exit(f"GET {check['path']} answered {code} without {check['body']!r} in the body")
print(f"canary: GET {check['path']} answered {code}")
"""


def cmd_check(args) -> None:
    """Before the switch: the release's app must import and answer its health path
    (called in-process), so a release that would fail never takes live traffic."""
    path = release_dir(args.release)
    check = {key: CONFIG["health"][key] for key in ("path", "host_header", "status", "body")}
    result = as_app_user(args.release, [f"{path}/.venv/bin/python", "-c", CANARY, str(path / LOADER),
                                        json.dumps(check)])
    if result.returncode != 0:
        discard(args.release)
        raise Failure(f"release {args.release} failed its check before the switch (output above): "
                      "the live release was left alone and kept serving")
    log(f"release {args.release}: the app imports and answers its health check")


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
        try:
            reload("chain" if venv_of(previous) == venv_of(target) and mode == "chain" else "graceful")
            health()
            outcome = f"Rolled back: {previous} is live and healthy again."
        except Failure as again:
            outcome = f"Rolled back to {previous}, but it is not healthy either: {again}"
        raise Failure(f"release {target} FAILED on host {host_name}: {failure}. {outcome}") from None
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
    # Leftovers of interrupted deploys: half-unpacked releases and uploads.
    for path in RELEASES.iterdir():
        if path.name != current and (path.name.startswith(".upload-") or
                                     (path.is_dir() and not (path / META).is_file())):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            log(f"removed the leftover {path.name} of an interrupted deploy")
    used = {venv_of(name) for name in kept}
    for venv in sorted(VENVS.iterdir()) if VENVS.is_dir() else []:
        if str(venv.resolve()) not in used:
            shutil.rmtree(venv, ignore_errors=True)
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
    log(f"healthy: {describe_check(CONFIG['health'])} answered {CONFIG['health']['status']}")


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
    health_parser = sub.add_parser("health")
    health_parser.add_argument("--attempts", type=int, help="default: the configured retries")
    health_parser.add_argument("--quiet", action="store_true", help="no logs on failure")
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
