#!/usr/bin/python3 -I -S
"""The forced command of pgBackRest's SSH logins (installed by tasks/steps/pgbackrest.py;
named in authorized_keys with `restrict`, docs/backups.md).

    pgbackrest-ssh.py ingest   on the backup host, for the db server's `postgres`:
                               pgBackRest's repository remote for archive-push (and
                               archive-get, restore and info, which read)
    pgbackrest-ssh.py pg       on the db server, for the backup host's repository owner:
                               pgBackRest's PostgreSQL remote (backup, check, stanza-create)

Whatever the client asked for (SSH_ORIGINAL_COMMAND) runs only if it is
`/usr/bin/pgbackrest [--option=value ...] <command>:remote` with a command and options
from the lists below; it is then executed directly, never through a shell. Anything
else (a shell, `stanza-delete`, `expire`, `rm -rf`) is refused, saying so. What the
remote may then write is bounded by the files' owners and modes, not by this.
"""

from __future__ import annotations

import os
import shlex
import sys

PGBACKREST = "/usr/bin/pgbackrest"
COMMANDS = {
    "ingest": {"archive-push:remote", "archive-get:remote", "restore:remote", "info:remote", "check:remote"},
    "pg": {"backup:remote", "check:remote", "stanza-create:remote", "stanza-upgrade:remote", "archive-get:remote"},
}
# The options pgBackRest's client passes to its remote (protocol/helper.c), and nothing else:
# no config, lock, log or repository path of the client's choosing.
OPTIONS = {
    "buffer-size", "compress-level-network", "db-timeout", "exec-id", "io-timeout", "log-level-console",
    "log-level-file", "log-level-stderr", "log-subprocess", "log-timestamp", "pg", "pg1-path", "pg1-port",
    "pg1-socket-path", "process", "protocol-timeout", "remote-type", "repo", "stanza", "tcp-keep-alive",
    "tcp-keep-alive-count", "tcp-keep-alive-idle", "tcp-keep-alive-interval", "archive-async", "job-retry",
    "job-retry-interval", "type",
}


def allowed(role: str, command: str) -> list[str] | None:
    """The argument list to run, or None when `command` is not one `role` may run."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != PGBACKREST or words[-1] not in COMMANDS.get(role, ()):
        return None
    for word in words[1:-1]:
        name, equals, _ = word.partition("=")
        if not word.startswith("--") or not equals or name[2:] not in OPTIONS:
            return None
    return words


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) == 2 else ""
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    words = allowed(role, command)
    if words is None:
        print(f"pgbackrest-ssh ({role}): refused: {command[:300]!r} (only pgBackRest's remote may run here)",
              file=sys.stderr)
        return 1
    os.execv(PGBACKREST, words)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
