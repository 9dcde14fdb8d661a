"""uWSGI itself (its own venv, compiled with PCRE) and its configuration."""

import shlex
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.hardware import Cpus
from pyinfra.operations import files, pip, server

from tasks import JINJA, TEMPLATES


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


def _install_script(app) -> str:
    """Install uWSGI and prove it has PCRE. A build without it (e.g. a wheel cached
    before the PCRE headers were installed) is rebuilt from source once; if that
    fails too, uWSGI is removed and the deploy stops rather than ship it."""
    pip_cmd = shlex.quote(f"{app.uwsgi_venv}/bin/pip")
    uwsgi = shlex.quote(f"{app.uwsgi_venv}/bin/uwsgi")
    spec = shlex.quote(f"uwsgi=={app.uwsgi_version}")
    complete = f"{uwsgi} --cflags | grep -q -- -DUWSGI_PCRE && {uwsgi} --cflags | grep -q -- -DUWSGI_SSL"
    return f"""
set -e
{pip_cmd} install --no-input --disable-pip-version-check {spec}
if ! {{ {complete}; }}; then
    echo "uWSGI {app.uwsgi_version} came without PCRE or SSL (a cached build?): rebuilding it from source" >&2
    {pip_cmd} install --no-input --force-reinstall --no-deps --no-cache-dir {spec}
fi
if ! {{ {complete}; }}; then
    # uWSGI's setup.py installs its binary behind pip's back: remove both.
    {pip_cmd} uninstall --yes uwsgi >/dev/null; rm -f {uwsgi}
    echo "ERROR: uWSGI {app.uwsgi_version} built WITHOUT PCRE or SSL on $(hostname): without PCRE" >&2
    echo "it logs '!!! no internal routing support, rebuild with pcre support !!!', without" >&2
    echo "SSL it cannot do WebSocket handshakes. Are the PCRE and OpenSSL development" >&2
    echo "packages installed and is pcre-config/pcre2-config working? uWSGI was removed" >&2
    echo "from {app.uwsgi_venv}; the running app was left as it was." >&2
    exit 1
fi
"""


@deploy("uWSGI")
def install(app):
    """uWSGI in a venv of its own, so a change of the app's requirements never
    recompiles it. Returns the op that (re)installed it, or None."""
    pip.venv(name=f"Create uWSGI's virtualenv {app.uwsgi_venv}", path=app.uwsgi_venv, python="python3")
    wanted = UwsgiBuildInfo(app.uwsgi_version, pcre=True, ssl=True)
    have = host.get_fact(UwsgiBuild, venv=app.uwsgi_venv)
    if have == wanted:
        return None
    missing = [name for name, ok in (("PCRE", have and have.pcre), ("SSL", have and have.ssl)) if not ok]
    was = f"{have.version}{' without ' + ' and '.join(missing) if missing else ''}" if have else "none"
    return server.shell(
        name=f"Install uWSGI {app.uwsgi_version} with PCRE and SSL (was: {was})",
        commands=[_install_script(app)],
    )


def processes(app) -> int:
    """The setting, or one worker per CPU (at least 2, at most 16): with 2 threads each
    that kept both cores of the benchmark host busiest (2x2 beat 4x2 and 8x1 by 10-30%
    in requests/s and p99), and two workers keep one serving while the other reloads."""
    if app.socketio:
        return instances(app)
    return app.uwsgi_processes or min(16, max(2, host.get_fact(Cpus) or 1))


def instances(app, server=None) -> int:
    """A `socketio` app's instances on an app server (this host by default): the
    setting, or one per CPU (at least 2, so one serves while the other is replaced,
    at most 16). Each is one single-process gevent worker on a socket of its own."""
    return app.socketio_instances or min(16, max(2, (server or host).get_fact(Cpus) or 1))


def sockets(app, server=None) -> list[str]:
    """A `socketio` app's sockets, one per instance; none for other apps."""
    return app.instance_addresses(instances(app, server)) if app.socketio else []


@deploy("uWSGI configuration")
def configure(app):
    return files.template(
        jinja_env_kwargs=JINJA,
        name=f"Write {app.uwsgi_ini}",
        src=str(TEMPLATES / "uwsgi.ini.j2"),
        dest=app.uwsgi_ini,
        user="root",
        group=app.app_user,
        mode="640",
        s=app,
        processes=processes(app),
        sockets=sockets(app),
    )
