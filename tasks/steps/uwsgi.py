"""uWSGI itself (its own venv, compiled with PCRE, or from the wheel a first host built)
and its configuration."""

import shlex
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.hardware import Cpus
from pyinfra.operations import files, pip, python, server

from tasks import JINJA, TEMPLATES
from tasks.steps import uwsgi_wheel


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


def _complete(app) -> str:
    uwsgi = shlex.quote(f"{app.uwsgi_venv}/bin/uwsgi")
    return f"{uwsgi} --cflags | grep -q -- -DUWSGI_PCRE && {uwsgi} --cflags | grep -q -- -DUWSGI_SSL"


def _build_script(app) -> str:
    """Compile uWSGI into a wheel, install it and prove it has PCRE. A build without it
    (e.g. a wheel cached before the PCRE headers were installed) is rebuilt from source
    once; if that fails too, uWSGI is removed and the deploy stops rather than ship it.
    The wheel stays in root's directory for this machine to download and keep."""
    pip_cmd = shlex.quote(f"{app.uwsgi_venv}/bin/pip")
    uwsgi = shlex.quote(f"{app.uwsgi_venv}/bin/uwsgi")
    spec = shlex.quote(f"uwsgi=={app.uwsgi_version}")
    build = shlex.quote(f"{uwsgi_wheel.HOST_DIR}/{app.uwsgi_version}")
    quiet = "--no-input --disable-pip-version-check"
    return f"""
set -e
rm -rf {build} && mkdir -p -m 700 {build}
# uWSGI builds with setup.py: making a wheel of it needs the `wheel` package.
{pip_cmd} install {quiet} 'wheel<1'
{pip_cmd} wheel {quiet} --no-deps --wheel-dir {build} {spec}
{pip_cmd} install {quiet} --no-index --no-deps --force-reinstall {build}/*.whl
if ! {{ {_complete(app)}; }}; then
    echo "uWSGI {app.uwsgi_version} came without PCRE or SSL (a cached build?): rebuilding it from source" >&2
    rm -rf {build} && mkdir -p -m 700 {build}
    {pip_cmd} wheel {quiet} --no-deps --no-cache-dir --wheel-dir {build} {spec}
    {pip_cmd} install {quiet} --no-index --no-deps --force-reinstall {build}/*.whl
fi
if ! {{ {_complete(app)}; }}; then
    # uWSGI's setup.py installs its binary behind pip's back: remove both.
    {pip_cmd} uninstall --yes uwsgi >/dev/null; rm -f {uwsgi}; rm -rf {build}
    echo "ERROR: uWSGI {app.uwsgi_version} built WITHOUT PCRE or SSL on $(hostname): without PCRE" >&2
    echo "it logs '!!! no internal routing support, rebuild with pcre support !!!', without" >&2
    echo "SSL it cannot do WebSocket handshakes. Are the PCRE and OpenSSL development" >&2
    echo "packages installed and is pcre-config/pcre2-config working? uWSGI was removed" >&2
    echo "from {app.uwsgi_venv}; the running app was left as it was." >&2
    exit 1
fi
# One name for this machine to download.
ln -f {build}/*.whl {build}/built.whl
"""


def _wheel_script(app, wheel: uwsgi_wheel.Wheel, uploaded: str) -> str:
    """Install the wheel this machine kept, after checking on the host that what arrived
    is what was kept; if it lacks PCRE or SSL after all, compile as on a first host."""
    pip_cmd = shlex.quote(f"{app.uwsgi_venv}/bin/pip")
    path = shlex.quote(uploaded)
    return f"""
set -e
python=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
if [ "$python" != {wheel.python} ]; then
    rm -f {path}
    echo "the cached uWSGI wheel is for {wheel.python}, python3 here is $python: compiling uWSGI" >&2
{_build_script(app)}
    exit 0
fi
if ! echo {shlex.quote(f"{wheel.sha256}  {uploaded}")} | sha256sum --check --quiet --strict; then
    rm -f {path}
    echo "ERROR: the uWSGI wheel uploaded from this machine's cache does not match its SHA-256" >&2
    echo "({wheel.sha256}) on $(hostname); it was not installed. Remove {wheel.path.parent}" >&2
    echo "on this machine (or set PYINFRA_FLASK_CACHE=off) and deploy again." >&2
    exit 1
fi
{pip_cmd} install --no-input --disable-pip-version-check --no-index --no-deps --force-reinstall {path}
rm -f {path}
if ! {{ {_complete(app)}; }}; then
    echo "the cached uWSGI wheel has no PCRE or SSL here: compiling uWSGI" >&2
{_build_script(app)}
fi
"""


