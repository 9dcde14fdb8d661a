"""Where files pass on their way up when pyinfra connects as a user with sudo.

SFTP writes as the SSH user, so pyinfra uploads to a temporary file and copies it into
place with sudo. Its default temporary file is `/tmp/pyinfra-<sha1 of the destination>`:
a name anyone on the host can work out, readable by all while it waits, and a file a
local user who got there first could swap before root copies it over a unit file. Here
every upload (pyinfra's own operations and ours) goes through a directory in the SSH
user's home that only that user can enter (mode 700), so nobody else can read, replace
or predict into it. Connecting as root, uploads go straight to their destination.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.operations import files

DIRECTORY = ".pyinfra-flask-uploads"


class LoginUser(NamedTuple):
    name: str
    home: str


class SshUser(FactBase):
    """The user pyinfra logged in as and its home, also when commands run through
    sudo (which sets SUDO_USER and, with -H, HOME to root's)."""

    def command(self) -> str:
        return ('user=${SUDO_USER:-$(id -un)}; '
                'printf "%s\\n" "$user" "$(getent passwd "$user" | cut -d: -f6)"')

    def process(self, output: list[str]) -> LoginUser | None:
        if len(output) < 2 or not output[1].startswith("/"):
            return None
        return LoginUser(output[0].strip(), output[1].strip())


def private_path(login: LoginUser) -> str:
    """The private upload directory of the SSH user `login`."""
    return f"{login.home.rstrip('/')}/{DIRECTORY}"


def private_directory() -> str | None:
    """Ensure the SSH user's private upload directory; its path, for `_temp_dir`."""
    login = host.get_fact(SshUser)
    if login is None:
        return None
    path = private_path(login)
    files.directory(name=f"Keep uploads private on the way ({path}, mode 700, {login.name} only)",
                    path=path, user=login.name, mode="700")
    return path


def temporary_name() -> str:
    """An unpredictable name in the run's private upload directory (or pyinfra's
    default directory when there is none)."""
    arguments = host.current_op_global_arguments or {}
    return host.get_temp_filename(secrets.token_hex(16), temp_directory=arguments.get("_temp_dir"))


def download(h, remote: str, local, directory: str | None) -> bool:
    """A file only root can read, of host `h`, into `local` (a path or a file object).
    With sudo it passes through `directory` (the SSH user's private upload directory)
    under a random name, never through /tmp; as root (`directory` None) it is read
    directly."""
    if directory is None:
        return h.get_file(remote, local)
    return h.get_file(remote, local, remote_temp_filename=f"{directory}/{secrets.token_hex(16)}", _sudo=True)
