#!/usr/bin/env python3
"""Backups of one app's PostgreSQL database, installed by the deploy as
/usr/local/lib/pyinfra-flask/db-backup.py (tasks/database.py) and run as root:
by `pyinfra-flask-db-backup@<app>.service` (its timer) and by `ops.py`.

    python3 -I -S db-backup.py --config /etc/pyinfra-flask/db-backup/<app>.json backup
    python3 -I -S db-backup.py --config ... list
    python3 -I -S db-backup.py --config ... restore <app>-20261202T030000Z.dump

- backup: `pg_dump --format=custom` of the app's database, run as postgres, into a
  file root opened for it in the root-only backup directory (`<name>.partial`,
  renamed when complete), then the retention: the newest `keep` backups stay,
  and none older than `max_age_days` (the newest always stays). Prints
  `BACKUP <name> <bytes>`.
- list: `<name> <bytes> <UTC time>` per backup, oldest first.
- restore: the app's web unit, workers, jobs and their timers are stopped, the
  database's other connections ended, the backup restored into the app's own
  database (`pg_restore --clean --if-exists --single-transaction`: all of it or
  nothing), the units started again and the app health-checked.

The directories must be root's and closed to everyone else; no link is ever
followed (every file is opened relative to the directory, with O_NOFOLLOW, and must
be a regular file). A backup's name says which app it belongs to, and its header
must name the app's database: another database's dump is never restored. One
backup or restore of an app at a time (a lock in the directory).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import time

SUFFIX = ".dump"


class Refused(Exception):
    """Something that must stop the tool, said in one line."""


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def private_directory(path: str) -> int:
    """An fd of `path` (made when missing): a real directory of root's, mode 700 or
    tighter, in a parent of root's that nobody else can write."""
    path = path.rstrip("/")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    parent = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _root_only(parent, os.path.dirname(path), 0o022)
        try:
            os.mkdir(os.path.basename(path), 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        _root_only(fd, path, 0o077)
    except Refused:
        os.close(fd)
        raise
    return fd


def _root_only(fd: int, path: str, forbidden: int) -> None:
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & forbidden:
        raise Refused(f"{path} must be root's and closed to others, not "
                      f"uid {info.st_uid} mode {stat.S_IMODE(info.st_mode):o}")


def name_pattern(config: dict) -> re.Pattern:
    return re.compile(rf"^{re.escape(config['app'])}-\d{{8}}T\d{{6}}Z(-\d+)?{re.escape(SUFFIX)}$")


def backups(config: dict, directory: int) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of the app's backups, oldest first (by the host's clock)."""
    pattern, found = name_pattern(config), []
    for name in os.listdir(directory):
        if pattern.match(name):
            info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                found.append((name, info))
    return sorted(found, key=lambda item: (item[1].st_mtime, item[0]))


def as_postgres(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *command], cwd="/", **kwargs)


def lock(directory: int) -> int:
    fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Refused("another backup or restore of this app is running") from None
    return fd


def cmd_backup(config: dict, directory: int) -> None:
    lock(directory)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name, n = f"{config['app']}-{stamp}{SUFFIX}", 1
    while os.path.lexists(os.path.join(f"/proc/self/fd/{directory}", name)):
        n += 1
        name = f"{config['app']}-{stamp}-{n}{SUFFIX}"
    partial = f".{name}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
    try:
        done = as_postgres(["pg_dump", "--format=custom", "--dbname", config["database"]], stdout=fd)
        if done.returncode != 0:
            raise Refused(f"pg_dump of {config['database']} failed ({done.returncode})")
        os.fsync(fd)
        size = os.fstat(fd).st_size
    except BaseException:
        os.unlink(partial, dir_fd=directory)
        raise
    finally:
        os.close(fd)
    os.rename(partial, name, src_dir_fd=directory, dst_dir_fd=directory)
    os.fsync(directory)
    print(f"BACKUP {name} {size}")
    prune(config, directory)


def prune(config: dict, directory: int) -> None:
    found = backups(config, directory)
    newest = found[-1][0] if found else None
    limit = time.time() - config["max_age_days"] * 86400 if config["max_age_days"] else None
    keep = {name for name, _ in found[-config["keep"]:]}
    for name, info in found:
        if name != newest and (name not in keep or (limit is not None and info.st_mtime < limit)):
            os.unlink(name, dir_fd=directory)
            print(f"REMOVED {name}")


def cmd_list(config: dict, directory: int) -> None:
    for name, info in backups(config, directory):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.st_mtime))
        print(f"{name} {info.st_size} {when}")


def systemctl(action: str, units: list[str]) -> None:
    if units:
        subprocess.run(["systemctl", action, *units], check=False)


def cmd_restore(config: dict, directory: int, name: str, units_elsewhere: bool = False) -> int:
    """Restore a backup into the app's database. The app's units are stopped first and
    started again after, then it is health-checked; with units_elsewhere (a db server,
    the app on other hosts: ops.py stops and starts them there) only its connections
    are ended."""
    if not name_pattern(config).match(name):
        raise Refused(f"{name!r} is not a backup of app {config['app']} (<app>-<UTC time>{SUFFIX})")
    lock(directory)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except FileNotFoundError:
        raise Refused(f"no backup {name} (see `backups`)") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise Refused(f"{name} is not a regular file with one name (it has {info.st_nlink} hard links)"
                      if stat.S_ISREG(info.st_mode) else f"{name} is not a regular file")
    header = subprocess.run(["pg_restore", "--list"], stdin=fd, capture_output=True, text=True, cwd="/")
    found = re.search(r"^;\s+dbname:\s*(\S+)\s*$", header.stdout, re.M | re.I)
    if header.returncode != 0 or not found:
        raise Refused(f"{name} is not a pg_dump archive pg_restore can read")
    if found.group(1) != config["database"]:
        raise Refused(f"{name} is a dump of database {found.group(1)!r}, not of {config['database']!r}")
    os.lseek(fd, 0, os.SEEK_SET)
    units = [] if units_elsewhere else [config["service"], *config["workers"]]
    timers, jobs = ([], []) if units_elsewhere else (config["timers"], config["jobs"])
    if units:
        print(f"Stopping {', '.join(timers + jobs + units)}", flush=True)
        systemctl("stop", timers + jobs + units)
    try:
        database = config["database"]
        as_postgres(["psql", "-X", "-q", "-d", "postgres", "-c",
                     "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"], stdout=subprocess.DEVNULL)
        print(f"Restoring {name} into database {database}", flush=True)
        done = as_postgres(["pg_restore", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
                            "--dbname", database], stdin=fd)
    finally:
        if units:
            print(f"Starting {', '.join(units + timers)}", flush=True)
            systemctl("start", units + timers)
    if done.returncode != 0:
        print(f"RESTORE FAILED {name}: pg_restore exited {done.returncode}; the database is as it was",
              file=sys.stderr)
        return 1
    if units_elsewhere:
        print(f"RESTORED {name}")
        return 0
    health = subprocess.run(["python3", "-I", "-S", config["health_module"], "--check",
                             json.dumps(config["health"]), "--context", f"after restoring {name}"])
    if health.returncode != 0:
        print(f"RESTORED {name}, but the app fails its health check", file=sys.stderr)
        return 1
    print(f"RESTORED {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backup")
    commands.add_parser("list")
    restore = commands.add_parser("restore")
    restore.add_argument("name")
    restore.add_argument("--units-elsewhere", action="store_true",
                         help="the app runs on other hosts, which stop and start its units (a db server)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("db-backup: must run as root", file=sys.stderr)
        return 2
    os.umask(0o077)
    try:
        config = load(args.config)
        directory = private_directory(config["directory"])
        if args.command == "backup":
            cmd_backup(config, directory)
        elif args.command == "list":
            cmd_list(config, directory)
        else:
            return cmd_restore(config, directory, args.name, args.units_elsewhere)
    except Refused as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