@deploy("uWSGI")
def install(app):
    """uWSGI in a venv of its own, so a change of the app's requirements never
    recompiles it; from this machine's wheel cache when it has one for this host's
    kind (tasks/steps/uwsgi_wheel.py). Returns the op that (re)installed it, or None."""
    pip.venv(name=f"Create uWSGI's virtualenv {app.uwsgi_venv}", path=app.uwsgi_venv, python="python3")
    wanted = UwsgiBuildInfo(app.uwsgi_version, pcre=True, ssl=True)
    have = host.get_fact(UwsgiBuild, venv=app.uwsgi_venv)
    if have == wanted:
        return None
    missing = [name for name, ok in (("PCRE", have and have.pcre), ("SSL", have and have.ssl)) if not ok]
    was = f"{have.version}{' without ' + ' and '.join(missing) if missing else ''}" if have else "none"
    title = f"Install uWSGI {app.uwsgi_version} with PCRE and SSL (was: {was})"
    key = host.get_fact(uwsgi_wheel.WheelKey) if uwsgi_wheel.cache_root() else None
    wheel = uwsgi_wheel.cached(app.uwsgi_version, key)
    if wheel:
        uploaded = f"{uwsgi_wheel.HOST_DIR}/{wheel.name}"
        files.directory(name=f"Create {uwsgi_wheel.HOST_DIR}", path=uwsgi_wheel.HOST_DIR,
                        user="root", group="root", mode="700")
        files.put(name=f"Upload the uWSGI wheel kept on this machine for {key}", src=str(wheel.path),
                  dest=uploaded, user="root", group="root", mode="600")
        return server.shell(name=f"{title} from this machine's wheel cache",
                            commands=[_wheel_script(app, wheel, uploaded)])
    built = server.shell(name=f"{title}, compiled", commands=[_build_script(app)])
    downloaded = uwsgi_wheel.incoming(app.uwsgi_version, key, host.name) if key else None
    if downloaded:
        files.get(name=f"Download the uWSGI wheel built for {key} to this machine's cache",
                  src=f"{uwsgi_wheel.HOST_DIR}/{app.uwsgi_version}/built.whl", dest=str(downloaded),
                  add_deploy_dir=False, create_local_dir=True, force=True, _if=built.did_change)
        python.call(name=f"Keep the uWSGI wheel built for {key} for the next hosts",
                    function=uwsgi_wheel.keep, downloaded=str(downloaded), version=app.uwsgi_version,
                    key=key, _if=built.did_change)
    return built


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
    """uWSGI's ini; with `canary_share`, the canary instance's beside it (the release tool
    starts that instance for a release on trial: docs/releases.md). Returns the main ini's op."""
    written = files.template(
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
        canary=False,
    )
    if app.canary_share:
        # Two workers serve a share of the traffic; the main instance keeps the rest.
        files.template(jinja_env_kwargs=JINJA, name=f"Write {app.canary_ini} (the canary instance's)",
                       src=str(TEMPLATES / "uwsgi.ini.j2"), dest=app.canary_ini, user="root", group=app.app_user,
                       mode="640", s=app, processes=min(2, processes(app)), sockets=[], canary=True)
    else:
        files.file(name=f"No {app.canary_ini} (canary_share is 0)", path=app.canary_ini, present=False)
    return written
