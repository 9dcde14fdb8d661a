"""firewalld on RHEL-family hosts: the ports this host serves, opened where
firewalld runs (RHEL's default); a stopped or absent firewalld is left alone."""

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server


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


@deploy("Firewall")
def open_ports(platform, s, app: bool = True, nginx: bool = True):
    """nginx's port where nginx runs; uWSGI's where it listens for the balancers."""
    if platform.family != "rhel":
        return
    ports = ([s.nginx_port] + ([s.tls_port] if s.tls else [])) if nginx else []
    if app and s.behind_balancer:
        ports.append(int(s.uwsgi_tcp.rsplit(":", 1)[1]))
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
