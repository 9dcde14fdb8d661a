"""The apps of each host of the inventory: its data validated app by app
(tasks/config/app.py), placed by the host's groups (tasks/config/topology.py) and checked
against each other (tasks/config/checks.py); and what a host must know of the others.

One app: the settings are the data's top-level keys. Several: `apps` is a list of
dicts, one per app, each over the top-level keys (shared defaults).
"""

from __future__ import annotations

from tasks.config import checks, topology
from tasks.config.app import App, validate
from tasks.config.settings import SettingsError
from tasks.steps.uwsgi import sockets


def load_apps(host, secrets: bool = True) -> list[App]:
    """The apps of a pyinfra host, from its inventory, group and --data data, with
    the defaults its place in the inventory implies (secrets=False: the app's
    environment unread, for ops.py, see checks.check)."""
    data = host.data.dict()
    apps = data.pop("apps", None)
    where = f"settings for host {host.name!r}"
    if apps is None:
        found = [topology.place(host, validate(data, where=where, secrets=secrets))]
    elif not isinstance(apps, list) or not apps or not all(isinstance(app, dict) for app in apps):
        raise SettingsError.listing(where, [f"apps = {apps!r}: must be a non-empty list of dicts, one per app"])
    else:
        found, problems = [], []
        for index, app in enumerate(apps):
            try:
                found.append(topology.place(host, validate(
                    {**data, **app}, where=f"{where}, apps[{index}] ({app.get('app_name', '?')})",
                    secrets=secrets)))
            except SettingsError as exc:
                problems.append(str(exc))
        if problems:
            raise SettingsError("\n".join(problems))
    problems = checks.apps_apart(found, login=data.get("ssh_user"))
    if problems:
        raise SettingsError.listing(where, problems)
    return found


def upstreams(host, app_name: str) -> list[tuple[str, str]]:
    """(app server name, uWSGI address) of the app `app_name` on every app server a
    balancer spreads over."""
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
        if app.socketio:
            # Every Socket.IO instance of every server: the balancer keeps each
            # client on one of them (templates/nginx-balancer.conf.j2).
            found += [(f"{app_server.name} instance {n}", address)
                      for n, address in enumerate(sockets(app, server=app_server), 1)]
        else:
            found.append((app_server.name, app.uwsgi_tcp))
    return found


def balancers(host) -> list[tuple[str, str]]:
    """(balancer name, private address) of every load balancer of the inventory: the
    only hosts an app server's firewall lets reach uWSGI. Each balancer's settings are
    validated here too, so a balancer without its address stops the run even when
    `--limit` leaves the balancers out."""
    return [(balancer.name, load_apps(balancer)[0].private_address)
            for balancer in topology.members(host, topology.LB_GROUP)]
