"""`ops.py run -- COMMAND`: a command in the live release, as the app's own steps run.

On the host, `release-tool exec` runs it in a transient systemd unit as the app
user, in the live release's directory, with its venv on PATH, the app's
environment files (app_env_file/app_env_from, REDIS_URL: read by systemd, never on
a command line) and the service's sandbox (files/release_tool/sandbox.py). The
words after `--` are joined with spaces and run by /bin/sh there, as ssh does.

Without --tty the output comes back through pyinfra's connection, each line
prefixed with its host, and the exit status is the command's (the release tool
says `exit status N` on stderr when it is not 0). With --tty (one host only) it
is an interactive SSH session: pyinfra's connections carry no terminal, so the
`ssh -t` command line is built from the host's connection data (`ssh_argv`) and
the release tool runs the command on a pseudo-terminal (`systemd-run --pty`).
"""

from __future__ import annotations

import re
import shlex

from tasks import tool as host_tool
from tasks.config.app import App
from tasks.ops.fleet import FleetError

EXIT_STATUS = re.compile(r"^exit status (\d+)$")


def exec_command(app: App, words: tuple[str, ...] | list[str], tty: bool = False) -> str:
    return host_tool.execute(host_tool.path(app.app_root), " ".join(words), tty)


def exit_status(ok: bool, stderr: list[str]) -> int:
    """The command's exit status, from what the release tool said (1 when it failed
    without saying: the release tool's own error, or the connection)."""
    if ok:
        return 0
    for line in reversed(stderr):
        found = EXIT_STATUS.match(line.strip())
        if found:
            return int(found.group(1)) or 1
    return 1


def ssh_argv(host, remote: str) -> list[str]:
    """`ssh -t` to the host as pyinfra connects to it (its ssh_* data), running
    `remote` (through sudo when the host is reached with `_sudo`)."""
    name = host.name
    if name.startswith("@") and not name.startswith("@ssh/"):
        raise FleetError(f"--tty: {name} is not reached over SSH (only SSH hosts can get a terminal)")
    data = host.data
    target = data.get("ssh_hostname") or name.split("/", 1)[-1]
    argv = ["ssh", "-t"]
    if data.get("ssh_port"):
        argv += ["-p", str(data.get("ssh_port"))]
    if data.get("ssh_key"):
        argv += ["-i", str(data.get("ssh_key"))]
    if data.get("ssh_user"):
        argv += ["-l", str(data.get("ssh_user"))]
    if data.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={data.get('ssh_known_hosts_file')}"]
    strict = data.get("ssh_strict_host_key_checking")
    if strict:
        argv += ["-o", f"StrictHostKeyChecking={strict}"]
    if data.get("_sudo"):  # the release tool runs as root; sudo may ask for a password on the terminal
        remote = shlex.join(["sudo", "-H", "--", "sh", "-c", remote])
    return [*argv, "--", str(target), remote]
