"""Who does what: stand-alone app servers, app servers behind load balancers, and
the balancers, from the inventory's groups.

    app_servers     hosts running the app (any host in no group is one too)
    load_balancers  hosts running only nginx, spreading requests over app_servers
    db_servers      one host running only PostgreSQL and Redis for the app servers'
                    apps (`database: postgresql`, docs/database.md; `redis`, docs/workers.md)
    monitoring_servers  one host running only Prometheus and Alertmanager, scraping
                    every other host's exporters (docs/monitoring.md)
    backup_servers  one host holding the db server's pgBackRest repository (WAL
                    archived to it, full and differential backups taken and
                    expired by it) and the apps' restic repositories of their
                    `shared_paths` (docs/backups.md)

When the inventory has load balancers, app servers listen on TCP on their
`private_address` (uWSGI's uwsgi protocol; the balancer uses `uwsgi_pass` to
them) and run no nginx of their own; their firewall lets only the balancers,
by the balancers' own `private_address`, reach that port (tasks/steps/firewall.py).
Otherwise each app server has its own nginx and a unix socket. What a host must
know of the other hosts' apps is in tasks/config/inventory.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from pyinfra.api.exceptions import DeployError

if TYPE_CHECKING:
    from tasks.config.app import App

APP_GROUP = "app_servers"
LB_GROUP = "load_balancers"
DB_GROUP = "db_servers"
MON_GROUP = "monitoring_servers"
BACKUP_GROUP = "backup_servers"
DEFAULT_UWSGI_PORT = 3031


class TopologyError(DeployError):
    pass


def members(host, group: str) -> list:
    """The hosts of one of the inventory's groups."""
    return list(host.inventory.get_group(group, default=[]))


def is_balancer(host) -> bool:
    return LB_GROUP in host.groups


def is_database_server(host) -> bool:
    return DB_GROUP in host.groups


def is_monitoring_server(host) -> bool:
    return MON_GROUP in host.groups


def is_backup_server(host) -> bool:
    return BACKUP_GROUP in host.groups


def _only(host, group: str, why: str):
    """The one host of a group that may have only one, or None."""
    found = members(host, group)
    if len(found) > 1:
        raise TopologyError(f"{group} has {len(found)} hosts ({', '.join(h.name for h in found)}): "
                            f"{why}; nothing was changed.")
    return found[0] if found else None


def monitoring_server(host):
    """The inventory's one `monitoring_servers` host, or None."""
    return _only(host, MON_GROUP, "one monitoring host scrapes the others")


def database_server(host):
    """The inventory's one `db_servers` host, or None."""
    return _only(host, DB_GROUP, "one database server serves the app servers")


def backup_server(host):
    """The inventory's one `backup_servers` host, or None."""
    return _only(host, BACKUP_GROUP, "one backup host holds the database's and the apps' files' repositories")


def app_servers(host) -> list:
    """The app servers, in inventory order: the `app_servers` group, else every host
    that is neither a balancer nor the database server."""
    return [h for h in members(host, APP_GROUP) or host.inventory
            if not is_balancer(h) and not is_database_server(h) and not is_monitoring_server(h)
            and not is_backup_server(h)]


def behind_balancer(host) -> bool:
    return not is_balancer(host) and bool(members(host, LB_GROUP))


