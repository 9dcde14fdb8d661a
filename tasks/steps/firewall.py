"""The host's firewall for what the deploy serves.

nginx's ports: opened in firewalld's default zone where firewalld runs (RHEL's
default); a stopped or absent firewalld is left alone.

uWSGI's TCP socket on app servers behind load balancers: only the balancers (by
their `private_address`) and the host itself may connect. Whoever reaches that
socket speaks the raw uwsgi protocol, which sets any CGI variable (SCRIPT_NAME,
REMOTE_ADDR, HTTP_HOST...) and, with some options, makes uWSGI load code; nginx on
the balancers is the only client meant to. Where firewalld runs, rich rules in its
default zone accept the balancers on that port (and the port is not open to anyone
else); everywhere else (Debian, Ubuntu, RHEL without firewalld) nftables gets a
table of our own, `inet pyinfra_flask`, that drops every other connection to those
ports and nothing else. It is loaded by its own systemd unit at boot, and again
after nftables.service (re)loads /etc/nftables.conf, whose usual `flush ruleset`
would drop it; that file and every other table are never touched.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server, systemd

from tasks import JINJA, TEMPLATES
from tasks.steps.uwsgi import sockets

NFT_TABLE = "inet pyinfra_flask"
NFT_DIR = "/etc/pyinfra-flask"
NFT_RULES = f"{NFT_DIR}/uwsgi-firewall.nft"
NFT_UNIT = "pyinfra-flask-firewall.service"
NFT_UNIT_PATH = f"/etc/systemd/system/{NFT_UNIT}"
NFT_DROP_IN = "/etc/systemd/system/nftables.service.d/pyinfra-flask.conf"
NFT = "/usr/sbin/nft"


class FirewalldPort(FactBase):
    """None when firewalld is not running; otherwise whether PORT/tcp is open in
    the default zone, both permanently and now, as a port or by a service (`http`)."""

    def command(self, port: int) -> str:
        return f"""
if ! command -v firewall-cmd >/dev/null 2>&1 || ! firewall-cmd --state >/dev/null 2>&1; then
    echo not-running; exit 0
fi
is_open() {{
    firewall-cmd "$@" --query-port={port}/tcp >/dev/null 2>&1 && return 0
    for service in $(firewall-cmd "$@" --list-services); do
        firewall-cmd "$@" --info-service="$service" | grep -Eq '^ *ports:(.* )?{port}/tcp( |$)' && return 0
    done
    return 1
}}
if is_open --permanent && is_open; then echo open; else echo closed; fi
"""

    def process(self, output: list[str]) -> bool | None:
        state = output[-1].strip() if output else "not-running"
        return None if state == "not-running" else state == "open"


class FirewalldAccess(FactBase):
    """None when firewalld is not running; otherwise, for the default zone, both
    permanently and now: its rich rules, and which of PORTS are open to anyone
    as plain ports. {"permanent": {"rules": [...], "open": [...]}, "runtime": ...}"""

    def command(self, ports: tuple[int, ...]) -> str:
        queries = " ".join(str(int(port)) for port in ports)
        return f"""
if ! command -v firewall-cmd >/dev/null 2>&1 || ! firewall-cmd --state >/dev/null 2>&1; then
    echo not-running; exit 0
fi
for scope in permanent runtime; do
    flag=; [ "$scope" = permanent ] && flag=--permanent
    echo "scope $scope"
    firewall-cmd $flag --list-rich-rules | sed 's/^/rule: /'
    for port in {queries}; do
        firewall-cmd $flag --query-port="$port/tcp" >/dev/null 2>&1 && echo "open: $port"
    done
