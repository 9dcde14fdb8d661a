"""The `monitoring_servers` host: only Prometheus and Alertmanager (docs/monitoring.md),
scraping every host of the inventory, and the exporters of every host that has one
(tasks/steps/metrics.py), each reachable from the monitoring host alone."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import host as hosts
from tasks.config import inventory
from tasks.steps import database, metrics, monitoring, watch


def runs_postgresql(role: str, apps) -> bool:
    return role == hosts.DATABASE_SERVER or (role == hosts.APP_SERVER and bool(database.local(apps)))


def redis_here(inventory_host, role: str, apps) -> list:
    """The apps whose Redis runs on this host: an app server's own (`redis` without a
    db server), or on the db server those of every app server."""
    if role == hosts.APP_SERVER:
        return [app for app in apps if app.redis and not app.redis_host]
    return inventory.redis_served(inventory_host) if role == hosts.DATABASE_SERVER else []


def scraped(inventory_host) -> list[tuple[str, str, bool, list[str], bool]]:
    """(name, private address, runs nginx, apps with their own Redis, runs PostgreSQL) of
    every host of the inventory, in its order. Their addresses, roles and apps are read; their secrets are
    their own deploys' business."""
    found = []
    for other in inventory_host.inventory:
        apps = inventory.load_apps(other, secrets=False)
        role = hosts.role(other)
        found.append((other.name, apps[0].private_address,
                      metrics.runs_nginx(role == hosts.BALANCER, role == hosts.APP_SERVER, apps[0]),
                      [app.app_name for app in redis_here(other, role, apps)],
                      runs_postgresql(role, apps)))
    return found


@deploy("Monitoring server")
def converge(system, own):
    """`own`: the monitoring host's own settings (the rules' thresholds, the alert targets)."""
    monitoring.install(own, host.name, metrics.scrape_targets(scraped(host)), watch.targets(own))


@deploy("Metrics")
def exporters(this):
    """This host's exporters (every host of an inventory with a monitoring host): `this`
    is tasks/config/host.py's Host."""
    found = inventory.monitoring(host)
    if found is None:
        metrics.remove()
        return
    name, monitor = found
    metrics.install(this.settings, nginx=metrics.runs_nginx(this.is_balancer, this.is_app_server, this.settings),
                    monitor=(name, monitor.private_address), interval=monitor.monitoring_interval,
                    apps=this.apps, app_server=this.is_app_server, postgres=runs_postgresql(this.role, this.apps),
                    redis=redis_here(host, this.role, this.apps))
