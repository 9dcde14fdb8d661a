#!/usr/bin/python3 -I -S
"""The backup host's repository sweep, as root, every few seconds (installed by
tasks/steps/pgbackrest.py and tasks/steps/restic.py, docs/backups.md).

What the db server (pgBackRest's WAL) and the app servers (restic's snapshots of
`shared_paths`) send arrives as an *ingest* user, who must not be able to remove or
change what is already in the repository. Under the directories it adds to
(pgBackRest: `archive`; restic: `data`, `index`, `snapshots`) this makes every
directory the owner's, group-writable for the ingest user's group and sticky (mode
3770: the ingest user may add a file, not remove or rename one it does not own),
and hands every file the ingest user completed (not the tool's temporary files) over
to the owner, mode 640: from then on the ingest user can read it and nothing else.

The ingest user is untrusted: nothing is opened by following a link (every step is
relative to an open directory, `O_NOFOLLOW`, types checked on the opened file), and
what the tool never makes there is moved into the root-only quarantine directory
instead: links, devices, fifos, sockets, files with other links, a second file for a
WAL segment the archive already has (it would make a restore stop), and a restic file
whose name is not the SHA-256 of its contents (restic names every file so: a file
that lies about its contents would only make a restore fail).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pwd
import stat
import sys
import time

# What the ingest user adds to, and how its unfinished files are named, per tool.
LAYOUTS = {"pgbackrest": (("archive",), ".pgbackrest.tmp"), "restic": (("data", "index", "snapshots"), "-restic-temp-")}
DIRECTORY_MODE = 0o3770
FILE_MODE = 0o640
# A WAL segment's file is `<24 hex digits>-<sha1>[.gz|...]`: one per segment.
SEGMENT = 24


def _open_directory(name: str, dir_fd: int | None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


class Sweep:
    def __init__(self, owner: int, group: int, ingest: int, quarantine_fd: int, layout: str = "pgbackrest"):
        self.owner, self.group, self.ingest, self.quarantine_fd = owner, group, ingest, quarantine_fd
        self.temporary = LAYOUTS[layout][1]
        self.content_named = layout == "restic"
        self.handed = self.quarantined = 0

    def quarantine(self, dir_fd: int, name: str, why: str) -> None:
        target = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{self.quarantined}-{name}"
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=self.quarantine_fd)
        self.quarantined += 1
        print(f"quarantined {name} ({why})", file=sys.stderr)

    def directory(self, fd: int) -> None:
        """Make the open directory the owner's, sticky, then sweep what is in it."""
        found = os.fstat(fd)
        if (found.st_uid, found.st_gid) != (self.owner, self.group):
            os.fchown(fd, self.owner, self.group)
        if stat.S_IMODE(found.st_mode) != DIRECTORY_MODE:
            os.fchmod(fd, DIRECTORY_MODE)
        names = sorted(os.listdir(fd))
        # The segments this directory already holds in the owner's files.
        kept = {}
        for name in names:
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(entry.st_mode) and entry.st_uid == self.owner:
                kept.setdefault(name[:SEGMENT], name)
        for name in names:
            try:
                self.entry(fd, name, kept)
            except FileNotFoundError:
                continue  # pgBackRest renamed or removed it meanwhile

    def entry(self, dir_fd: int, name: str, kept: dict) -> None:
        entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(entry.st_mode):
            fd = _open_directory(name, dir_fd)
            try:
                opened = os.fstat(fd)
                if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino):
                    return  # swapped between the look and the open: next time
                self.directory(fd)
            finally:
                os.close(fd)
            return
        if not stat.S_ISREG(entry.st_mode):
            self.quarantine(dir_fd, name, "not a regular file or directory")
            return
        if entry.st_uid == self.owner:
            return
        if entry.st_uid != self.ingest:
            self.quarantine(dir_fd, name, f"owned by uid {entry.st_uid}")
            return
        if self.temporary in name:
            return  # still being written
        if entry.st_nlink != 1:
            self.quarantine(dir_fd, name, "a file with other links")
            return
        if not self.content_named and kept.get(name[:SEGMENT], name) != name and len(name) > SEGMENT \
                and name[SEGMENT] == "-":
            self.quarantine(dir_fd, name, f"the archive already has {kept[name[:SEGMENT]]}")
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino) or not stat.S_ISREG(opened.st_mode) \
                    or opened.st_nlink != 1:
                return  # swapped meanwhile: next time
            if self.content_named:
                # Taken from the ingest user first (then read): it can no longer write what is checked.
                os.fchown(fd, self.owner, self.group)
                os.fchmod(fd, FILE_MODE)
                if _sha256(fd) != name:
                    self.quarantine(dir_fd, name, "its name is not the SHA-256 of its contents")
                    return
            os.fchown(fd, self.owner, self.group)
            os.fchmod(fd, FILE_MODE)
            kept.setdefault(name[:SEGMENT], name)
            self.handed += 1
        finally:
            os.close(fd)


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--ingest", required=True)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="pgbackrest")
    args = parser.parse_args(argv)
    owner, ingest = pwd.getpwnam(args.owner), pwd.getpwnam(args.ingest)
    # pgBackRest's repository is the owner's group's (the ingest user is in it); each restic
    # repository its ingest user's group's, so that no app's ingest user reads another's.
    group = owner.pw_gid if args.layout == "pgbackrest" else ingest.pw_gid
    root = _open_directory(args.repository, None)
    quarantine = _open_directory(args.quarantine, None)
    found = os.fstat(root)
    if found.st_uid != owner.pw_uid:
        print(f"{args.repository}: not {args.owner}'s; nothing swept", file=sys.stderr)
        return 1
    held = os.fstat(quarantine)
    if held.st_uid != 0 or stat.S_IMODE(held.st_mode) & 0o077:
        print(f"{args.quarantine}: not root's alone; nothing swept", file=sys.stderr)
        return 1
    sweep = Sweep(owner.pw_uid, group, ingest.pw_uid, quarantine, args.layout)
    for name in LAYOUTS[args.layout][0]:
        try:
            added = _open_directory(name, root)
        except FileNotFoundError:
            continue  # no stanza, no repository yet
        try:
            sweep.directory(added)
        finally:
            os.close(added)
    if sweep.handed or sweep.quarantined:
        print(f"handed {sweep.handed} file(s) to {args.owner}, quarantined {sweep.quarantined}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
