"""A bare server made safe (`harden`, docs/hardening.md): SSH by key only, fail2ban on
SSH, security updates, swap, time, the journal's size, a sysctl baseline; and an
admin user with sudo, for a server the deploy first reaches as root. Every piece is
Debian's own engine, configured by a file of ours beside the distribution's.

What the settings mean (who may log in as root, the admin key, the refusals that keep
the deploy from locking itself out) is tasks/config/hardening.py. Here: a changed sshd
config is kept only once `sshd -t` passes, sshd's effective config says what ours
says, and a second, fresh SSH connection made the way the inventory makes its own
succeeds; anything less puts the last good config back, reloads sshd, and stops the
run for the host.
"""

from __future__ import annotations

import io
import shlex
import time

from paramiko import AuthenticationException, BadHostKeyException
from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.operations import files, python, server, systemd

from tasks import JINJA, TEMPLATES
from tasks.config import hardening
from tasks.steps import packages

SSHD_CONFIG = "/etc/ssh/sshd_config.d/01-pyinfra-flask.conf"
# Outside sshd_config.d, so sshd never reads it: the config last proven to let the deploy in.
SSHD_LAST_GOOD = "/etc/ssh/.pyinfra-flask-sshd.conf.last-good"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/pyinfra-flask.local"
UPGRADES_CONFIG = "/etc/apt/apt.conf.d/52pyinfra-flask-upgrades"
JOURNALD_CONFIG = "/etc/systemd/journald.conf.d/pyinfra-flask.conf"
SYSCTL_CONFIG = "/etc/sysctl.d/60-pyinfra-flask.conf"
SWAP_FILE = "/swapfile"
REBOOT_FLAG = "/run/reboot-required"

# fail2ban reads sshd's log from the journal (Debian 12 has no auth.log without rsyslog),
# which needs python3-systemd, a Recommends only; it bans with nftables, Debian's firewall.
PACKAGES = ("fail2ban", "python3-systemd", "nftables", "unattended-upgrades")
# Time daemons that keep time already; systemd-timesyncd (Debian's default) would
# replace them, so it is only installed where none is.
TIME_DAEMONS = ("chrony", "ntpsec", "ntp", "openntpd", "systemd-timesyncd")
# A swap file as large as memory, within these bounds (MiB).
SWAP_MIN, SWAP_MAX = 512, 4096
# Fresh logins tried after sshd reloads (tasks/steps/hardening.py `_second_login`).
LOGIN_ATTEMPTS = 10


class SshdKept(FactBase):
    """Whether our sshd config is the one last proven to let the deploy in (false while
    a change was never proven, e.g. a run stopped between the reload and the proof)."""

    def command(self) -> str:
        return f"if cmp -s {SSHD_CONFIG} {SSHD_LAST_GOOD}; then echo kept; else echo unproven; fi"

    def process(self, output: list[str]) -> bool:
        return output == ["kept"]


class Memory(FactBase):
    """The host's memory and swap: a container (whose swap and memory are its kernel's,
    not its own to change), the active swap areas, and MemTotal in MiB."""

    def command(self) -> str:
        return ("if systemd-detect-virt --container --quiet; then echo container; fi; "
                "tail -n +2 /proc/swaps | while read -r area _; do echo \"swap $area\"; done; "
                "awk '/^MemTotal:/ {print \"memory\", int($2 / 1024)}' /proc/meminfo")

    @staticmethod
    def default() -> dict:
        # Unread: as if swap were there, so nothing is done to it.
        return {"container": False, "swap": ["(unread)"], "memory": 0}

    def process(self, output: list[str]) -> dict:
        found = {"container": False, "swap": [], "memory": 0}
        for line in output:
            kind, _, value = line.partition(" ")
            if kind == "container":
                found["container"] = True
            elif kind == "swap":
                found["swap"].append(value)
            elif kind == "memory" and value.isdigit():
                found["memory"] = int(value)
        return found


def swap_size(memory_mib: int) -> int:
    """MiB of swap for this much memory: as much, within SWAP_MIN and SWAP_MAX."""
    return max(SWAP_MIN, min(SWAP_MAX, memory_mib))


def _template(name: str, src: str, dest: str, **context):
    return files.template(name=name, src=str(TEMPLATES / src), dest=dest, user="root", group="root",
                          mode="644", jinja_env_kwargs=JINJA, **context)


