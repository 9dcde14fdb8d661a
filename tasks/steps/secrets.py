"""Uploading secrets (TLS keys, env files): like files.put, but the contents never
appear in any output, `--dry --diff` included, and never sit where others can read."""

from __future__ import annotations

import hashlib
import io
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import server

from tasks.steps.uploads import temporary_name


@operation()
def put_secret(src: str | bytes, dest: str, user: str = "root", group: str = "root", mode: str = "600"):
    """Upload `src` (a local path, or the bytes themselves) to `dest` with `mode`,
    owned by user:group; the directory of `dest` must exist and be private. Only the
    fact that it changed is shown. On its way it sits in the SSH user's private
    upload directory under a random name (tasks/steps/uploads.py)."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    remote = host.get_fact(File, path=dest)
    same_content = remote and host.get_fact(Sha1File, path=dest) == hashlib.sha1(data).hexdigest()
    if not same_content:
        logger.info(f"{host.print_prefix}Will write {dest} (a secret: contents not shown)")
        yield FileUploadCommand(io.BytesIO(data), dest, remote_temp_filename=temporary_name())
    quoted = shlex.quote(dest)
    if not same_content or remote.get("user") != user or remote.get("group") != group:
        yield StringCommand(f"chown {shlex.quote(user)}:{shlex.quote(group)} {quoted}")
    if not same_content or str(remote.get("mode")) != mode.lstrip("0"):
        yield StringCommand(f"chmod {mode} {quoted}")


def env_file(variables: dict[str, str]) -> bytes:
    """KEY="value" lines as systemd's EnvironmentFile= reads them."""
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(f"{key}={quote(value)}\n" for key, value in sorted(variables.items())).encode()


def url_from_password(app, variable: str, url: str, password: str, env_path: str, made) -> list:
    """`variable` (a URL with `%s` where the password goes) in the root-only env file
    `env_path`, filled in on the host from the root-only file `password` (printf, a
    builtin, `$(cat ...)`: no argument list or output shows it); written when the
    password was just `made` or the file is missing. Returns the op, if any (the app's
    units restart on it)."""
    if made or not host.get_fact(File, path=env_path):
        return [server.shell(name=f"Hand {app.app_name} its {variable} ({env_path}, root-only)", commands=[
            f"(umask 077; printf '{variable}=\"{url}\"\\n' \"$(cat {password})\" > {env_path})"])]
    return []
