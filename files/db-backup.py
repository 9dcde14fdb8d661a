#!/usr/bin/env python3
"""Backups of one app's PostgreSQL database, installed by the deploy as
/usr/local/lib/pyinfra-flask/db-backup.py (tasks/database.py) and run as root:
by `pyinfra-flask-db-backup@<app>.service` (its timer) and by `ops.py`.

    python3 -I -S db-backup.py --config /etc/pyinfra-flask/db-backup/<app>.json backup
    python3 -I -S db-backup.py --config ... list
    python3 -I -S db-backup.py --config ... restore <app>-20261202T030000Z.dump

- backup: `pg_dump --format=custom` of the app's database, connected as the app's
  own role (below), into a file root opened for it in the root-only backup directory (`<name>.partial`,
  renamed when complete), then the retention: the newest `keep` backups stay,
  and none older than `max_age_days` (the newest always stays). Prints
  `BACKUP <name> <bytes>`.
- list: `<name> <bytes> <UTC time>` per backup, oldest first.
- restore: the app's web unit, workers, jobs and their timers are stopped, the
  database's other connections ended, the backup restored into the app's own
  database (`pg_restore --clean --if-exists --single-transaction`: all of it or
  nothing), the units started again and the app health-checked.

Whatever the app's database holds is the app's to write: functions called by its
CHECK constraints, defaults, triggers and indexes, and the database's own settings
(search_path). So pg_dump and pg_restore never connect to it as a superuser: they
connect as the app's own role, by its password (read here, handed to them in their
environment), and every statement of theirs runs with the app's rights, never more
(`SET ROLE` or `--role` from a superuser's session would not do: the code could
`RESET ROLE`). The clients run as the postgres user, never as root or the app's
user. The objects a restore makes are the app role's, as the backup's were
(`--no-owner`). An extension in the backup that the database already has and the
app does not own (made by the administrator) is left as it is; one it lacks is made
by the restore when the app's role may (a trusted extension); for an untrusted one
the restore stops before anything is touched, saying how to make it.

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
# `<id>; <oid> <oid> EXTENSION - <name>` and `<id>; 0 0 COMMENT - EXTENSION <name>`
# in `pg_restore --list`.
EXTENSION_ENTRY = re.compile(r"^\d+;\s+\d+\s+\d+\s+(?:EXTENSION\s+-|COMMENT\s+-\s+EXTENSION)\s+(\S+)(?:\s|$)")


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


def connection(config: dict) -> list[str]:
    """The client options that reach the app's database as the app's own role."""
    return ["--host", config["socket"], "--username", config["role"], "--no-password",
            "--dbname", config["database"]]


def as_app(config: dict, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`command` (pg_dump, pg_restore, psql, followed by `connection`) connected as the
    app's role with its password: whatever runs in the database runs with the app's
    rights. Run as postgres: the app's user cannot read the password from its
    environment, and no client of it runs as root."""
    fd = os.open(config["password_file"], os.O_RDONLY | os.O_NOFOLLOW)
    try:
        password = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    return as_postgres([*command, *connection(config)], env={**os.environ, "PGPASSWORD": password}, **kwargs)


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
        done = as_app(config, ["pg_dump", "--format=custom"], stdout=fd)
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


def restored_extensions(config: dict, toc: str) -> tuple[list[str], list[str]]:
    """(extensions of the backup the restore leaves as they are, lines saying why) from
    the backup's table of contents and the database, read as the app's role. Refused,
    naming the extension, when one the database lacks cannot be made by the app."""
    wanted = sorted({found.group(1) for line in toc.splitlines() if (found := EXTENSION_ENTRY.match(line))})
    if not wanted:
        return [], []
    query = ("select 'installed', extname, (extowner = (select oid from pg_roles where rolname = current_user))"
             "::text from pg_extension union all select 'available', name, bool_or(trusted)::text "
             "from pg_available_extension_versions group by name")
    done = as_app(config, ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-c", query], capture_output=True,
                  text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise Refused(f"cannot read database {config['database']} as role {config['role']}: {last}; "
                      "nothing was changed")
    installed, trusted = {}, {}
    for line in done.stdout.splitlines():
        kind, name, value = (line.split("\t") + ["", ""])[:3]
        (installed if kind == "installed" else trusted)[name] = value == "true"
    kept, lines = [], []
    for name in wanted:
        if name in installed:
            if not installed[name]:
                kept.append(name)
                lines.append(f"Extension {name} stays as it is (the database has it, and it is not "
                             f"{config['role']}'s own to drop and make again)")
        elif name not in trusted:
            raise Refused(f"the backup needs extension {name}, which is not installed on this host (its "
                          "package); nothing was changed")
        elif not trusted[name]:
            raise Refused(f"the backup needs extension {name}, which database {config['database']} lacks and only "
                          f"a superuser may make (the restore runs as role {config['role']}): make it with "
                          f"`runuser -u postgres -- psql -d {config['database']} -c 'CREATE EXTENSION {name}'` "
                          "and restore again; nothing was changed")
    return kept, lines


def restore_list(toc: str, kept: list[str]) -> int:
    """A file descriptor of the restore's list (pg_restore --use-list): the backup's
    table of contents without the extensions that stay as they are."""
    fd = os.memfd_create("restore-list", os.MFD_CLOEXEC)  # pass_fds hands it on
    text = "".join(f";{line}\n" if (found := EXTENSION_ENTRY.match(line)) and found.group(1) in kept
                   else f"{line}\n" for line in toc.splitlines())
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


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
    header = as_postgres(["pg_restore", "--list"], stdin=fd, capture_output=True, text=True)
    found = re.search(r"^;\s+dbname:\s*(\S+)\s*$", header.stdout, re.M | re.I)
    if header.returncode != 0 or not found:
        raise Refused(f"{name} is not a pg_dump archive pg_restore can read")
    if found.group(1) != config["database"]:
        raise Refused(f"{name} is a dump of database {found.group(1)!r}, not of {config['database']!r}")
    os.lseek(fd, 0, os.SEEK_SET)
    kept, said = restored_extensions(config, header.stdout)
    listed = restore_list(header.stdout, kept)
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
        print(f"Restoring {name} into database {database} as role {config['role']}", flush=True)
        for line in said:
            print(line, flush=True)
        done = as_app(config, ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
                               "--no-owner", f"--use-list=/proc/self/fd/{listed}"], stdin=fd, pass_fds=(listed,),
                      stderr=subprocess.PIPE, text=True)
    finally:
        if units:
            print(f"Starting {', '.join(units + timers)}", flush=True)
            systemctl("start", units + timers)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        why = (f" (it runs as role {config['role']}, and the database holds something that is not "
               f"{config['role']}'s)" if re.search(r"must be owner of|permission denied", done.stderr) else "")
        print(f"RESTORE FAILED {name}: pg_restore exited {done.returncode}{why}; the database is as it was",
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
