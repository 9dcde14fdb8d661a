#!/usr/bin/python3 -I -S
"""The files drill, as the restic repositories' owner on the backup host (installed by
tasks/steps/restic.py, run by pyinfra-flask-restic-verify.service, docs/backups.md):
the apps' file backups tried, not hoped for.

For each app: `restic check` (the repository's structure), then each app server's
newest snapshot restored into a scratch directory on this host with `--verify`
(every file read back and compared with the repository), counted, and the scratch
directory removed, always. It runs as this unprivileged user; nothing restored is
run or followed.

Its last line, and the file `<state>/last` (`ok|failed <UTC time> <why>`), say how it
ended; the exit status is 0 only when every check passed (`ops.py status` reads both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timezone


class Failed(Exception):
    pass


def restic(repository: str, password: str, *arguments: str) -> str:
    done = subprocess.run(["restic", "--repo", repository, "--password-file", password, *arguments],
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
        raise Failed(f"restic {arguments[0]}: {said[-1].strip()[:300]}")
    return done.stdout


def newest(snapshots: list[dict]) -> dict[str, dict]:
    """{host: its newest snapshot}."""
    found: dict[str, dict] = {}
    for snapshot in sorted(snapshots, key=lambda s: s["time"]):
        found[snapshot["hostname"]] = snapshot
    return found


def counted(root: str) -> tuple[int, int]:
    """Regular files and their bytes under `root` (links not followed)."""
    number = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            entry = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(entry.st_mode):
                number, size = number + 1, size + entry.st_size
    return number, size


def remove(path: str) -> None:
    """The scratch directory, whatever modes the snapshot gave its directories."""
    def writable(function, name, _):
        os.chmod(os.path.dirname(name), 0o700)
        function(name)

    if os.path.lexists(path):
        for directory, names, _ in os.walk(path):
            for name in names:
                full = os.path.join(directory, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        shutil.rmtree(path, onerror=writable)


def drill(app: str, repository: str, password: str, scratch: str) -> str:
    restic(repository, password, "check")
    snapshots = newest(json.loads(restic(repository, password, "snapshots", "--json") or "[]"))
    if not snapshots:
        return f"{app}: no snapshot yet (nothing to keep, or no backup has run)"
    said = []
    for host, snapshot in sorted(snapshots.items()):
        target = os.path.join(scratch, app, host)
        os.makedirs(target, mode=0o700)
        try:
            restic(repository, password, "restore", snapshot["id"], "--target", target, "--verify")
            number, size = counted(target)
        finally:
            remove(target)
        said.append(f"{host} {number} files ({size} bytes) of {snapshot['short_id']} {snapshot['time'][:19]}Z")
    return f"{app}: " + ", ".join(said)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="the drill's directory: scratch, and the file `last`")
    parser.add_argument("--app", action="append", default=[], metavar="NAME=REPOSITORY=PASSWORD_FILE")
    args = parser.parse_args(argv)
    os.umask(0o077)
    scratch = os.path.join(args.state, "scratch")
    remove(scratch)  # what an interrupted run left
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        os.makedirs(scratch, mode=0o700)
        said = "; ".join(drill(*app.split("=", 2), scratch) for app in args.app) or "no app's files are backed up"
        state = "ok"
    except (Failed, OSError, ValueError, json.JSONDecodeError) as exc:
        said, state = str(exc), "failed"
    finally:
        remove(scratch)
    line = f"{state} {started} {said}"
    with open(os.path.join(args.state, "last.new"), "w") as file:
        file.write(line + "\n")
    os.replace(os.path.join(args.state, "last.new"), os.path.join(args.state, "last"))
    print(line)
    return 0 if state == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
