"""The `db_servers` host: only PostgreSQL and Redis, for the apps of the app servers
that have `database: postgresql` (docs/database.md) or `redis` (docs/workers.md).
PostgreSQL listens on its private address with TLS (a self-signed certificate made
here, which the app servers verify); pg_hba.conf lets each app's role reach its own
database only from the app servers' private addresses, over TLS. Each app's Redis
(its own instance, port and password) listens there too, with TLS only (a
certificate of its own, verified the same way). nftables drops every other
connection to those ports. Each app's passwords are made here, root-only; the app
servers fetch them at execution time (tasks/steps/secrets.py's url_from_server).
"""

from __future__ import annotations

from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import topology
from tasks.steps import background, database, firewall, pgbackrest
from tasks.config.inventory import backups, load_apps


class Client(NamedTuple):
    """An app server whose apps use the db server."""
    name: str
    address: str  # its private address, the one pg_hba.conf and the firewall let in
    apps: list  # its apps with a database or a Redis here


def clients(db) -> list[Client]:
    """Every app server of the inventory whose apps use the db server."""
    found = []
    for app_server in topology.app_servers(db):
        # Their addresses and databases are read; their secrets are their own deploys' business.
        apps = [app for app in load_apps(app_server, secrets=False) if (app.database and app.database_host)
                or (app.redis and app.redis_host)]
        if not apps:
            continue
        address = apps[0].private_address  # the host's, in every app's settings
        if not address:
            raise topology.TopologyError(
                f"App server {app_server.name!r} has no private_address: the database server lets in only the "
                "app servers' private addresses; nothing was changed.")
        found.append(Client(app_server.name, address, apps))
    return found


def redis_ports(db, apps) -> dict[int, str]:
    """{port: app} of the apps' Redis on the db server `db`; two apps on one port, or
    one on PostgreSQL's, are refused naming both."""
    ports: dict[int, str] = {}
    for app in apps:
        taken = ports.get(app.redis_port) or ("PostgreSQL" if app.redis_port == 5432 else None)
        if taken:
            raise topology.TopologyError(
                f"redis_port = {app.redis_port}: {app.app_name}'s Redis on db server {db.name!r} would be on the "
                f"port of {taken}; set redis_port for one of them; nothing was changed.")
        ports[app.redis_port] = app.app_name
    return ports


@deploy("Database server")
def converge(system, own):
    """PostgreSQL and Redis for the app servers' apps; `own` is the db server's own
    app (its private_address and apt settings)."""
    found = clients(host)
    databases = list({app.app_name: app for client in found for app in client.apps if app.database}.values())
    caches = list({app.app_name: app for client in found for app in client.apps if app.redis}.values())
    if not databases and not caches:
        return
    ports = [*([5432] if databases else []), *redis_ports(host, caches)]
    guard = lambda: firewall.guard_db_server(ports, [(client.name, client.address) for client in found])  # noqa: E731
    # With a backup host, every WAL segment goes there (pgBackRest, docs/backups.md).
    repository = backups(host)
    archive = (pgbackrest.archive_command(), own.pgbackrest_archive_timeout) if repository else None
    # The firewall is loaded before PostgreSQL (re)starts on its private address.
    if databases:
        database.install(system, databases, listen=(own.private_address, [
            (client.name, client.address, app.database_name) for client in found for app in client.apps
            if app.database]), guard=guard, archive=archive)
        for app in databases:
            database.role(app)
        if repository:
            pgbackrest.database_side(host.inventory.get_host(repository[0]), repository[1].private_address,
                                     pgbackrest.pg_path(host))
    # ... and before any Redis listens there.
    background.serve_redis(caches, own.private_address, guard=None if databases else guard)
