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
    # "debian" (apt) or "rhel" (dnf; SELinux and firewalld handled when present).
    family: str = "debian"
    nginx_packages: tuple[str, ...] = ("nginx",)
    # python3 runs the health check (files/healthcheck.py) on every host.
    base_packages: tuple[str, ...] = ("curl", "ca-certificates", "logrotate", "python3")
    # Packages only EPEL has: installing one of them installs epel-release first.
    epel_packages: tuple[str, ...] = ()
    # What guards uWSGI's TCP socket on app servers behind balancers (tasks/steps/firewall.py):
    # nft, for our own table (RHEL's firewalld, when it runs, is used instead).
    firewall_packages: tuple[str, ...] = ("nftables",)
    # What certbot's venv needs on a host with ACME sites (tasks/steps/acme.py).
    acme_packages: tuple[str, ...] = ("python3-venv",)
    nginx_user: str = "www-data"
    # Where site files go; the directory of links nginx includes (Debian's
    # sites-enabled), or None where nginx includes the site directory itself
    # (conf.d); and the distribution's default site to disable, if any.
    nginx_site_dir: str = "/etc/nginx/sites-available"
    nginx_enabled_dir: str | None = "/etc/nginx/sites-enabled"
    nginx_default_site: str | None = "/etc/nginx/sites-enabled/default"
    # The file whose own `server` blocks are the distribution's default site
    # (RHEL writes it into nginx.conf), disabled in place: see tasks/steps/default_server.py.
    nginx_default_server_in: str | None = None

    def site_path(self, name: str) -> str:
        return f"{self.nginx_site_dir}/{name}.conf"

    def enabled_path(self, name: str) -> str | None:
        return f"{self.nginx_enabled_dir}/{name}.conf" if self.nginx_enabled_dir else None

    def packages(self, app: bool, nginx: bool, acme: bool = False) -> list[str]:
        # An app server without nginx of its own is one behind load balancers: its
        # uWSGI listens on TCP, behind the firewall.
        behind_balancer = app and not nginx
        return list(dict.fromkeys([
            *self.base_packages, *(self.app_packages if app else ()), *(self.nginx_packages if nginx else ()),
            *(self.firewall_packages if behind_balancer else ()), *(self.acme_packages if acme and nginx else ())]))


# uWSGI compiles on `pip install`, so it needs a compiler, Python's headers and the
# PCRE headers (without them it builds without internal routing). Debian 13 no
# longer ships the old libpcre3 and Ubuntu 24.04 keeps it only in universe; uWSGI
# 2.0.22+ builds against PCRE2 instead. OpenSSL's headers give uWSGI the SHA1 its
# WebSocket handshake needs.
_DEBIAN_APP = ("python3-venv", "python3-dev", "build-essential", "libssl-dev")
# RHEL 9's rebuilds have all of it in BaseOS and AppStream (nginx included), so
# nothing needs EPEL. Their nginx includes conf.d/*.conf itself, runs as `nginx`,
# and has its default site inside nginx.conf. `python3 -m venv` is part of python3
# there; semanage (policycoreutils-python-utils) labels what SELinux must allow.
_RHEL9 = {
    "family": "rhel",
    "app_packages": ("python3-devel", "gcc", "pcre2-devel", "openssl-devel"),
    "base_packages": ("curl", "ca-certificates", "logrotate", "policycoreutils-python-utils", "python3"),
    "nginx_user": "nginx",
    "nginx_site_dir": "/etc/nginx/conf.d",
    "nginx_enabled_dir": None,
    "nginx_default_site": None,
    "nginx_default_server_in": "/etc/nginx/nginx.conf",
    "acme_packages": (),
}
# Keyed by pyinfra's LinuxDistribution name and major version, or name, major and
# minor where only some minor releases are supported (Ubuntu's LTS are .04).
SUPPORTED = {
    ("Debian", 12): Platform("Debian 12 (bookworm)", _DEBIAN_APP + ("libpcre3-dev",)),
    ("Debian", 13): Platform("Debian 13 (trixie)", _DEBIAN_APP + ("libpcre2-dev",)),
    ("Ubuntu", 22, 4): Platform("Ubuntu 22.04 LTS (jammy)", _DEBIAN_APP + ("libpcre3-dev",)),
    ("Ubuntu", 24, 4): Platform("Ubuntu 24.04 LTS (noble)", _DEBIAN_APP + ("libpcre2-dev",)),
    ("Rocky Linux", 9): Platform("Rocky Linux 9", **_RHEL9),
    ("AlmaLinux", 9): Platform("AlmaLinux 9", **_RHEL9),
}


class UnsupportedSystem(DeployError):
    pass


def detect(host) -> Platform:
    distro = host.get_fact(LinuxDistribution) or {}
    name, major, minor = distro.get("name"), distro.get("major"), distro.get("minor")
    platform = SUPPORTED.get((name, major, minor)) or SUPPORTED.get((name, major))
    if platform is None:
        version = (distro.get("release_meta") or {}).get("VERSION_ID") or ".".join(
            str(part) for part in (major, minor) if part is not None
        )
        found = f"{name or 'an unknown system'} {version}".rstrip()
        supported = ", ".join(p.name for p in SUPPORTED.values())
        raise UnsupportedSystem(
            f"Host {host.name!r} runs {found}, which this deploy does not support "
            f"(supported: {supported}); nothing was changed."
        )
    return platform