@deploy("Hardening")
def converge(platform, s):
    """Every piece in turn; SSH after the admin user, who may be the next run's login."""
    if platform.family != "debian":
        raise OperationError(f"harden: supported on Debian and Ubuntu only, not {platform.name}; nothing was "
                             "changed on this host (set harden: false for it)")
    installed = host.get_fact(packages.DebInstalled, packages=TIME_DAEMONS)
    time_sync = [] if installed - {"systemd-timesyncd"} else ["systemd-timesyncd"]
    packages.apt_ensure(s, [*PACKAGES, *time_sync])
    _admin_user(s)
    _ssh(s)
    _fail2ban(s)
    _upgrades(s)
    _swap()
    if time_sync:
        # Started by its package and at boot; not by each run, as it starts nowhere its time is not its
        # own to set (a container: its ConditionVirtualization), which would be a change on every run.
        systemd.service(name="Keep time synchronised (systemd-timesyncd, started at boot)",
                        service="systemd-timesyncd.service", running=None, enabled=True)
    journald = _template("Cap the journal's size (journald)", "journald-pyinfra-flask.conf.j2", JOURNALD_CONFIG,
                         max_use=s.harden_journal_max_use)
    server.shell(name="Restart journald (its size cap changed)", commands=["systemctl restart systemd-journald"],
                 _if=journald.did_change)
    sysctl = _template("Write the sysctl baseline (SYN cookies, no ICMP redirects)", "sysctl-pyinfra-flask.conf.j2",
                       SYSCTL_CONFIG)
    # systemd-sysctl applies every file; it skips itself where /proc/sys is read-only (containers).
    server.shell(name="Apply the sysctl baseline (systemd-sysctl)", commands=["systemctl restart systemd-sysctl"],
                 _if=sysctl.did_change)


