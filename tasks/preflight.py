"""What the host itself must not already hold, checked before any operation is added:
a unit of the system's or another package's under the app's name, or an account of
someone else's under the app user's. The settings catch the well-known names
(tasks/reserved.py); this catches the ones only the host knows. Facts only: a host
that fails here is left exactly as it was, and so is every other host of the run.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError

from tasks import background
from tasks.service import MARKER


class ForeignUnit(FactBase):
    """Where a unit file of this name lies that this deploy did not write, or None."""

    def command(self, unit: str, marker: str = MARKER) -> str:
        paths = " ".join(shlex.quote(f"{d}/{unit}") for d in
                         ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"))
        return (f"for f in {paths}; do if [ -e \"$f\" ] && ! grep -q -F {shlex.quote(marker)} \"$f\" 2>/dev/null; "
                "then echo \"$f\"; break; fi; done; true")

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output else None


class ForeignAccount(FactBase):
    """The home of an existing account of this name that is not an app's of this
    deploy (its home is neither `app_root` nor another app root of ours), or None."""

    def command(self, user: str, app_root: str) -> str:
        return (f"home=$(getent passwd {shlex.quote(user)} | cut -d: -f6) && [ -n \"$home\" ] && "
                f"[ \"$home\" != {shlex.quote(app_root)} ] && [ ! -f \"$home/release-tool.json\" ] && "
                "echo \"$home\"; true")

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output else None


class ForeignName(DeployError):
    pass


def check(apps) -> None:
    problems = []
    for s in apps:
        foreign = host.get_fact(ForeignUnit, unit=s.service)
        if foreign:
            problems.append(f"app_name = {s.app_name!r}: the host already has {s.service} ({foreign}), "
                            "which this deploy did not write; name the app something else")
        # A worker's or job's units: ours only if they carry the app's background marker.
        for unit in background.wanted_units(s):
            foreign = host.get_fact(ForeignUnit, unit=unit, marker=f"{background.MARKER}{s.app_name})")
            if foreign:
                key = "workers" if unit.endswith("@.service") else "jobs"
                problems.append(f"{key}: the host already has {unit} ({foreign}), which this deploy did not "
                                f"write for {s.app_name}; name the {key[:-1]} something else")
        home = host.get_fact(ForeignAccount, user=s.app_user, app_root=s.app_root)
        if home:
            problems.append(f"app_user = {s.app_user!r}: the host already has this account (home {home}), "
                            "which is not an app's of this deploy; choose another app_user")
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ForeignName(f"Invalid settings for host {host.name!r}; nothing was changed on any host:\n{lines}")
