"""What differs between the systems we deploy to, chosen from the host's facts."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution


@dataclass(frozen=True)
class Platform:
    name: str
    # What an app server needs to build and run uWSGI, and what nginx needs.
    app_packages: tuple[str, ...]
    nginx_packages: tuple[str, ...] = ("nginx",)
    base_packages: tuple[str, ...] = ("curl", "ca-certificates", "logrotate")
    nginx_user: str = "www-data"
    # Where site files go; the directory of links nginx includes (Debian's
    # sites-enabled), or None where nginx includes the site directory itself
    # (conf.d); and the distribution's default site to disable, if any.
    nginx_site_dir: str = "/etc/nginx/sites-available"
    nginx_enabled_dir: str | None = "/etc/nginx/sites-enabled"
    nginx_default_site: str | None = "/etc/nginx/sites-enabled/default"

    def site_path(self, name: str) -> str:
        return f"{self.nginx_site_dir}/{name}.conf"

    def enabled_path(self, name: str) -> str | None:
        return f"{self.nginx_enabled_dir}/{name}.conf" if self.nginx_enabled_dir else None

    def packages(self, app: bool, nginx: bool) -> list[str]:
        return [*self.base_packages, *(self.app_packages if app else ()), *(self.nginx_packages if nginx else ())]


# uWSGI compiles on `pip install`, so it needs a compiler, Python's headers and the
# PCRE headers (without them it builds without internal routing). Debian 13 no
# longer ships the old libpcre3; uWSGI 2.0.22+ builds against PCRE2 instead.
# OpenSSL's headers give uWSGI the SHA1 its WebSocket handshake needs.
_DEBIAN_APP = ("python3", "python3-venv", "python3-dev", "build-essential", "libssl-dev")
SUPPORTED = {
    ("Debian", 12): Platform("Debian 12 (bookworm)", _DEBIAN_APP + ("libpcre3-dev",)),
    ("Debian", 13): Platform("Debian 13 (trixie)", _DEBIAN_APP + ("libpcre2-dev",)),
}


class UnsupportedSystem(DeployError):
    pass


def detect(host) -> Platform:
    distro = host.get_fact(LinuxDistribution) or {}
    key = (distro.get("name"), distro.get("major"))
    if key not in SUPPORTED:
        supported = ", ".join(p.name for p in SUPPORTED.values())
        raise UnsupportedSystem(
            f"Host {host.name!r} runs {key[0] or 'an unknown system'} {key[1] or ''}".rstrip()
            + f", which this deploy does not support (supported: {supported}); "
            "nothing was changed."
        )
    return SUPPORTED[key]
