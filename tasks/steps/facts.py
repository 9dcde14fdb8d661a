"""Facts this deploy reads from hosts beyond pyinfra's own."""

from __future__ import annotations

import shlex
from typing import NamedTuple

from pyinfra.api import FactBase


class UwsgiBuildInfo(NamedTuple):
    version: str
    pcre: bool
    ssl: bool


class UwsgiBuild(FactBase):
    """The uWSGI in a venv: its version and whether it was compiled with PCRE
    (internal routing) and OpenSSL (the WebSocket handshake needs it), or None when
    the venv has no uWSGI (or one that cannot say)."""

    def command(self, venv: str) -> str:
        uwsgi = shlex.quote(f"{venv}/bin/uwsgi")
        # `--cflags` lists the build's defines: -DUWSGI_PCRE (or -DUWSGI_PCRE2)
        # is there only when uWSGI found the PCRE headers at compile time, and
        # -DUWSGI_VERSION is what `--version` prints (one start of uWSGI, not two).
        return f"if [ -x {uwsgi} ]; then {uwsgi} --cflags; else echo none; fi"

    def process(self, output: list[str]) -> UwsgiBuildInfo | None:
        flags = [flag for line in output for flag in line.split()]
        version = next((flag.removeprefix("-DUWSGI_VERSION=") for flag in flags
                        if flag.startswith("-DUWSGI_VERSION=")), None)
        if version is None:
            return None
        return UwsgiBuildInfo(
            version.replace("\\", "").strip('"'),
            pcre=any(flag.startswith("-DUWSGI_PCRE") for flag in flags),
            ssl="-DUWSGI_SSL" in flags,
        )


class AccountInfo(NamedTuple):
    home: str
    shell: str
    group: str
    groups: tuple[str, ...]


class Account(FactBase):
    """One user's home, shell, primary group and all its groups, or None when there
    is no such user. pyinfra's `server.user` reads every account on the host (a
    shell loop of several processes per user, ~0.2 s); this reads one."""

    def command(self, user: str) -> str:
        user = shlex.quote(user)
        return f"getent passwd {user} && id -gn {user} && id -Gn {user} || true"

    def process(self, output: list[str]) -> AccountInfo | None:
        if len(output) < 3:
            return None
        fields = output[0].split(":")
        if len(fields) < 7:
            return None
        return AccountInfo(home=fields[5], shell=fields[6], group=output[1].strip(),
                           groups=tuple(output[2].split()))
