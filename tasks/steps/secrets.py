"""Uploading secrets (TLS keys, env files): like files.put, but the contents never
appear in any output, `--dry --diff` included, and never sit where others can read."""

from __future__ import annotations

import hashlib
import io
import secrets as random
import shlex
from pathlib import Path

import gevent
from gevent.lock import BoundedSemaphore
from pyinfra import host, logger
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, Sha1File
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.operations import files, python, server

from tasks.config import topology
from tasks.steps.uploads import SshUser, download, private_path, temporary_name


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


# An app server whose DATABASE_URL or REDIS_URL points at the db_servers host.

class HandedOver(FactBase):
    """On the db server: the SHA-1 of the app server's env file as it must be (made
    from the password there, printed only as its hash) and of the server's
    certificate; None while either is missing."""

    def command(self, variable: str, password: str, url: str, certificate: str) -> str:
        line = shlex.quote(f'{variable}="{url}"\\n')
        return (f"[ -f {password} ] && [ -f {certificate} ] && printf {line} \"$(cat {password})\" | sha1sum "
                f"&& sha1sum < {certificate}; true")

    def process(self, output: list[str]) -> tuple[str, str] | None:
        found = [line.split()[0] for line in output if line.strip()]
        return (found[0], found[1]) if len(found) == 2 else None


def url_from_server(app, variable: str, url: str, password: str, env_path: str, certificate: str, ca: str) -> list:
    """`variable` (a URL with `%s` where the password goes, the password in the
    root-only file `password` on the db server) in the root-only env file `env_path`
    and the db server's `certificate` in `ca`, copied from the db server when this
    app server's differ (a hash compared on each side): at execution time, after the
    db server's steps, through the laptop's memory (`_copy`), never printed. Returns
    the op, if any (the app's units restart on it)."""
    db = topology.database_server(host)
    wanted = db.get_fact(HandedOver, variable=variable, password=password, url=url, certificate=certificate)
    have = (host.get_fact(Sha1File, path=env_path), host.get_fact(Sha1File, path=ca))
    if wanted is not None and tuple(wanted) == have:
        return []
    files.directory(name="Create /etc/pyinfra-flask", path="/etc/pyinfra-flask", user="root", group="root",
                    mode="755")
    return [python.call(name=f"Hand {app.app_name} its {variable} and the db server's certificate "
                             f"(from {db.name}, contents not shown)",
                        function=_copy, source=db, target=host, line=f'{variable}="{url}"\n', password=password,
                        env_path=env_path, certificate=certificate, ca=ca,
                        directories=(upload_directory(db), upload_directory(host)))]


def upload_directory(h) -> str | None:
    """The SSH user's private upload directory (tasks/steps/uploads.py), or None as root."""
    login = h.get_fact(SshUser)
    return private_path(login) if login and h.data.get("_sudo") else None


# The app servers' copies run side by side (pyinfra executes each host in a greenlet)
# and read from the one db server over its one SSH connection, whose SFTP session
# answers one request at a time: two downloads at once never finished. One at a
# time, then, behind a greenlet lock; and bounded, so that a stuck one fails the run
# naming the file instead of holding every app server forever.
_SOURCE_LOCK = BoundedSemaphore()
READ_TIMEOUT = 120


def _read(source, path: str, directory: str | None) -> bytes:
    """A root-only file of `source` into memory, one at a time (above), bounded."""
    found = io.BytesIO()
    with _SOURCE_LOCK, gevent.Timeout(READ_TIMEOUT, DeployError(f"Reading {path} on {source.name} took over "
                                                                f"{READ_TIMEOUT} s")):
        if not download(source, path, found, directory):
            raise DeployError(f"Could not read {path} on {source.name}")
    return found.getvalue()


def _write(target, data: bytes, dest: str, mode: str, directory: str | None, group: str = "root") -> None:
    """`data` into the file `dest` of `target`, root's and `group`'s, with `mode`; with sudo,
    through the SSH user's private upload directory."""
    if directory is None:
        ok = target.put_file(io.BytesIO(data), dest)
        commands = f"chown root:{group} {dest} && chmod {mode} {dest}"
    else:
        temporary = f"{directory}/{random.token_hex(16)}"
        ok = target.put_file(io.BytesIO(data), temporary)
        commands = (f"install -o root -g {group} -m {mode} {temporary} {dest}; status=$?; rm -f {temporary}; "
                    "exit $status")
    if not ok or not target.run_shell_command(commands, _sudo=directory is not None)[0]:
        raise DeployError(f"Could not write {dest} on {target.name}")


def _copy(source, target, line: str, password: str, env_path: str, certificate: str, ca: str,
          directories: tuple) -> None:
    """At execution time: the password and certificate read from the db server into
    memory, the env file `line` and the certificate written on this app server (root's,
    600 and 644). Uploads pass through the SSH user's private directory, downloads too."""
    secret = _read(source, password, directories[0]).decode().strip()
    _write(target, _read(source, certificate, directories[0]), ca, "644", directories[1])
    _write(target, (line % secret).encode(), env_path, "600", directories[1])


def copy_secret(source, target, path: str, dest: str, mode: str, directories: tuple, group: str = "root") -> None:
    """At execution time: the root-only file `path` of `source` copied, through the laptop's
    memory and never printed, to `dest` on `target` (root's and `group`'s, `mode`)."""
    _write(target, _read(source, path, directories[0]), dest, mode, directories[1], group)