done
true
"""

    def process(self, output: list[str]) -> dict | None:
        if not output or output[-1].strip() == "not-running":
            return None
        found: dict = {}
        scope = None
        for line in output:
            if line.startswith("scope "):
                scope = found.setdefault(line.split()[1], {"rules": [], "open": []})
            elif scope is not None and line.startswith("rule: rule "):
                scope["rules"].append(line.removeprefix("rule: ").strip())
            elif scope is not None and line.startswith("open: "):
                scope["open"].append(int(line.split()[1]))
        return found


@deploy("Firewall")
def open_ports(platform, s, app: bool = True, nginx: bool = True):
    """nginx's port where nginx runs, in firewalld. (uWSGI's port behind balancers
    is `guard_uwsgi`'s: open to the balancers only.)"""
    if platform.family != "rhel" or not nginx:
        return
    ports = [s.nginx_port] + ([s.tls_port] if s.tls else [])
    closed = []
    for port in ports:
        is_open = host.get_fact(FirewalldPort, port=port)
        if is_open is None:
            return
        if not is_open:
            closed.append(port)
    if closed:
        server.shell(
            name=f"Open {', '.join(f'{port}/tcp' for port in closed)} in firewalld (permanently, then reload)",
            commands=[*(f"firewall-cmd --permanent --add-port={port}/tcp" for port in closed), "firewall-cmd --reload"],
        )


def uwsgi_ports(apps) -> list[int]:
    """The TCP ports uWSGI listens on for balancers, on this app server."""
    addresses = (sockets(app) or [app.uwsgi_tcp, *([app.canary_address] if app.canary_share else [])]
                 for app in apps if app.behind_balancer and app.uwsgi_tcp)
    return sorted({int(address.rsplit(":", 1)[1]) for found in addresses for address in found})


@deploy("Firewall")
def guard_uwsgi(platform, apps, balancers: list[tuple[str, str]]):
    """Only the balancers reach uWSGI's TCP ports (see the module's docstring).
    Called before uWSGI is (re)started, so it never listens unguarded."""
    ports = uwsgi_ports(apps)
    if not ports:
        return
    if platform.family == "rhel":
        access = host.get_fact(FirewalldAccess, ports=tuple(ports))
        if access is not None:
            _firewalld(access, ports, balancers)
            return
    _nftables(ports, balancers)


@deploy("Firewall")
def remove_stale(apps):
    """On a host no longer behind balancers, our nftables table goes: called once
    uWSGI has moved back to its unix socket, so the port was never left open."""
    if not uwsgi_ports(apps) and host.get_fact(File, path=NFT_RULES):
        server.shell(
            name="Remove the uWSGI firewall (no load balancers any more, so no TCP socket)",
            commands=[f"systemctl disable --now {NFT_UNIT}",
                      f"rm -f {NFT_UNIT_PATH} {NFT_DROP_IN} {NFT_RULES}",
                      "systemctl daemon-reload"],
        )


@deploy("Firewall")
def guard_db_server(ports: list[int], clients: list[tuple[str, str]]):
    """On the db server: only the app servers (by their private address) reach
    PostgreSQL's port and the apps' Redis ports, with the same nftables table, unit
    and drop-in as uWSGI's."""
    what = " and ".join(name for name, here in (("PostgreSQL", 5432 in ports), ("Redis", set(ports) - {5432})) if here)
    _nftables(sorted(ports), clients, what=what, who="app servers")


def _nftables(ports: list[int], balancers: list[tuple[str, str]], what: str = "uWSGI",
              who: str = "balancers", table: str = NFT_TABLE, rules_path: str = NFT_RULES, unit: str = NFT_UNIT,
              drop_in: str = NFT_DROP_IN, template: str = "nftables-uwsgi.nft.j2") -> None:
    rules = files.template(
        jinja_env_kwargs=JINJA,
        name=f"Write the {what} firewall rules {rules_path} (port {', '.join(map(str, ports))}: {who} only)",
        src=str(TEMPLATES / template), dest=rules_path, mode="644",
        ports=ports, balancers=balancers, table=table, nft=NFT, what=what,
    )
    unit_path = f"/etc/systemd/system/{unit}"
    units = [
        files.template(
            jinja_env_kwargs=JINJA, name=f"Write the systemd unit {unit_path} (loads the rules at boot)",
            src=str(TEMPLATES / "pyinfra-flask-firewall.service.j2"), dest=unit_path, mode="644",
            nft=NFT, rules=rules_path, table=table, what=what,
        ),
        files.template(
            jinja_env_kwargs=JINJA, name=f"Load the {what} rules again whenever nftables.service (re)loads its ruleset"
            if what == METRICS else "Load them again whenever nftables.service (re)loads its ruleset",
            src=str(TEMPLATES / "nftables-service-drop-in.conf.j2"), dest=drop_in, mode="644",
            nft=NFT, rules=rules_path,
        ),
    ]
    systemd.daemon_reload(name=f"Reload systemd (the {what} firewall's units changed)" if what == METRICS
                          else "Reload systemd (the firewall's units changed)",
                          _if=lambda: any(op.did_change() for op in units))
    # Checked before it is loaded; loading replaces our table in one transaction.
    server.shell(
        name=f"Load the changed {what} firewall rules (nft -c first)",
        commands=[f"{NFT} -c -f {rules_path}", f"systemctl reload-or-restart {unit}"],
        _if=lambda: rules.did_change() or any(op.did_change() for op in units),
    )
    systemd.service(name=f"Keep {unit} active and started at boot", service=unit,
                    running=True, enabled=True)


