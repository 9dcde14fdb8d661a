"""uWSGI: the service, its master FIFO and stats socket (opened safely), reloads."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import time

from . import base


# uWSGI ---------------------------------------------------------------------

def service_active() -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", base.CONFIG["service"]]).returncode == 0


def journal_tail(lines: int = 30) -> str:
    out = subprocess.run(
        ["journalctl", "-u", base.CONFIG["service"], "-n", str(lines), "--no-pager", "-o", "cat"],
        capture_output=True, text=True,
    )
    return out.stdout


def systemctl(action: str) -> None:
    result = subprocess.run(["systemctl", action, base.CONFIG["service"]], capture_output=True, text=True)
    if result.returncode != 0:
        raise base.Failure(f"systemctl {action} {base.CONFIG['service']} failed: {result.stderr.strip()}\n"
                      f"its last log lines:\n{journal_tail()}")


def open_master_fifo() -> int:
    """uWSGI's master FIFO, open for writing (ENXIO: nobody reads it, uWSGI is not up)."""
    try:
        return base.open_no_follow(base.CONFIG["master_fifo"], os.O_WRONLY | os.O_NONBLOCK, stat.S_IFIFO,
                               "uWSGI's master FIFO")
    except OSError as exc:
        raise base.Failure(f"uWSGI's master FIFO {base.CONFIG['master_fifo']} is not answering: {exc}") from exc


STATS_LIMIT = 4 << 20  # bytes: uWSGI's stats of a few hundred workers fit many times over


def main_pid() -> int:
    """The app's uWSGI master, by systemd (0: the service is not running)."""
    out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", base.CONFIG["service"]],
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
        fd = base.open_no_follow(base.CONFIG["stats_socket"], os.O_PATH, stat.S_IFSOCK, "uWSGI's stats socket")
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
                raise base.Failure(f"refusing uWSGI's stats socket {base.CONFIG['stats_socket']}: it is served by pid "
                              f"{pid} (uid {uid}), not by the uWSGI master of {base.CONFIG['service']} "
                              f"({f'pid {master}' if master else 'not running'}): the app user replaced it? "
                              f"(systemctl restart {base.CONFIG['service']} makes a new one)")
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
            process = base._process(int(entry))
            if process is not None and process[1] == master:
                found.add(int(entry))
    return found


POLL = 0.05  # seconds between two looks at the workers while they are replaced


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
        # Often: an idle master notices a worker's end, and moves a chain reload on to
        # the next, only when it wakes (once a second, or on a request to its stats
        # socket such as the one above).
        time.sleep(POLL)
    raise base.Failure(f"uWSGI workers were not all replaced within {timeout:.0f}s\n"
                  f"its last log lines:\n{journal_tail()}")


def reload(mode: str, fifo: int | None = None) -> None:
    """Load the live release into uWSGI.

    chain:   workers are replaced one at a time (lazy-apps), the others keep serving;
             for code-only changes.
    graceful: SIGHUP, uWSGI re-executes itself with the socket open (requests wait in
             the listen queue); for a new venv or uWSGI config.
    restart: systemctl restart; for a new unit or uWSGI binary.
    """
    timeout = base.CONFIG["reload_timeout"]
    if not service_active():
        base.log(f"starting {base.CONFIG['service']}")
        systemctl("start")
        wait_for_new_workers(set(), timeout)
        return
    old = worker_pids()
    if mode == "restart":
        base.log(f"restarting {base.CONFIG['service']}")
        systemctl("restart")
    elif mode == "graceful":
        base.log(f"reloading {base.CONFIG['service']} gracefully (SIGHUP)")
        systemctl("reload")
    else:
        base.log(f"chain-reloading {base.CONFIG['service']}: one worker at a time")
        fd = fifo if fifo is not None else open_master_fifo()
        try:
            os.write(fd, b"c")
        finally:
            if fifo is None:
                os.close(fd)
    wait_for_new_workers(old, timeout)
