"""The `monitoring_servers` host (docs/monitoring.md): Debian's Prometheus, scraping the
exporters of every host of the inventory (tasks/steps/metrics.py), with the rules the
product ships (templates/prometheus-rules.yml.j2), and Debian's Alertmanager sending
what fires to the same alert targets as the watch, through a relay on 127.0.0.1
(files/alert-relay.py, the watch's own delivery: a webhook with a `text` field, ntfy,
SMTP email). Prometheus and Alertmanager listen on 127.0.0.1 only.

    /etc/prometheus/prometheus.yml               scrape targets, from the inventory
    /etc/prometheus/pyinfra-flask-rules.yml      the alert rules (promtool-checked)
    /etc/prometheus/alertmanager.yml             one route, to the relay
    /etc/pyinfra-flask/monitoring/targets.json   where alerts go (root-only; a secret)
"""

from __future__ import annotations

import io

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES, render
from tasks.steps import healthcheck, packages, watch
from tasks.steps.secrets import put_secret

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
PROMETHEUS_LISTEN = "127.0.0.1:9090"
ALERTMANAGER_LISTEN = "127.0.0.1:9093"
RELAY_LISTEN = "127.0.0.1:9095"
CONFIG = "/etc/prometheus/prometheus.yml"
RULES = "/etc/prometheus/pyinfra-flask-rules.yml"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
CONFIG_DIR = "/etc/pyinfra-flask/monitoring"
TARGETS = f"{CONFIG_DIR}/targets.json"
RELAY = f"{healthcheck.INSTALL_DIR}/alert-relay.py"
RELAY_UNIT = "pyinfra-flask-alert-relay"
WATCH = f"{healthcheck.INSTALL_DIR}/watch.py"


def rules_context(s) -> dict:
    """The rules' thresholds, from the monitoring host's settings."""
    return {"alert_after": s.monitoring_alert_after, "slow": s.monitoring_slow_response,
            "error_ratio": s.monitoring_error_ratio,
            "disk_free": s.alert_disk_free, "interval": s.monitoring_interval}


def prometheus_args(s) -> str:
    return (f"--config.file={CONFIG} --storage.tsdb.retention.time={s.monitoring_retention} "
            f"--web.listen-address={PROMETHEUS_LISTEN}")


def alertmanager_args() -> str:
    # No cluster: one Alertmanager, nothing listening for peers.
    return (f"--config.file={ALERTMANAGER_CONFIG} --web.listen-address={ALERTMANAGER_LISTEN} "
            "--cluster.listen-address=")


@deploy("Monitoring")
def install(s, host_name: str, jobs: dict, targets: dict):
    """Prometheus scraping `jobs` ({job: [Target]}), Alertmanager and the relay to `targets`
    (the watch's targets.json, tasks/steps/watch.py's `targets`)."""
    # The relay is a Python script: a bare server (this host runs no app) may have no python3.
    packages.install_named(s, [PROMETHEUS, ALERTMANAGER, "python3"])
    for path in (healthcheck.INSTALL_DIR,):
        files.directory(name=f"Create {path}", path=path, user="root", group="root", mode="755")
    files.directory(name=f"Create {CONFIG_DIR} (root-only)", path=CONFIG_DIR, user="root", group="root", mode="700")
    relay = [
        files.put(name="Install the watch's alert delivery (used by the relay)", src=str(REPO_ROOT / "files/watch.py"),
                  dest=WATCH, user="root", group="root", mode="644"),
        files.put(name="Install the alert relay", src=str(REPO_ROOT / "files/alert-relay.py"), dest=RELAY,
                  user="root", group="root", mode="644"),
        put_secret(name=f"Write where alerts go ({TARGETS}, root-only)", src=watch._json(targets).encode(),
                   dest=TARGETS),
        files.template(jinja_env_kwargs=JINJA, name=f"Write {RELAY_UNIT}.service",
                       src=str(TEMPLATES / "alert-relay.service.j2"), dest=f"/etc/systemd/system/{RELAY_UNIT}.service",
                       mode="644", relay=RELAY, targets=TARGETS, host_name=host_name, listen=RELAY_LISTEN),
    ]
    systemd.daemon_reload(name="Reload systemd (the relay's unit changed)", _if=relay[-1].did_change)
    server.shell(name=f"Restart {RELAY_UNIT} (it or its targets changed)",
                 commands=[f"systemctl reset-failed {RELAY_UNIT}.service || true",
                           f"systemctl restart {RELAY_UNIT}.service"],
                 _if=lambda: any(op.did_change() for op in relay))
    systemd.service(name=f"Keep {RELAY_UNIT} running and started at boot", service=f"{RELAY_UNIT}.service",
                    running=True, enabled=True)

    rules = files.put(name=f"Write the alert rules ({RULES})",
                      src=io.StringIO(render("prometheus-rules.yml.j2", **rules_context(s))), dest=RULES,
                      user="root", group="root", mode="644")
    config = files.put(name=f"Write Prometheus's scrape targets ({CONFIG}, from the inventory)",
                       src=io.StringIO(render("prometheus.yml.j2", interval=s.monitoring_interval, jobs=jobs,
                                              rules=RULES, alertmanager=ALERTMANAGER_LISTEN)),
                       dest=CONFIG, user="root", group="root", mode="644")
    manager = files.put(name=f"Write Alertmanager's route ({ALERTMANAGER_CONFIG}, to the relay)",
                        src=io.StringIO(render("alertmanager.yml.j2", relay=RELAY_LISTEN,
                                               interval=s.monitoring_interval)),
                        dest=ALERTMANAGER_CONFIG, user="root", group="root", mode="644")
    for package, args, changed in ((PROMETHEUS, prometheus_args(s), [config, rules]),
                                   (ALERTMANAGER, alertmanager_args(), [manager])):
        defaults = files.template(jinja_env_kwargs=JINJA, name=f"Set {package}'s command line (/etc/default/{package})",
                                  src=str(TEMPLATES / "exporter-default.j2"), dest=f"/etc/default/{package}",
                                  mode="644", package=package, args=args, env={})
        check = (f"promtool check config {CONFIG}" if package == PROMETHEUS
                 else f"amtool check-config {ALERTMANAGER_CONFIG}")
        # Checked before it is loaded: a bad file is a failed deploy, the running one keeps going.
        server.shell(name=f"Check and restart {package} (its command line changed)",
                     commands=[check, f"systemctl restart {package}"], _if=defaults.did_change)
        server.shell(name=f"Check and reload {package} (its configuration changed)",
                     commands=[check, f"systemctl reload {package}"],
                     _if=lambda changed=changed, defaults=defaults: (any(op.did_change() for op in changed)
                                                                     and not defaults.did_change()))
        systemd.service(name=f"Keep {package} running and started at boot", service=package, running=True,
                        enabled=True)
