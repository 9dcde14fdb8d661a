"""The systemd unit that runs uWSGI. Starting and reloading it onto a release is
the release tool's job (tasks/steps/release.py), so every (re)load is health-gated."""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, systemd

from tasks import JINJA, TEMPLATES
from tasks.steps import uwsgi

# In every unit this deploy writes (templates/uwsgi.service.j2's first line).
MARKER = "(pyinfra-flask app)"


@deploy("uWSGI service")
def install(app):
    unit_path = f"/etc/systemd/system/{app.service}"
    unit = files.template(
        jinja_env_kwargs=JINJA,
        name=f"Write the systemd unit {unit_path}",
        src=str(TEMPLATES / "uwsgi.service.j2"),
        dest=unit_path,
        mode="644",
        s=app,
        sockets=uwsgi.sockets(app),
    )
    systemd.daemon_reload(name="Reload systemd (the unit changed)", _if=unit.did_change)
    systemd.service(name=f"Start {app.service} at boot", service=app.service, running=None, enabled=True)
    return unit


class OurApps(FactBase):
    """Names of the apps whose units this deploy wrote earlier (they carry its marker)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self) -> str:
        return f"grep -l -F {shlex.quote(MARKER)} /etc/systemd/system/*.service 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.rsplit("/", 1)[1][: -len(".service")] for line in output if line.endswith(".service")]


@deploy("Apps no longer deployed")
def remove_stale(apps):
    """Stop, disable and remove the units of apps that are gone from the data. Their
    files under /srv (data included) are left alone: nothing is lost."""
    wanted = {app.app_name for app in apps}
    for name in host.get_fact(OurApps):
        if name in wanted:
            continue
        systemd.service(name=f"Stop and disable {name}.service (no longer in the data)",
                        service=f"{name}.service", running=False, enabled=False)
        removed = files.file(name=f"Remove the unit of {name}", path=f"/etc/systemd/system/{name}.service",
                             present=False)
        systemd.daemon_reload(name=f"Reload systemd (the unit of {name} is gone)", _if=removed.did_change)