def _admin_user(s) -> None:
    key = hardening.admin_key(s)
    if key is None:
        return
    user = s.harden_admin_user
    # No password at all ("*", not a locked "!"): the user logs in by key only, and sudo asks none.
    server.user(name=f"Create the admin user {user} (sudo, by key only)", user=user, shell="/bin/bash",
                groups=["sudo"], append=True, create_home=True, password="*", public_keys=[key])
    files.put(name=f"Let {user} use sudo without a password (it has none)", src=io.StringIO(
        f"# {user} logs in by key only and has no password (pyinfra-flask harden_admin_user).\n"
        f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"), dest=f"/etc/sudoers.d/pyinfra-flask-{user}", user="root",
        group="root", mode="440")


def _ssh(s) -> None:
    login = host.data.get("ssh_user")
    root = hardening.root_login(s, login)
    written = _template("Write sshd's settings (keys only, modern ciphers" + ("" if root else ", no root login") + ")",
                       "sshd-pyinfra-flask.conf.j2", SSHD_CONFIG, root_login=root)
    unproven = not host.get_fact(SshdKept)
    wants = {"passwordauthentication": "no", "kbdinteractiveauthentication": "no",
             "permitrootlogin": "without-password" if root else "no"}
    checked = server.shell(name="Check sshd's new settings (sshd -t, and in effect) before sshd reloads",
                           commands=[_check_or_restore(wants)], _if=lambda: unproven or written.did_change())
    server.shell(name="Reload sshd (its settings changed); sessions already open stay",
                 commands=["systemctl reload-or-restart ssh.service"], _if=checked.did_change)
    python.call(name="Log in again over a second, fresh SSH connection before the new sshd settings are kept",
                function=_prove_or_restore, _if=checked.did_change)


def _restore() -> str:
    """The last good sshd config back (or ours gone, if none was ever proven)."""
    return (f"if [ -f {SSHD_LAST_GOOD} ]; then cp -p {SSHD_LAST_GOOD} {SSHD_CONFIG}; "
            f"else rm -f {SSHD_CONFIG}; fi")


def _check_or_restore(wants: dict[str, str]) -> str:
    """sshd -t, then sshd -T (the effective settings: an earlier file of the provider's or
    a missing Include would silently win over ours); on failure the last good config
    back, sshd not reloaded, and the run stopped for this host."""
    greps = " && ".join(f"printf '%s\\n' \"$effective\" | grep -qx {shlex.quote(f'{key} {value}')}"
                        for key, value in wants.items())
    return f"""
if ! said=$(sshd -t 2>&1); then
    echo "$said" >&2
elif ! effective=$(sshd -T 2>&1) || ! {{ {greps}; }}; then
    echo "sshd's effective settings are not ours (another file or an old sshd_config without Include wins):" >&2
    printf '%s\\n' "$effective" | grep -E '^({"|".join(wants)}) ' >&2
else
    exit 0
fi
{_restore()}
echo "sshd's new settings were refused on $(hostname) (above): the last good ones are back, sshd was not" \\
     "reloaded." >&2
exit 1
"""


def _prove_or_restore() -> None:
    """At execution time, after the reload: a new SSH connection made from the inventory's
    own data (user, key, port, known hosts), as pyinfra's SSH connector makes it. If it
    fails, the last good config goes back and sshd reloads, over the session still open."""
    sudo = {"_sudo": bool(host.data.get("_sudo"))}
    if issubclass(host.connector_cls, SSHConnector):
        failure = _second_login()
        if failure:
            restored, _ = host.run_shell_command(f"{_restore()} && systemctl reload-or-restart ssh.service", **sudo)
            raise OperationError(
                f"A second SSH connection to {host.name} failed with the new sshd settings ({failure}); "
                + ("the last good settings are back and sshd was reloaded: the host accepts what it did before."
                   if restored else f"putting the last good ones back FAILED too: check {SSHD_CONFIG} from the "
                   "session you have"))
    kept, _ = host.run_shell_command(f"cp -p {SSHD_CONFIG} {SSHD_LAST_GOOD}", **sudo)
    if not kept:
        raise OperationError(f"Could not keep {SSHD_CONFIG} as the last good sshd config")


def _second_login(attempts: int = LOGIN_ATTEMPTS) -> str | None:
    """Why a fresh SSH login to this host fails, or None when it succeeds. A reload
    re-executes sshd, which resets connections for a moment: a connection that fails
    before authentication is tried again (`attempts` times, half a second apart); a
    refused login is not, as fail2ban counts each one against the laptop's address."""
    failure = None
    for _ in range(attempts):
        second = host.connector_cls(host.state, host)
        try:
            second.connect()
            return None
        except Exception as exc:  # noqa: BLE001 (any failure to log in means the config must not stay)
            failure = str(exc)
            # pyinfra's ConnectError is raised while handling paramiko's own exception.
            if isinstance(exc.__context__, (AuthenticationException, BadHostKeyException)):
                return failure
        finally:
            if second.client is not None:
                second.client.close()
        time.sleep(0.5)
    return failure


def _fail2ban(s) -> None:
    jail = _template("Write fail2ban's SSH jail (addresses never banned: the host's and fail2ban_ignore)",
                     "fail2ban-pyinfra-flask.local.j2", FAIL2BAN_JAIL, ignore=s.fail2ban_ignore)
    server.shell(name="Restart fail2ban (its jail changed; its bans are kept in its database)",
                 commands=["systemctl restart fail2ban.service"],
                 _if=jail.did_change)
    systemd.service(name="Keep fail2ban running and started at boot", service="fail2ban.service", running=True,
                    enabled=True)


def _upgrades(s) -> None:
    _template("Install security updates every day (unattended-upgrades"
              + (f", rebooting at {s.harden_reboot_time} when one needs it)" if s.harden_reboot_time else ")"),
              "unattended-upgrades-pyinfra-flask.j2", UPGRADES_CONFIG, reboot_time=s.harden_reboot_time)


def _swap() -> None:
    memory = host.get_fact(Memory)
    # A container's swap is its host kernel's: nothing to do there (docs/hardening.md).
    if memory["container"] or (memory["swap"] and SWAP_FILE not in memory["swap"]):
        return
    if not memory["swap"]:
        size = swap_size(memory["memory"])
        server.shell(name=f"Create and enable a {size} MiB swap file {SWAP_FILE} (the host has no swap)", commands=[
            f"if [ ! -f {SWAP_FILE} ]; then (umask 077; fallocate -l {size}M {SWAP_FILE} "
            f"|| dd if=/dev/zero of={SWAP_FILE} bs=1M count={size} status=none) && mkswap {SWAP_FILE} >/dev/null; fi",
            f"chmod 600 {SWAP_FILE} && swapon {SWAP_FILE}"])
    files.line(name=f"Enable {SWAP_FILE} at boot", path="/etc/fstab", line=f"^{SWAP_FILE} ",
               replace=f"{SWAP_FILE} none swap sw 0 0")
