"""This run's identity: its id and who runs it from which machine, which the release
tool's command lines name it by (`--run ID --by USER@MACHINE`, tasks/tool.py; the
audit log's `by`, files/release_tool/audit.py). One pyinfra process is one run.

It sits below every wing (tasks/__init__.py): the steps name the run in the release
tool's command lines, the run's machinery (lock, hooks) in its lock and events.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket

RUN_ID = secrets.token_hex(3)
MACHINE = socket.gethostname()


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


BY = f"{user()}@{MACHINE}"
