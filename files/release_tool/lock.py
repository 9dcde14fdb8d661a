"""The per-app deploy lock (<app_root>/deploy.lock) and the flocks around it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from . import base


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
        process = base._process(pid)
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
    process = base._process(connection["pid"]) if isinstance(connection.get("pid"), int) else None
    return process is None or process[0] not in SSH_SERVERS or process[2] != connection.get("start")


@contextlib.contextmanager
def _flocked(name: str):
    """An exclusive flock of a root-only file in the app root, held for the block."""
    fd = base.own_file(base.ROOT / name, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def guard():
    return _flocked(".deploy.lock.guard")


# What changes the host (a release's steps, switching, pruning) runs under a flock
# of its own for as long as it runs. A lock whose connection is gone is still held
# while one of those is at work: a command cut off from its laptop may go on to
# its end, and the next run must not start beside it.
CHANGING = ("build-venv", "check", "run", "canary", "ship", "activate", "rollback", "prune", "assets", "migrate", "hold",
            "split", "canary-start", "canary-verdict", "canary-finish")


def _working():
    return _flocked(".deploy.work")


def work_in_progress() -> bool:
    """A command that changes the host is running (it holds the work flock)."""
    try:
        fd = base.own_file(base.ROOT / ".deploy.work", os.O_RDONLY)
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
    holder = lock_entry()
    return None if holder is None or (connection_gone(holder) and not work_in_progress()) else holder


def lock_entry() -> dict | None:
    try:
        fd = base.own_file(base.LOCK, os.O_RDONLY)
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
        with guard():
            current = lock_holder()
            if current and current.get("run") != run and (force or (break_run and current.get("run") == break_run)):
                broken, current = current, None
            if current is None:
                base.LOCK.unlink(missing_ok=True)  # free: absent, broken, or left by a connection that is gone
                moment = time.time()
                entry = {**holder, "run": run, "since": round(moment, 3), "since_at": base.iso(moment)}
                fd = os.open(base.LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(json.dumps(entry) + "\n")
                return True, None, broken
            if current.get("run") == run:
                return True, None, broken
        if time.monotonic() >= deadline:
            return False, current, broken
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def lock_release(run: str) -> bool:
    with guard():
        current = lock_holder()
        if current and current.get("run") == run:
            base.LOCK.unlink()
            return True
    return False
