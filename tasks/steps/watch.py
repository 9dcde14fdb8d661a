"""The watch on every app server (docs/watch.md): files/watch.py, run as root by a
systemd timer every `watch_interval` seconds, checks what `ops.py status` checks
and alerts the `alert_*` targets once when a check fails and once when it recovers.

    /usr/local/lib/pyinfra-flask/watch.py          files/watch.py
    /etc/pyinfra-flask/watch/watch.json            what to check (root-only; shown by --diff)
    /etc/pyinfra-flask/watch/targets.json          where alerts go (root-only; a secret: never shown)
    /var/lib/pyinfra-flask/watch/state.json        each check's state and the alerts not yet delivered
    pyinfra-flask-watch.service, pyinfra-flask-watch.timer

What each app's status is read with (`status_command`: its release tool's `status
--json`, the report `ops.py status` judges) is built here for both.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES
from tasks import tool as host_tool
from tasks.config.settings.alerts import SMTP_PORTS
from tasks.steps import acme, database, healthcheck
from tasks.steps.nginx import sites_for
from tasks.steps.secrets import put_secret

TOOL = f"{healthcheck.INSTALL_DIR}/watch.py"
CONFIG_DIR = "/etc/pyinfra-flask/watch"
CONFIG = f"{CONFIG_DIR}/watch.json"
TARGETS = f"{CONFIG_DIR}/targets.json"
STATE_DIR = "/var/lib/pyinfra-flask/watch"
STATE = f"{STATE_DIR}/state.json"
UNIT = "pyinfra-flask-watch"
UNIT_DIR = "/etc/systemd/system"


# What an app's status is read with (the watch and ops.py status) ------------------

def certificates(apps) -> dict[str, str]:
    """The certificate file each app's site serves (by app name), for apps with TLS
    whose nginx runs on this host. Sites are made per host from all its apps, as the
    deploy makes them (tasks/steps/nginx.py)."""
    found = {}
    for site in sites_for([app for app in apps if not app.behind_balancer]):
        if site.apps[0].tls:
            found.update({app.app_name: site.certificate for app in site.apps})
    return found


def job_units(app) -> tuple[list[str], list[str]]:
    """(job services, timers): the timers only where this host runs the jobs."""
    services = [f"{app.unit_prefix(name)}.service" for name in sorted(app.jobs)]
    timers = [f"{app.unit_prefix(name)}.timer" for name in sorted(app.jobs)] if app.runs_jobs else []
    return services, timers


def status_command(app, certificate: str | None, watch: bool = False, host_units: dict | None = None) -> str:
    """The app's release tool's `status --json` (with the watch's own state for ops.py status;
    with `host_units` of the host beside the app's: a timer must run, a service must not fail)."""
    jobs, timers = job_units(app)
    for unit in host_units or {}:
        (timers if unit.endswith(".timer") else jobs).append(unit)
    return host_tool.status(host_tool.path(app.app_root), not app.behind_balancer, app.worker_instances, jobs,
                            timers, [certificate] if certificate else [], watch=STATE if watch else None)


# What the watch checks -----------------------------------------------------------------

def backups(app) -> list[dict]:
    """The app's backups whose age the watch checks: today its local database's
    dumps (files/db-backup.py names them `<app>-<UTC time>[-N].dump`). Another kind of
    backup adds its entry here."""
    found = []
    if app in database.local([app]) and app.database_backup_schedule:
        found.append({
            "kind": "database", "what": "database backup", "max_age_hours": app.alert_backup_max_age,
            "directory": database.backup_settings(app)["directory"],
            "pattern": rf"^{re.escape(app.app_name)}-\d{{8}}T\d{{6}}Z(-\d+)?\.dump$",
            "hint": f"journalctl -u pyinfra-flask-db-backup@{app.app_name}.service",
        })
    return found


def host_units(apps) -> dict[str, str]:
    """Units of the host beside the apps' (what each is, in alerts): the certificate
    renewal's timer (it must run) and service, each database backup's service (they
    must not have failed)."""
    units = {}
    if any(app.tls_acme and not app.behind_balancer for app in apps):
        units[f"{acme.RENEW_UNIT}.timer"] = "the certificate renewal timer"
        units[f"{acme.RENEW_UNIT}.service"] = "the last certificate renewal"
    for app in apps:
        if backups(app):
            units[f"pyinfra-flask-db-backup@{app.app_name}.service"] = f"the last database backup of {app.app_name}"
    return units


def watch_config(host_name: str, apps, more_units: dict | None = None) -> dict:
    """watch.json: every check of the host (no secret in it); `more_units`: other steps' units
    to check the same way ({unit: what it is}, e.g. the file backups': tasks/steps/restic.py)."""
    paths, units = certificates(apps), {**host_units(apps), **(more_units or {})}
    return {
        "host": host_name, "interval": apps[0].watch_interval, "targets": TARGETS, "state": STATE,
        "apps": [{"app": app.app_name, "status": shlex.split(status_command(app, paths.get(app.app_name),
                                                                           host_units=units if app is apps[0] else {})),
                  "certificate_days": app.acme_min_valid_days, "disk_free": app.alert_disk_free,
                  "backups": backups(app)} for app in apps],
        "units": units,
    }


def smtp_password(settings) -> str | None:
    if settings.alert_smtp_password_from:
        return os.environ[settings.alert_smtp_password_from]
    return settings.alert_smtp_password


def targets(settings) -> dict:
    """targets.json: where alerts go, from the host's settings (a secret)."""
    found = {}
    if settings.alert_webhook_url:
        found["webhook"] = settings.alert_webhook_url
    if settings.alert_ntfy_url:
        found["ntfy"] = settings.alert_ntfy_url
        if settings.alert_ntfy_token:
            found["ntfy_token"] = settings.alert_ntfy_token
    if settings.alert_email_to:
        security = settings.alert_smtp_security
        found["email"] = {
            "to": list(settings.alert_email_to), "from": settings.alert_email_from or settings.alert_smtp_user,
            "host": settings.alert_smtp_host, "port": settings.alert_smtp_port or SMTP_PORTS[security],
            "security": security, "user": settings.alert_smtp_user, "password": smtp_password(settings),
        }
    return found


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@deploy("Watch")
def install(host_name: str, apps, more_units: dict | None = None) -> None:
    """The watch of this app server's apps (and of `more_units`, see watch_config): its tool,
    settings, targets, units; the timer started, and restarted only when it changed."""
    _install(apps[0], watch_config(host_name, apps, more_units))


@deploy("Watch")
def install_for_units(host_name: str, settings, units: dict[str, str]) -> None:
    """The watch of a host without apps (the backup host): its own `units` ({unit: what it
    is}: a timer must run, a service must not have failed), asked of systemd; alerts to the
    host's `settings`' targets."""
    _install(settings, {"host": host_name, "interval": settings.watch_interval, "targets": TARGETS,
                        "state": STATE, "apps": [], "systemd_units": units})


def _install(settings, config: dict) -> None:
    """`settings`: the alert targets and the interval (the host's)."""
    for path in (CONFIG_DIR, STATE_DIR):
        files.directory(name=f"Create {path} (root-only)", path=path, user="root", group="root", mode="700")
    changed = [
        files.put(name="Install the watch", src=str(REPO_ROOT / "files/watch.py"), dest=TOOL,
                  user="root", group="root", mode="644", create_remote_dir=True),
        files.put(name=f"Write what the watch checks ({CONFIG})", src=io.StringIO(_json(config)),
                  dest=CONFIG, user="root", group="root", mode="600"),
        put_secret(name=f"Write where alerts go ({TARGETS}, root-only)", src=_json(targets(settings)).encode(),
                   dest=TARGETS),
    ]
    units = [files.template(jinja_env_kwargs=JINJA, name=f"Write {UNIT}.service", src=str(TEMPLATES / "watch.service.j2"),
                            dest=f"{UNIT_DIR}/{UNIT}.service", mode="644", tool=TOOL, config=CONFIG,
                            state_dir=STATE_DIR),
             files.template(jinja_env_kwargs=JINJA, name=f"Write {UNIT}.timer (every {settings.watch_interval} s)",
                            src=str(TEMPLATES / "watch.timer.j2"), dest=f"{UNIT_DIR}/{UNIT}.timer", mode="644",
                            interval=settings.watch_interval)]
    systemd.daemon_reload(name="Reload systemd (the watch's units changed)",
                          _if=lambda: any(op.did_change() for op in units))
    systemd.service(name=f"Run {UNIT}.timer (and at boot)", service=f"{UNIT}.timer", running=True, enabled=True)
    # A first run now, as the timer's would be: a watch that cannot run fails the deploy.
    server.shell(name=f"Run the watch once and restart {UNIT}.timer (its units or settings changed)",
                 commands=[f"systemctl start {UNIT}.service", f"systemctl restart {UNIT}.timer"],
                 _if=lambda: any(op.did_change() for op in [*units, *changed]))
