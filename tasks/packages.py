"""System packages from the distribution."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

# Wait for unattended-upgrades & co. instead of failing on a held dpkg lock.
APT_LOCK_WAIT = "-o DPkg::Lock::Timeout=300"


@deploy("System packages")
def install(platform, s, app: bool = True, nginx: bool = True):
    wanted = platform.packages(app=app, nginx=nginx)
    installed = host.get_fact(DebPackages) or {}
    missing = [name for name in wanted if name not in installed]
    if not missing:
        return

    apt.update(
        name="Refresh the package index if older than apt_cache_valid_time",
        cache_time=s.apt_cache_valid_time,
    )
    apt.packages(
        name=f"Install {', '.join(missing)}",
        packages=wanted,
        no_recommends=True,
        extra_install_args=APT_LOCK_WAIT,
    )
