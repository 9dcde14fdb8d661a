#!/usr/bin/python3 -I -S
"""The forced command of pgBackRest's SSH logins (installed by tasks/steps/pgbackrest.py;
named in authorized_keys with `restrict`, docs/backups.md).

    pgbackrest-ssh.py ingest   on the backup host, for the db server's `postgres`:
                               pgBackRest's repository remote for archive-push (and
                               archive-get, restore and info, which read)
    pgbackrest-ssh.py pg       on the db server, for the backup host's repository owner:
                               pgBackRest's PostgreSQL remote (backup, check, stanza-create)

Whatever the client asked for (SSH_ORIGINAL_COMMAND) runs only if it is
`/usr/bin/pgbackrest [--option=value ...] <command>:remote` with a command from the
list below and no option that names a path or a command; it is then executed directly, never through a shell. Anything
else (a shell, `stanza-delete`, `expire`, `rm -rf`) is refused, saying so. What the
remote may then write is bounded by the files' owners and modes, not by this.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

PGBACKREST = "/usr/bin/pgbackrest"
INGEST_LOCKS = "/tmp/pgbackrest-ingest"
COMMANDS = {
    "ingest": {"archive-push:remote", "archive-get:remote", "restore:remote", "info:remote", "check:remote"},
    "pg": {"backup:remote", "check:remote", "stanza-create:remote", "stanza-upgrade:remote", "archive-get:remote"},
}
# The client passes its own options on (pgBackRest's cfgExecParam), so options are
# allowed as `--name=value` except those that would choose what the remote reads or where
# it writes: its configuration, the repository, lock, log and spool paths, commands to run.
OPTION = re.compile(r"--[a-z][a-z0-9-]*=[^\x00]*")
DENIED = re.compile(r"--(config|repo[0-9]+-|lock-path|log-path|spool-path|cmd|pg[0-9]+-host)")


def allowed(role: str, command: str) -> list[str] | None:
    """The argument list to run, or None when `command` is not one `role` may run."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != PGBACKREST or words[-1] not in COMMANDS.get(role, ()):
        return None
    for word in words[1:-1]:
        if not OPTION.fullmatch(word) or DENIED.match(word):
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
    if role == "ingest":
        # Its locks apart from the owner's (/tmp/pgbackrest), which it may not write.
        words = [*words[:-1], f"--lock-path={INGEST_LOCKS}", words[-1]]
    os.execv(PGBACKREST, words)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
