"""The app's virtualenv: its requirements and a pinned uWSGI built with PCRE."""

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, pip, server

from tasks.facts import UwsgiBuild, UwsgiBuildInfo


def _uwsgi_install_script(s) -> str:
    """Install uWSGI and prove it has PCRE. A build without it (e.g. a wheel cached
    before the PCRE headers were installed) is rebuilt from source once; if that
    fails too, uWSGI is removed and the deploy stops rather than ship it."""
    pip_cmd = shlex.quote(f"{s.venv_path}/bin/pip")
    uwsgi = shlex.quote(f"{s.venv_path}/bin/uwsgi")
    spec = shlex.quote(f"uwsgi=={s.uwsgi_version}")
    has_pcre = f"{uwsgi} --cflags | grep -q -- -DUWSGI_PCRE"
    return f"""
set -e
{pip_cmd} install --no-input {spec}
if ! {has_pcre}; then
    echo "uWSGI {s.uwsgi_version} came without PCRE (a cached build?): rebuilding it from source" >&2
    {pip_cmd} install --no-input --force-reinstall --no-deps --no-cache-dir {spec}
fi
if ! {has_pcre}; then
    # uWSGI's setup.py installs its binary behind pip's back: remove both.
    {pip_cmd} uninstall --yes uwsgi >/dev/null; rm -f {uwsgi}
    echo "ERROR: uWSGI {s.uwsgi_version} built WITHOUT PCRE on $(hostname): it would log" >&2
    echo "'!!! no internal routing support, rebuild with pcre support !!!'. Is the PCRE" >&2
    echo "development package installed and is pcre-config/pcre2-config working? uWSGI was" >&2
    echo "removed from {s.venv_path}; the running app was left as it was." >&2
    exit 1
fi
"""


@deploy("Python virtualenv")
def create(s):
    venv = pip.venv(name=f"Create the virtualenv {s.venv_path}", path=s.venv_path, python="python3")

    # The requirements the venv was built from live in the venv; pip runs only when
    # they change (or the venv is new). A failed install removes the copy, so the
    # next run tries again instead of believing it worked.
    requirements = f"{s.venv_path}/deploy-requirements.txt"
    uploaded = files.put(
        name="Upload the app's requirements",
        src=str(s.source_dir / s.app_requirements),
        dest=requirements,
        mode="644",
    )
    installed = server.shell(
        name="Install the app's requirements into the venv",
        commands=[
            f"{shlex.quote(s.venv_path + '/bin/pip')} install --no-input -r {requirements} "
            f"|| {{ rm -f {requirements}; exit 1; }}"
        ],
        _if=lambda: venv.did_change() or uploaded.did_change(),
    )

    wanted = UwsgiBuildInfo(s.uwsgi_version, pcre=True)
    have = host.get_fact(UwsgiBuild, venv=s.venv_path)
    uwsgi = None
    if have != wanted:
        uwsgi = server.shell(
            name=f"Install uWSGI {s.uwsgi_version} with PCRE (was: "
            + (f"{have.version}{'' if have.pcre else ' without PCRE'})" if have else "none)"),
            commands=[_uwsgi_install_script(s)],
        )
    return [op for op in (venv, installed, uwsgi) if op is not None]
