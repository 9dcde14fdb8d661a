"""What the host itself must not already hold, checked before any operation is added:
a unit of the system's or another package's under the app's name, or an account of
someone else's under the app user's. The settings catch the well-known names
(tasks/config/reserved.py); this catches the ones only the host knows. Facts only: a host
that fails here is left exactly as it was, and so is every other host of the run.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError

from tasks.steps import background
from tasks.steps.service import MARKER


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


class DirectoryOwner(FactBase):
    """The owner of a directory (`link` when it is a symlink, not followed), or None
    when there is none."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (f"if [ -L {quoted} ]; then echo link; elif [ -d {quoted} ]; then stat -c %U {quoted}; "
                f"elif [ -e {quoted} ]; then echo not-a-directory; fi; true")

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output else None


class ProtectedHardlinks(FactBase):
    """The kernel's fs.protected_hardlinks (1: nobody hard-links a file they may not
    read and write), or None when it cannot be read."""

    def command(self) -> str:
        return "cat /proc/sys/fs/protected_hardlinks 2>/dev/null; true"

    def process(self, output: list[str]) -> int | None:
        return int(output[0]) if output and output[0].strip().isdigit() else None


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
        if s.uwsgi_log != "journal":
            # Handed to the app user (chowned): only a new directory, or its own already.
            log_dir = s.uwsgi_log.rsplit("/", 1)[0] or "/"
            owner = host.get_fact(DirectoryOwner, path=log_dir)
            if owner not in (None, s.app_user):
                what = {"link": "is a link", "not-a-directory": "is not a directory"}.get(owner,
                                                                                      f"belongs to {owner}")
                problems.append(f"uwsgi_log of {s.app_name}: its directory {log_dir} already exists and {what}; "
                                f"the deploy would hand it to {s.app_user}; use a directory of the app's own, "
                                f"e.g. /var/log/{s.app_name}/uwsgi.log")
    # nginx's user reads files of every app's group; an app could hard-link one into
    # its static files (uploads) if the kernel let it link files it cannot read.
    if host.get_fact(ProtectedHardlinks) == 0:
        problems.append("fs.protected_hardlinks is 0 on this host: an app user could hard-link files nginx "
                        "reads (other apps' logs) into its static files; set it to 1 (sysctl) and run again")
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ForeignName(f"Invalid settings for host {host.name!r}; nothing was changed on any host:\n{lines}")
