"""The systemd unit that runs uWSGI, and starting, restarting or reloading it."""

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from tasks import TEMPLATES


def systemctl(action: str, unit: str) -> str:
    """`systemctl <action>` that shows the unit's last log lines when it fails,
    so a broken app's traceback lands in the deploy output."""
    quoted = shlex.quote(unit)
    return (
        f"systemctl {action} {quoted} || {{ "
        f"echo '{unit} failed to {action}; its last log lines:' >&2; "
        f"journalctl -u {quoted} -n 40 --no-pager -o cat >&2; exit 1; }}"
    )


@deploy("uWSGI service")
def run(s, restart_triggers, reload_triggers):
    unit_path = f"/etc/systemd/system/{s.service}"
    unit = files.template(
        name=f"Write the systemd unit {unit_path}",
        src=str(TEMPLATES / "uwsgi.service.j2"),
        dest=unit_path,
        mode="644",
        s=s,
    )
    systemd.daemon_reload(name="Reload systemd (the unit changed)", _if=unit.did_change)
    systemd.service(
        name=f"Start {s.service} at boot", service=s.service, running=None, enabled=True
    )

    running = host.get_fact(SystemdStatus, services=[s.service]).get(s.service)
    if not running:
        return [server.shell(name=f"Start {s.service}", commands=[systemctl("start", s.service)])]

    restart = server.shell(
        name=f"Restart {s.service} (its unit, config or venv changed)",
        commands=[systemctl("restart", s.service)],
        _if=any_changed(unit, *restart_triggers),
    )
    # A graceful reload (SIGHUP) lets busy workers finish their requests; the
    # socket stays open, so nothing is refused while the new code loads.
    reload = server.shell(
        name=f"Reload {s.service} gracefully (the app's code changed)",
        commands=[systemctl("reload", s.service)],
        _if=lambda: any_changed(*reload_triggers)() and not restart.did_change(),
    )
    return [restart, reload]
