"""Uploading secrets (TLS keys, env files): like files.put, but the contents never
appear in any output, `--dry --diff` included, and never sit in /tmp on the way."""

from __future__ import annotations

import hashlib
import io
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.facts.files import File, Sha1File


@operation()
def put_secret(src: str | bytes, dest: str, user: str = "root", group: str = "root", mode: str = "600"):
    """Upload `src` (a local path, or the bytes themselves) to `dest` with `mode`,
    owned by user:group; the directory of `dest` must exist and be private. Only the
    fact that it changed is shown."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    remote = host.get_fact(File, path=dest)
    same_content = remote and host.get_fact(Sha1File, path=dest) == hashlib.sha1(data).hexdigest()
    if not same_content:
        logger.info(f"{host.print_prefix}Will write {dest} (a secret: contents not shown)")
        # The upload lands next to its destination (a private directory), not in /tmp.
        yield FileUploadCommand(io.BytesIO(data), dest, remote_temp_filename=f"{dest}.upload")
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
