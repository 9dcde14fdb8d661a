"""A new release's steps before its switch, as the app user: its venv, the import check,
the before-switch commands, the canary."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from . import base, history, releases, sandbox


# Venvs ----------------------------------------------------------------------

def venv_ready(venv: Path) -> bool:
    """Built, handed to root, then marked: root owns the venv and its marker."""
    try:
        return all(os.lstat(path).st_uid == 0 and not stat.S_ISLNK(os.lstat(path).st_mode)
                   for path in (venv, venv / base.VENV_MARKER))
    except OSError:
        return False


def cmd_build_venv(args) -> None:
    """The release's venv, built by the app user in the sandbox (pip and every
    dependency's build step run as the app user, never as root) into a directory
    only that build may write, then handed to root (owner root, group the app's,
    no write bits for group or others) before its completion marker is written."""
    path = releases.release_dir(args.release)
    meta = json.loads((path / base.META).read_text())
    venv = base.VENVS / meta["venv"]
    if os.path.realpath(path / ".venv") != os.path.realpath(venv):
        raise base.Failure(f"release {args.release}: .venv does not point at {venv}")
    if venv_ready(venv):
        base.log(f"venv {venv.name} is built already")
        return
    account = pwd.getpwnam(base.CONFIG["user"])
    if os.path.lexists(venv):  # half-built by an interrupted run: from scratch
        shutil.rmtree(venv) if stat.S_ISDIR(os.lstat(venv).st_mode) else venv.unlink()
    os.mkdir(venv, 0o750)
    os.chown(venv, account.pw_uid, account.pw_gid, follow_symlinks=False)
    requirements = base.CONFIG["requirements"]
    script = ('python3 -m venv "$1" && exec "$1/bin/pip" install --no-input --disable-pip-version-check '
              '--no-cache-dir -q -r "$2"')
    code = sandbox.sandboxed(args.release, ["/bin/sh", "-c", script, "build-venv", str(venv), requirements],
                     [str(venv)], None)
    if code != 0:
        shutil.rmtree(venv, ignore_errors=True)
        releases.discard(args.release)
        raise base.Failure(f"building venv {venv.name} from {requirements} failed ({code}, output above); "
                      "the live release was left alone")
    # The build's processes ended with its unit, and the service's sandbox never
    # could write here; -P and -h: links are changed themselves, never followed.
    for command in (["chown", "-R", "-P", "-h", f"root:{base.CONFIG['user']}", "--", str(venv)],
                    ["chmod", "-R", "go-w,ug-s", "--", str(venv)]):
        subprocess.run(command, check=True)
    marker = os.open(venv / base.VENV_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    os.fchown(marker, 0, account.pw_gid)
    os.close(marker)
    base.log(f"venv {venv.name} built as {base.CONFIG['user']} from {requirements}, now root's")


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


def main(what, loader, check, module, queue):
    spec = importlib.util.spec_from_file_location("healthcheck", module)
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    application = runpy.run_path(loader, run_name="deploy_canary")["application"]
    if what in ("import", "both"):
        print("the app imports (under uWSGI)", flush=True)
        if queue:
            if not os.environ.get("REDIS_URL"):
                sys.exit("socketio: the app's environment has no REDIS_URL for its message queue")
            message_queue(os.environ["REDIS_URL"])
        if what == "import":
            return
    global CALLING
    CALLING = True
    status, text = healthcheck.wsgi_get(check, application)
    wrong = healthcheck.verdict(check, status, text)
    if wrong:
        sys.exit(f"GET {check['path']} {wrong}")
    print(f"canary: GET {check['path']} answered {status} (called in-process, under uWSGI)", flush=True)


# what: "import" (the check), "call" (the canary) or "both" (the one, then the other,
# in one start: a failure once the app is being called ends with `call_failed`, any
# earlier one with 1). uWSGI ends with 0 after a script that raised: only SystemExit
# sets its exit code.
CALLING = False
loader, check, what, module, queue, call_failed = json.loads(os.environ["DEPLOY_CANARY"])
try:
    main(what, loader, check, module, queue)
except SystemExit as stop:
    if stop.code in (None, 0):
        raise
    if not isinstance(stop.code, int):
        print(stop.code, file=sys.stderr, flush=True)
    sys.exit(call_failed if CALLING else 1)
except Exception:
    traceback.print_exc()
    sys.exit(call_failed if CALLING else 1)
"""
CALL_FAILED = 4  # "both": the app imported; its health path did not answer as expected
CANARY_FILE = ".deploy-canary.py"


def _canary(release: str, what: str) -> int:
    path = releases.release_dir(release)
    # Root's, in the release (root's directory, which the app user cannot write),
    # for as long as the step runs.
    fd = os.open(path / CANARY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(CANARY)
    os.chown(path / CANARY_FILE, 0, pwd.getpwnam(base.CONFIG["user"]).pw_gid, follow_symlinks=False)
    arguments = json.dumps([str(path / base.LOADER), base.CONFIG["health"], what, base.CONFIG["health_module"],
                            base.CONFIG["message_queue"], CALL_FAILED])
    try:
        return sandbox.in_release(release, [base.CONFIG["uwsgi"], "--pyrun", str(path / CANARY_FILE), "--virtualenv",
                                    f"{path}/.venv"], {"DEPLOY_CANARY": arguments})
    finally:
        # Gone again: the release holds what was uploaded, and nothing else.
        (path / CANARY_FILE).unlink(missing_ok=True)


def cmd_check(args, code: int | None = None) -> None:
    """Before the switch, first: the release's app must import (as the app user, in
    the sandbox). `code`: the check's exit code from `check_and_canary`, already run."""
    if (_canary(args.release, "import") if code is None else code) != 0:
        releases.discard(args.release)
        what = "import, or its message queue does not work" if base.CONFIG["message_queue"] else "import"
        raise base.Failure(f"release {args.release} failed its check before the switch: the app does not "
                      f"{what} (output above); the live release was left alone and kept serving")
    history.record("created", args.release, run=args.run)
    base.log(f"release {args.release}: the app imports")


def cmd_canary(args, code: int | None = None) -> None:
    """Before the switch, last (after the before-switch commands, so that the tables
    a first `flask init-db` creates exist): the app answers its health path, called
    in-process, so a release that would fail never takes live traffic. `code`: the
    canary's exit code from `check_and_canary`, already run."""
    if (_canary(args.release, "call") if code is None else code) != 0:
        releases.discard(args.release)
        raise base.Failure(f"release {args.release} failed its check before the switch: the app does not "
                      "answer its health path as expected (output above); the live release was left alone "
                      "and kept serving")
    base.log(f"release {args.release}: the app answers its health check")


def check_and_canary(release: str) -> tuple[int, int]:
    """The check and then the canary in one sandboxed start of uWSGI and one import of
    the app, for when no before-switch command runs between them: their exit codes,
    for cmd_check and cmd_canary to judge with their own messages."""
    code = _canary(release, "both")
    return (0, code) if code == CALL_FAILED else (code, code)


def cmd_run(args) -> None:
    command = " ".join(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    code = sandbox.in_release(args.release, ["/bin/sh", "-c", command])
    if code != 0:
        releases.discard(args.release)
        raise base.Failure(f"before-switch command failed ({code}): {command}; "
                      "the live release was left alone")
    base.log(f"release {args.release}: `{command}` succeeded")