# The exporters' ports (tasks/steps/metrics.py): a table, rules file, unit and drop-in of their own,
# so the uWSGI or PostgreSQL table beside it on the same host is never rewritten by it.
METRICS = "metrics"
METRICS_TABLE = "inet pyinfra_flask_metrics"
METRICS_RULES = f"{NFT_DIR}/metrics-firewall.nft"
METRICS_UNIT = "pyinfra-flask-metrics-firewall.service"
METRICS_DROP_IN = "/etc/systemd/system/nftables.service.d/pyinfra-flask-metrics.conf"


@deploy("Firewall")
def guard_metrics(ports: list[int], monitor: tuple[str, str]):
    """Only the monitoring host (by its private address) and this host itself reach the
    exporters' ports. Called before any exporter is installed: Debian starts them on
    every address at once."""
    _nftables(ports, [monitor], what=METRICS, who="the monitoring host", table=METRICS_TABLE,
              rules_path=METRICS_RULES, unit=METRICS_UNIT, drop_in=METRICS_DROP_IN,
              template="nftables-metrics.nft.j2")


def rich_rule(address: str, port: int) -> str:
    """A firewalld rich rule accepting ADDRESS on PORT/tcp, as firewalld lists it."""
    family = "ipv6" if ":" in address else "ipv4"
    return f'rule family="{family}" source address="{address}" port port="{port}" protocol="tcp" accept'


RICH_RULE_RE = re.compile(r'^rule family="ipv[46]" source address="[^"]+" port port="(\d+)" protocol="tcp" accept$')


def _firewalld(access: dict, ports: list[int], balancers: list[tuple[str, str]]) -> None:
    wanted = [rich_rule(address, port) for port in ports for _, address in balancers]
    permanent = access.get("permanent", {"rules": [], "open": []})
    runtime = access.get("runtime", {"rules": [], "open": []})
    # Accepting rules for one address on one of these ports are ours: those for
    # balancers no longer in the inventory go.
    stale = [rule for rule in permanent["rules"]
             if (match := RICH_RULE_RE.match(rule)) and int(match.group(1)) in ports and rule not in wanted]
    missing = [rule for rule in wanted if rule not in permanent["rules"]]
    # Open to anyone as a plain port (earlier versions of this deploy did that).
    opened = [port for port in ports if port in permanent["open"]]
    in_sync = (sorted(permanent["rules"]) == sorted(runtime["rules"])
               and sorted(permanent["open"]) == sorted(runtime["open"]))
    if not (stale or missing or opened) and in_sync:
        return
    commands = [
        *(f"firewall-cmd --permanent --remove-port={port}/tcp" for port in opened),
        *(f"firewall-cmd --permanent --remove-rich-rule={shlex.quote(rule)}" for rule in stale),
        *(f"firewall-cmd --permanent --add-rich-rule={shlex.quote(rule)}" for rule in missing),
        "firewall-cmd --reload",
    ]
    names = ", ".join(name for name, _ in balancers)
    server.shell(
        name=f"Let only the balancers ({names}) reach uWSGI's port {', '.join(map(str, ports))} in firewalld "
             "(rich rules, permanently, then reload)",
        commands=commands,
    )
