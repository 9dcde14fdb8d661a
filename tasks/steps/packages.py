"""System packages from the distribution: apt on Debian and Ubuntu, dnf on RHEL's rebuilds."""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import apt, dnf

# Wait for unattended-upgrades & co. instead of failing on a held dpkg lock.
APT_LOCK_WAIT = "-o DPkg::Lock::Timeout=300"


class RpmMissing(FactBase):
    """The names no installed rpm provides, by rpm's own reckoning: a package
    counts as installed when something provides its name (RHEL 9's minimal
    images have curl-minimal, which provides `curl`; installing curl itself
    over it would conflict)."""

    default = list

    def command(self, packages) -> str:
        return f"rpm -q --whatprovides {' '.join(map(shlex.quote, packages))} 2>&1 || true"

    def process(self, output: list[str]) -> list[str]:
        prefix = "no package provides "
        return [line[len(prefix):].strip() for line in output if line.startswith(prefix)]


class DebInstalled(FactBase):
    """Which of these packages dpkg has installed, by the same test as pyinfra's
    `DebPackages` (status "ii", or "hi" when held), asking dpkg about these
    packages only: `dpkg -l` lists every package on the host, two processes and
    ~30 KB of output on each run, to answer for a dozen names."""

    default = set

    def command(self, packages) -> str:
        names = " ".join(map(shlex.quote, packages))
        return f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}}\\n' {names} 2>/dev/null || true"

    def process(self, output: list[str]) -> set[str]:
        return {line[4:].strip() for line in output if line[:3].strip() in ("ii", "hi")}


@deploy("System packages")
def install(platform, s, app: bool = True, nginx: bool = True):
    wanted = platform.packages(app=app, nginx=nginx, acme=s.tls_acme)
    if platform.family == "rhel":
        _dnf_install(platform, wanted)
    else:
        _apt_install(s, wanted)


def apt_ensure(app, wanted):
    """Debian packages a step needs beyond its role's (tasks/steps/hardening.py): the same
    check of what dpkg has, and the same index rule."""
    _apt_install(app, wanted)


def _apt_install(app, wanted):
    installed = host.get_fact(DebInstalled, packages=tuple(wanted))
    missing = [name for name in wanted if name not in installed]
    if not missing:
        return

    apt.update(
        name="Refresh the package index if older than apt_cache_valid_time",
        cache_time=app.apt_cache_valid_time,
    )
    apt.packages(
        name=f"Install {', '.join(missing)}",
        packages=wanted,
        no_recommends=True,
        extra_install_args=APT_LOCK_WAIT,
    )


def _dnf_install(platform, wanted):
    # dnf refreshes its metadata itself when it is older than the repositories'
    # metadata_expire, so there is no index step (and apt_cache_valid_time does
    # not apply).
    epel = [name for name in wanted if name in platform.epel_packages]
    missing = host.get_fact(RpmMissing, packages=tuple(wanted + (["epel-release"] if epel else [])))
    if not missing:
        return
    if "epel-release" in missing:
        dnf.packages(name=f"Enable EPEL (for {', '.join(epel)})", packages=["epel-release"])
        missing.remove("epel-release")
    # Only what rpm says is missing: dnf.packages' own check (`dnf repoquery`)
    # sees only the versions the repositories still carry, so a package installed
    # at an older one would count as missing and be "installed" on every run.
    if missing:
        dnf.packages(name=f"Install {', '.join(missing)}", packages=missing)


@deploy("System packages")
def install_named(s, wanted: list[str]):
    """Debian packages a role adds beside the platform's (the Prometheus exporters, ...)."""
    _apt_install(s, wanted)
