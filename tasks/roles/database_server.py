"""The `db_servers` host: only PostgreSQL, for the apps of the app servers that
have `database: postgresql` (docs/database.md). It listens on its private address
with TLS (a self-signed certificate made here, which the app servers verify);
pg_hba.conf lets each app's role reach its own database only from the app servers'
private addresses, over TLS; nftables drops every other connection to the port.
Each app's password is made here, root-only; the app servers fetch it at execution
time (tasks/steps/database.py's hand_over)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import topology
from tasks.steps import database, firewall
from tasks.config.inventory import load_apps


def clients(db) -> list[tuple[str, str, list]]:
    """(app server name, its private address, its apps with a database here) of
    every app server of the inventory whose apps use the db server."""
    found = []
    for app_server in topology.app_servers(db):
        # Their addresses and databases are read; their secrets are their own deploys' business.
        apps = [s for s in load_apps(app_server, secrets=False) if s.database and s.database_host]
        if not apps:
            continue
        if not apps[0].private_address:
            raise topology.TopologyError(
                f"App server {app_server.name!r} has no private_address: the database server lets in only the "
                "app servers' private addresses; nothing was changed.")
        found.append((app_server.name, apps[0].private_address, apps))
    return found


@deploy("Database server")
def converge(system, own):
    """PostgreSQL for the app servers' apps; `own` is the db server's own app (its
    private_address and apt settings)."""
    found = clients(host)
    wanted = list({s.app_name: s for _, _, apps in found for s in apps}.values())
    if not wanted:
        return
    # The firewall is loaded before PostgreSQL (re)starts on its private address.
    database.install(system, wanted, listen=(own.private_address, [(name, address, s.database_name)
                                                                   for name, address, apps in found for s in apps]),
                     guard=lambda: firewall.guard_postgresql([(name, address) for name, address, _ in found]))
    for s in wanted:
        database.role(s)
