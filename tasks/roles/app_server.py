"""An app server: nginx (or none, behind load balancers) -> uWSGI (systemd) -> each
app of the host, every app prepared before any goes live."""

from __future__ import annotations

from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import inventory
from tasks.steps import background, database, firewall, healthcheck, logrotate, nginx, packages, release, restic, selinux, service, users, uwsgi, watch
from tasks.steps.release import Release


class Prepared(NamedTuple):
    """One app, ready to go live: what its activation is triggered by."""

    nginx_in_group: object  # nginx joining the app's group (nginx reloads), or None
    release: Release
    uwsgi_ini: object  # uWSGI's configuration (uWSGI reloads)
    unit: object  # the systemd unit (uWSGI restarts)
    workers: dict  # worker name -> its unit's op (the worker restarts)
    redis_url: list  # the ops that changed the app's REDIS_URL (its units restart)
    database_url: list  # the ops that changed the app's DATABASE_URL (its units restart)


@deploy("App server")
def converge(system, this):
    """`this`: the host (tasks/config/host.py), its apps and its host-wide settings."""
    apps = this.apps
    local_nginx = not this.settings.behind_balancer
    packages.install(system, this.settings, nginx=local_nginx)
    # One uWSGI build per version, shared by the apps that use it.
    uwsgi_builds = {version: uwsgi.install(first) for version, first in {app.uwsgi_version: app for app in apps}.items()}
    health_module = healthcheck.install()
    new_redis_passwords = background.install_redis(apps)
    database.install(system, database.local(apps))
    prepared = {}
    for app in host.loop(apps):
        prepared[app.app_name] = Prepared(
            nginx_in_group=users.create(system, app),
            # Before the release: its before-switch and migrate commands need DATABASE_URL,
            # and a Socket.IO app's check before the switch its REDIS_URL.
            database_url=database.provision(app),
            redis_url=background.redis_url(app, new_redis_passwords),
            release=release.prepare(app, alone=len(apps) == 1),
            uwsgi_ini=uwsgi.configure(app),
            unit=service.install(app),
            workers=background.install(app),
        )
        logrotate.rotate(app)
        selinux.allow(system, app, nginx=local_nginx, relabel_after=[uwsgi_builds[app.uwsgi_version]])
        firewall.open_ports(system, app, nginx=local_nginx)
    firewall.guard_uwsgi(system, apps, inventory.balancers(host))
    service.remove_stale(apps)
    background.remove_stale(apps)
    if local_nginx:
        nginx_ops = nginx.configure(system, nginx.sites_for(apps),
                                    reload_triggers=[p.nginx_in_group for p in prepared.values() if p.nginx_in_group])
    else:
        nginx_ops = nginx.remove(system, [site.name for site in nginx.sites_for(apps)])
    for app in host.loop(apps):
        ready = prepared[app.app_name]
        app_ops = release.activate(
            app, ready.release,
            restart_triggers=[op for op in (ready.unit, uwsgi_builds[app.uwsgi_version], ready.release.environment,
                                            *ready.redis_url, *ready.database_url) if op],
            reload_triggers=[ready.uwsgi_ini],
        )
        # A shipped release passed the same health gate in its own command: no second look for it.
        healthcheck.verify(app, ready.release, service_ops=[*(op for op in app_ops if op is not ready.release.shipped),
                                                            *nginx_ops, health_module])
        background.restart(app, ready.workers, activation_ops=app_ops,
                           environment_ops=[op for op in (ready.release.environment, *ready.redis_url,
                                                          *ready.database_url) if op])
        # With a backup host: the app's shared_paths backed up there (or, without, the units removed).
        restic.client(app)
    firewall.remove_stale(apps)
    # Last: no app's units use the Redis it removes any more.
    background.retire_redis(apps)
    # Once every app is live: the watch's first run sees what this run made.
    watch.install(host.name, apps, restic.watched_units(apps))
