"""A load balancer: nginx alone, spreading requests over the app servers' uWSGI
sockets (templates/nginx-balancer.conf.j2)."""

from __future__ import annotations

from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import topology
from tasks.config.inventory import load_apps
from tasks.steps import firewall, healthcheck, nginx, packages, selinux
from tasks.steps.uwsgi import sockets


class Upstream(NamedTuple):
    """One place the balancer sends an app's requests: an app server (or one of its
    Socket.IO instances), its uWSGI address and (`canary_share`) its canary instance's."""
    name: str
    address: str
    canary: str | None = None


def upstreams(host, app_name: str) -> list[Upstream]:
    """The app `app_name` on every app server a balancer spreads over."""
    servers = topology.members(host, topology.APP_GROUP)
    if not servers:
        raise topology.TopologyError(f"Balancer {host.name!r} has no hosts in the {topology.APP_GROUP} group; "
                                     "nothing was changed.")
    found = []
    for app_server in servers:
        match = [app for app in load_apps(app_server) if app.app_name == app_name]
        if not match:
            raise topology.TopologyError(f"Balancer {host.name!r} balances {app_name!r}, which app server "
                                         f"{app_server.name!r} does not run; nothing was changed.")
        app = match[0]
        if app.socketio != load_apps(host)[0].socketio:
            raise topology.TopologyError(f"socketio: {app.socketio} on app server {app_server.name!r} but not on "
                                         f"balancer {host.name!r}: set it for both (the balancer keeps Socket.IO "
                                         "clients on their instance); nothing was changed.")
        balanced = load_apps(host)[0]
        for key in ("canary_share", "canary_window"):
            if getattr(app, key) != getattr(balanced, key):
                raise topology.TopologyError(
                    f"{key}: {getattr(app, key)} on app server {app_server.name!r} but {getattr(balanced, key)} on "
                    f"balancer {host.name!r}: set the same for both (the balancers split the clients); "
                    "nothing was changed.")
        if app.socketio:
            # Every Socket.IO instance of every server: the balancer keeps each
            # client on one of them (templates/nginx-balancer.conf.j2).
            found += [Upstream(f"{app_server.name} instance {n}", address)
                      for n, address in enumerate(sockets(app, server=app_server), 1)]
        else:
            found.append(Upstream(app_server.name, app.uwsgi_tcp, app.canary_address if app.canary_share else None))
    return found


@deploy("Load balancer")
def converge(system, app):
    packages.install(system, app, app=False)
    selinux.allow(system, app, app=False)
    firewall.open_ports(system, app, app=False)
    configure(system, app, upstreams=upstreams(host, app.app_name))


@deploy("Load balancer")
def configure(platform, app, upstreams: list[Upstream]):
    # With a canary, what the balancer's release tool counts: each app server's two instances.
    canary = {"sockets": {**{u.canary: "canary" for u in upstreams}, **{u.address: "live" for u in upstreams}}} \
        if app.canary_share else None
    ops = nginx.configure(platform, [nginx.Site(app.app_name, [app])], template="nginx-balancer.conf.j2",
                          balancer_canary=canary, s=app, upstreams=upstreams)
    check = healthcheck.spec(app)
    run = healthcheck.command(check, "--host-name", host.name, "--role", "balancer",
                              "--error-log", app.nginx_error_log,
                              "--context", f"its upstream: {', '.join(upstream.name for upstream in upstreams)}")
    healthcheck.gate(f"Check GET {app.healthcheck_path} through the balancer answers {app.healthcheck_status}",
                     check, run, triggers=[healthcheck.install(), *ops])
