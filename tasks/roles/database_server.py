"""The `db_servers` host: only PostgreSQL, for the apps of the app servers that
have `database: postgresql` (docs/database.md). It listens on its private address
with TLS (a self-signed certificate made here, which the app servers verify);
pg_hba.conf lets each app's role reach its own database only from the app servers'
private addresses, over TLS; nftables drops every other connection to the port.
Each app's password is made here, root-only; the app servers fetch it at execution
time (tasks/steps/database.py's hand_over)."""

from __future__ import annotations

from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import topology
from tasks.steps import database, firewall
from tasks.config.inventory import load_apps


class Client(NamedTuple):
    """An app server whose apps use the db server."""
    name: str
    address: str  # its private address, the one pg_hba.conf and the firewall let in
    apps: list  # its apps with a database here


def clients(db) -> list[Client]:
    """Every app server of the inventory whose apps use the db server."""
    found = []
    for app_server in topology.app_servers(db):
        # Their addresses and databases are read; their secrets are their own deploys' business.
        apps = [app for app in load_apps(app_server, secrets=False) if app.database and app.database_host]
        if not apps:
            continue
        address = apps[0].private_address  # the host's, in every app's settings
        if not address:
            raise topology.TopologyError(
                f"App server {app_server.name!r} has no private_address: the database server lets in only the "
                "app servers' private addresses; nothing was changed.")
        found.append(Client(app_server.name, address, apps))
    return found


@deploy("Database server")
def converge(system, own):
    """PostgreSQL for the app servers' apps; `own` is the db server's own app (its
    private_address and apt settings)."""
    found = clients(host)
    wanted = list({app.app_name: app for client in found for app in client.apps}.values())
    if not wanted:
        return
    # The firewall is loaded before PostgreSQL (re)starts on its private address.
    database.install(system, wanted, listen=(own.private_address, [(client.name, client.address, app.database_name)
                                                                   for client in found for app in client.apps]),
                     guard=lambda: firewall.guard_postgresql([(client.name, client.address) for client in found]))
    for app in wanted:
        database.role(app)
