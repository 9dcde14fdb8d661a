"""`ops.py logs`: the apps' log lines from every host at once.

The journal (`journalctl`) of the app's web unit, and with `--workers` its worker
instances (`<app>-<worker>@*`) and job services, with `--nginx` nginx's unit; the
files the deploy logs to outside the journal (`uwsgi_log` when it is a file, and
with `--nginx` the site's access and error logs) are read by `SAFE_TAIL`, which
root runs on the host: it opens each file without following a link (O_NOFOLLOW)
and only reads regular files with one link (a hard link the app made to a file it
could not read otherwise is refused), because such a file may be in a directory the
app user can write. The lines are printed on the laptop through tasks/ops/fleet.py
`printable`: what the app wrote cannot reach the operator's terminal as escapes. Each host's lines are printed as they arrive, prefixed with the
host's name (tasks/ops/fleet.py `run(stream=True)`).
"""

from __future__ import annotations

import shlex

from tasks.config import topology
from tasks.config.app import App

# Host-side, standard library only, run as root with `python3 -I -S -c`:
#   SAFE_TAIL LINES follow|once PATH...
# prints the last LINES lines of each file as `<file name>: <line>`, then (follow)
# what is appended, checked twice a second; a file that was rotated (its path now
# names another file) is opened again, one truncated in place is read from its start.
SAFE_TAIL = r'''
import errno, os, stat, sys, time

def say(path, text):
    sys.stdout.write(f"{os.path.basename(path)}: {text}\n")

def open_log(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a symbolic link, refused (root never follows links to logs)" if exc.errno == errno.ELOOP else exc.strerror
        print(f"{path}: not read: {why}", file=sys.stderr, flush=True)
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        why = "not a regular file" if not stat.S_ISREG(info.st_mode) else \
            f"it has {info.st_nlink} hard links, refused (another file's, linked into a directory the app can write?)"
        print(f"{path}: not read: {why}", file=sys.stderr, flush=True)
        return None
    return fd

def lines_of(data):
    # Lines end at \n only: a CR or another separator the app wrote stays in its line.
    lines = data.decode("utf-8", "replace").split("\n")
    return lines[:-1] if lines[-1] == "" else lines

count, follow, paths = int(sys.argv[1]), sys.argv[2] == "follow", sys.argv[3:]
files = {}
for path in paths:
    fd = open_log(path)
    if fd is None:
        continue
    size = os.fstat(fd).st_size
    start = max(0, size - 1024 * max(count, 1))
    tail = lines_of(os.pread(fd, size - start, start))
    if start:
        tail = tail[1:]
    for line in tail[-count:] if count else []:
        say(path, line)
    files[path] = [fd, size, b""]
sys.stdout.flush()
while follow and files:
    time.sleep(0.5)
    for path, entry in files.items():
        fd, offset, partial = entry
        size = os.fstat(fd).st_size
        if size < offset:
            offset = 0
        data = os.pread(fd, size - offset, offset) if size > offset else b""
        offset += len(data)
        *complete, partial = (partial + data).split(b"\n")
        for line in complete:
            say(path, line.decode("utf-8", "replace"))
        try:
            now = os.stat(path, follow_symlinks=False)
            moved = (now.st_dev, now.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except OSError:
            moved = False
        if moved and not data:
            again = open_log(path)
            if again is not None:
                os.close(fd)
                fd, offset, partial = again, 0, b""
        entry[:] = [fd, offset, partial]
    sys.stdout.flush()
'''


def units(host, app: App, workers: bool, nginx: bool) -> list[str]:
    """The journal units to read for an app on a host."""
    found = [] if topology.is_balancer(host) else [app.service]
    if workers and not topology.is_balancer(host):
        found += [f"{app.unit_prefix(name)}@*.service" for name in sorted(app.workers)]
        found += [f"{app.unit_prefix(name)}.service" for name in sorted(app.jobs)]
    if nginx and not app.behind_balancer:
        found.append("nginx.service")
    return found


def files(host, app: App, nginx: bool) -> list[str]:
    """The log files to read for an app on a host."""
    found = [app.uwsgi_log] if app.uwsgi_log != "journal" and not topology.is_balancer(host) else []
    if nginx and not app.behind_balancer:
        found += [path for path in (app.nginx_access_log, app.nginx_error_log) if path.startswith("/")]
    return found


def host_command(host, apps: list[App], *, lines: int, since: str | None, follow: bool, nginx: bool,
                 workers: bool) -> str | None:
    """One command reading every app's logs on a host (None: nothing to read there)."""
    journal = list(dict.fromkeys(unit for app in apps for unit in units(host, app, workers, nginx)))
    paths = list(dict.fromkeys(path for app in apps for path in files(host, app, nginx)))
    parts = []
    if journal:
        # Following runs on a pseudo-terminal, where journalctl would color its lines: the
        # laptop prints every escape as text (tasks/ops/fleet.py printable), so none is sent.
        parts.append(("SYSTEMD_COLORS=0 " if follow else "") + shlex.join(["journalctl", "--no-pager", "--quiet", "-o", "short-iso", "-n", str(lines),
                                 *(["--since", since] if since else []), *(["--follow"] if follow else []),
                                 *[arg for unit in journal for arg in ("-u", unit)]]))
    if paths:
        parts.append(shlex.join(["python3", "-I", "-S", "-c", SAFE_TAIL, str(lines),
                                 "follow" if follow else "once", *paths]))
    if not parts:
        return None
    # Following: both at once, until interrupted. Otherwise the journal, then the files.
    return " & ".join(parts) + " & wait" if follow and len(parts) > 1 else " ; ".join(parts)
