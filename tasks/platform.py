"""What differs between the systems we deploy to, chosen from the host's facts."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution


@dataclass(frozen=True)
class Platform:
    name: str
    packages: tuple[str, ...]
    nginx_user: str = "www-data"
    nginx_sites_available: str = "/etc/nginx/sites-available"
    nginx_sites_enabled: str = "/etc/nginx/sites-enabled"


# uWSGI compiles on `pip install`, so it needs a compiler, Python's headers and the
# PCRE headers (without them it builds without internal routing). Debian 13 no
# longer ships the old libpcre3; uWSGI 2.0.22+ builds against PCRE2 instead.
_DEBIAN_BASE = (
    "python3", "python3-venv", "python3-dev", "build-essential",
    "nginx", "curl", "ca-certificates",
)
SUPPORTED = {
    ("Debian", 12): Platform("Debian 12 (bookworm)", _DEBIAN_BASE + ("libpcre3-dev",)),
    ("Debian", 13): Platform("Debian 13 (trixie)", _DEBIAN_BASE + ("libpcre2-dev",)),
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
