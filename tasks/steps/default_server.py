"""The default site RHEL's nginx package writes into nginx.conf itself.

On Debian the distribution's default site is a link in sites-enabled, removed
like any site. RHEL's is a `server { listen 80; listen [::]:80; server_name _; ... }`
block inside /etc/nginx/nginx.conf, after the `include conf.d/*.conf` line. Our
site in conf.d is included first, so it would already be the default server for
IPv4 -- but only as long as nobody reorders nginx.conf, and not for IPv6, where
the package's block would keep answering with its test page; some packages
(EL7's) even mark their block `default_server`, which beats ours whatever the
order. Marking our site `default_server` as well would make nginx refuse to
start there (two default servers), so the package's block is commented out in
place instead (files/nginx-default-server.py), as Debian's default site is
unlinked. rpm keeps a changed nginx.conf on upgrades (%config(noreplace)), and
a replaced one is found active and disabled again on the next run.
"""

import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.operations import server

from tasks import REPO_ROOT

SCRIPT = (REPO_ROOT / "files/nginx-default-server.py").read_text()


def _script(action: str, path: str) -> str:
    # python3 is always there on RHEL 9 (dnf is written in it).
    return f"python3 - {action} {shlex.quote(path)} <<'PYINFRA_FLASK_SCRIPT'\n{SCRIPT}PYINFRA_FLASK_SCRIPT"


class DefaultServer(FactBase):
    """Whether nginx.conf has server blocks of its own: "active", "none", or
    "missing" (nginx is not installed yet)."""

    @staticmethod
    def default() -> str:
        return "missing"

    def command(self, path: str) -> str:
        return _script("check", path)

    def process(self, output: list[str]) -> str:
        return output[-1].strip() if output else "missing"


def disable(platform) -> list:
    """The operation disabling the package's default site, if it may be active."""
    path = platform.nginx_default_server_in
    if not path or host.get_fact(DefaultServer, path=path) == "none":
        return []
    return [server.shell(
        name=f"Disable the package's default site in {path} (commented out in place)",
        commands=[_script("disable", path)],
    )]
