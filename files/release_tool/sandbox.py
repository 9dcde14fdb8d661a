"""Running things as the app user: a transient systemd unit with the service's sandbox."""

from __future__ import annotations

import os
import secrets
import subprocess

from . import base, releases


# Running things as the app user ---------------------------------------------

def sandboxed(release: str, command: list[str], writable: list[str], venv: str | None,
              extra_env: dict | None = None, tty: bool = False) -> int:
    """Run a command as the app user in a transient systemd unit with the service's
    own sandbox, writing only to `writable`; every process it starts ends with it.
    With tty, on a pseudo-terminal of its own, connected to this one (`flask shell`)."""
    path = releases.release_dir(release)
    env = {
        "PATH": (f"{venv}/bin:" if venv else "") + "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(base.ROOT),
        "LANG": "C.UTF-8",
        "DEPLOY_RELEASE": release,
        **({"VIRTUAL_ENV": venv} if venv else {}),
        **(extra_env or {}),
        **({"TERM": os.environ.get("TERM") or "xterm"} if tty else {}),
    }
    user = base.CONFIG["user"]
    argv = [
        "systemd-run", "--wait", "--pty" if tty else "--pipe", "--collect", "--quiet", "--service-type=exec",
        f"--unit={base.CONFIG['app']}-release-{secrets.token_hex(4)}",
        f"--description=release {release} of {base.CONFIG['app']}: a step as {user}",
        "-p", f"User={user}", "-p", f"Group={user}", "-p", f"WorkingDirectory={path}",
        # The app's environment as its units have it (secrets, REDIS_URL, ...), read by
        # systemd (never on a command line).
        *[arg for path in base.CONFIG["environment_files"] for arg in ("-p", f"EnvironmentFile=-{path}")],
        *[arg for prop in base.CONFIG["sandbox"] for arg in ("-p", prop)],
        # /run/<app> is the running service's (its socket, FIFO, stats): a step never
        # writes there, nor anywhere in /run (which ProtectKernelTunables= and
        # ProtectControlGroups= can leave writable, as seen on the test hosts).
        "-p", "ReadOnlyPaths=/run",
        *[arg for where in writable for arg in ("-p", f"ReadWritePaths=-{where}")],
        *[f"--setenv={key}={value}" for key, value in env.items()],
        "--", *command,
    ]
    return subprocess.run(argv, stdin=None if tty else subprocess.DEVNULL).returncode


def in_release(release: str, command: list[str], extra_env: dict | None = None, tty: bool = False) -> int:
    """A step in a release: the venv on PATH, the shared paths writable."""
    venv = f"{releases.release_dir(release)}/.venv"
    return sandboxed(release, command, base.CONFIG["writable"], venv, extra_env, tty)
