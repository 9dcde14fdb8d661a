"""Who does what: stand-alone app servers, app servers behind load balancers, and
the balancers, from the inventory's groups.

    app_servers     hosts running the app (any host in no group is one too)
    load_balancers  hosts running only nginx, spreading requests over app_servers

When the inventory has load balancers, app servers listen on TCP on their
`private_address` (uWSGI's uwsgi protocol; the balancer uses `uwsgi_pass` to
them) and run no nginx of their own; their firewall lets only the balancers,
by the balancers' own `private_address`, reach that port (tasks/firewall.py).
Otherwise each app server has its own nginx and a unix socket.
"""

from __future__ import annotations

from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

APP_GROUP = "app_servers"
LB_GROUP = "load_balancers"
DEFAULT_UWSGI_PORT = 3031


class TopologyError(DeployError):
    pass


def _group(inventory, name: str) -> list:
    return list(inventory.get_group(name, default=[]))


def is_balancer(host) -> bool:
    return LB_GROUP in host.groups


def behind_balancer(host) -> bool:
    return not is_balancer(host) and bool(_group(host.inventory, LB_GROUP))


def place(host, s):
    """The settings with the topology's defaults applied, or a TopologyError saying
    what the inventory is missing."""
    if is_balancer(host) and APP_GROUP in host.groups:
        raise TopologyError(f"Host {host.name!r} is in both {APP_GROUP} and {LB_GROUP}: "
                            "a host is either an app server or a balancer; nothing was changed.")
    if is_balancer(host) and not s.private_address:
        raise TopologyError(
            f"Balancer {host.name!r} has no private_address: set it to the address the app servers "
            "see its connections come from (only the balancers may reach their uWSGI); nothing was changed."
        )
    if not behind_balancer(host):
        return s
    s = s.model_copy()
    s._behind_balancer = True
    if s.uwsgi_socket is None:
        if not s.private_address:
            raise TopologyError(
                f"Host {host.name!r} is an app server behind a load balancer: set its "
                "private_address (the address the balancer reaches it on), or uwsgi_socket; "
                "nothing was changed."
            )
        address = f"[{s.private_address}]" if ":" in s.private_address else s.private_address
        placed = s.model_copy(update={"uwsgi_socket": f"{address}:{DEFAULT_UWSGI_PORT}"})
        placed._behind_balancer = True
        return placed
    if not s.uwsgi_tcp or s.uwsgi_tcp.startswith(("127.", "localhost:", "[::1]:")):
        raise TopologyError(
            f"Host {host.name!r} is behind a load balancer, so uWSGI must listen on an "
            f"address the balancer reaches, not uwsgi_socket={s.uwsgi_socket!r}; nothing was changed."
        )
    return s


def upstreams(host, app_name: str, load_apps) -> list[tuple[str, str]]:
    """(app server name, uWSGI address) of the app `app_name` on every app server a
    balancer spreads over."""
    servers = _group(host.inventory, APP_GROUP)
    if not servers:
        raise TopologyError(f"Balancer {host.name!r} has no hosts in the {APP_GROUP} group; "
                            "nothing was changed.")
    found = []
    for app_server in servers:
        match = [app for app in load_apps(app_server) if app.app_name == app_name]
        if not match:
            raise TopologyError(f"Balancer {host.name!r} balances {app_name!r}, which app server "
                                f"{app_server.name!r} does not run; nothing was changed.")
        found.append((app_server.name, match[0].uwsgi_tcp))
    return found


def balancers(host, load_apps) -> list[tuple[str, str]]:
    """(balancer name, private address) of every load balancer of the inventory: the
    only hosts an app server's firewall lets reach uWSGI. Each balancer's settings are
    validated here too, so a balancer without its address stops the run even when
    `--limit` leaves the balancers out."""
    return [(balancer.name, load_apps(balancer)[0].private_address) for balancer in _group(host.inventory, LB_GROUP)]


def wait_for_app_servers() -> None:
    """A barrier: one operation that every host runs at the same point of deploy.py.

    pyinfra orders operations as a graph of each host's sequence, so a balancer's
    steps would otherwise run alongside the app servers' steps of the same depth.
    An operation called from one line on every host is a single node of that graph:
    everything after it waits for everything before it, on all hosts. It runs no
    command, so it never reports a change."""
    server.shell(name="Wait until every app server is deployed", commands=[])