def place(host, app: App, database_address: Callable[[Any], str]) -> App:
    """The app with the host's role and the defaults it implies, or a TopologyError
    saying what the inventory is missing. `database_address(db)` is the private
    address of the database server `db` (read from its settings by tasks/config/inventory.py)."""
    if is_balancer(host) and APP_GROUP in host.groups:
        raise TopologyError(f"Host {host.name!r} is in both {APP_GROUP} and {LB_GROUP}: "
                            "a host is either an app server or a balancer; nothing was changed.")
    roles = [group for group in (APP_GROUP, LB_GROUP, DB_GROUP, MON_GROUP, BACKUP_GROUP) if group in host.groups]
    if DB_GROUP in roles and len(roles) > 1:
        raise TopologyError(f"Host {host.name!r} is in both {roles[0]} and {roles[1]}: a database server "
                            "runs only PostgreSQL; nothing was changed.")
    if MON_GROUP in roles and len(roles) > 1:
        raise TopologyError(f"Host {host.name!r} is in both {roles[0]} and {roles[1]}: a monitoring host "
                            "runs only Prometheus and Alertmanager; nothing was changed.")
    if BACKUP_GROUP in roles and len(roles) > 1:
        raise TopologyError(f"Host {host.name!r} is in both {roles[0]} and {roles[1]}: the backup host holds the "
                            "only copy that survives the others, so it runs nothing else; nothing was changed.")
    if is_backup_server(host):
        if not app.private_address:
            raise TopologyError(f"Backup host {host.name!r} has no private_address: set it to the address the "
                                "database server and the app servers reach it on over SSH; nothing was changed.")
        return app
    monitor = monitoring_server(host)
    if monitor is not None and not app.private_address:
        raise TopologyError(f"Host {host.name!r} has no private_address: with a {MON_GROUP} host every host "
                            "serves its metrics on its private address, to the monitoring host only; nothing "
                            "was changed.")
    if is_monitoring_server(host):
        return app
    db = database_server(host)
    if is_database_server(host):
        if not app.private_address:
            raise TopologyError(f"Database server {host.name!r} has no private_address: set it to the address "
                                "the app servers reach PostgreSQL on; nothing was changed.")
        return app
    if db is not None and app.database == "postgresql":
        # The database is the db server's: reached over TLS on its private address.
        app = replace(app, database_host=database_address(db))
    if db is not None and app.redis:
        # So is its Redis: one for every app server, over TLS on the same address.
        app = replace(app, redis_host=database_address(db))
    if is_balancer(host) and not app.private_address:
        raise TopologyError(
            f"Balancer {host.name!r} has no private_address: set it to the address the app servers "
            "see its connections come from (only the balancers may reach their uWSGI); nothing was changed."
        )
    # In inventory order: the `app_servers` group, else every host that is no balancer.
    servers = [h.name for h in app_servers(host)]
    if app.jobs_host is not None:
        if app.jobs_host not in servers:
            raise TopologyError(f"jobs_host = {app.jobs_host!r}: not an app server of the inventory "
                                f"({', '.join(servers)}); nothing was changed.")
        app = replace(app, runs_jobs=host.name == app.jobs_host)
    if app.migrations_host is not None:
        if app.migrations_host not in servers:
            raise TopologyError(f"migrations_host = {app.migrations_host!r}: not an app server of the inventory "
                                f"({', '.join(servers)}); nothing was changed.")
        app = replace(app, runs_migrations=host.name == app.migrations_host)
    if not behind_balancer(host):
        return app
    if app.jobs_host is None:
        # Behind balancers the app servers serve one site: one of them runs the jobs.
        app = replace(app, runs_jobs=host.name == servers[0])
    if app.migrations_host is None:
        # ... and share one database: one of them migrates it, before any switches.
        app = replace(app, runs_migrations=host.name == servers[0])
    if app.database == "postgresql" and not app.database_host and len(servers) > 1:
        raise TopologyError(f"database = 'postgresql': the database is local to each app server, but the "
                            f"{len(servers)} app servers behind the balancers serve one site and would each "
                            "keep their own data; use one shared database (a db_servers host, or its DATABASE_URL "
                            "in app_env_file) or one app server; nothing was changed.")
    if app.redis and not app.redis_host and (app.workers or app.socketio) and len(servers) > 1:
        what = "with workers on every one" if app.workers else "and a Socket.IO broadcast would reach only the " \
            "clients of one server"
        raise TopologyError(f"redis = True: Redis is local to each app server (127.0.0.1), but the "
                            f"{len(servers)} app servers behind the balancers would each enqueue to and read from "
                            f"their own, {what}; add a {DB_GROUP} host (every app server's Redis is there), use "
                            "one shared broker (redis off, its URL in app_env_file) or one app server; "
                            "nothing was changed.")
    if app.settings.uwsgi_socket is None:
        if not app.private_address:
            raise TopologyError(
                f"Host {host.name!r} is an app server behind a load balancer: set its "
                "private_address (the address the balancer reaches it on), or uwsgi_socket; "
                "nothing was changed."
            )
        address = f"[{app.private_address}]" if ":" in app.private_address else app.private_address
        return replace(app, behind_balancer=True, uwsgi_socket=f"{address}:{DEFAULT_UWSGI_PORT}")
    if not app.uwsgi_tcp or app.uwsgi_tcp.startswith(("127.", "localhost:", "[::1]:")):
        raise TopologyError(
            f"Host {host.name!r} is behind a load balancer, so uWSGI must listen on an "
            f"address the balancer reaches, not uwsgi_socket={app.uwsgi_socket!r}; nothing was changed."
        )
    return replace(app, behind_balancer=True)
