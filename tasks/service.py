"""The systemd unit that runs uWSGI. Starting and reloading it onto a release is
the release tool's job (tasks/release.py), so every (re)load is health-gated."""

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from tasks import TEMPLATES


@deploy("uWSGI service")
def install(s):
    unit_path = f"/etc/systemd/system/{s.service}"
    unit = files.template(
        name=f"Write the systemd unit {unit_path}",
        src=str(TEMPLATES / "uwsgi.service.j2"),
        dest=unit_path,
        mode="644",
        s=s,
    )
    systemd.daemon_reload(name="Reload systemd (the unit changed)", _if=unit.did_change)
    systemd.service(name=f"Start {s.service} at boot", service=s.service, running=None, enabled=True)
    return unit
