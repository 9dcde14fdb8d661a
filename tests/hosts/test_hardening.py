"""`harden` on a real host (marker `reliability`; tasks/steps/hardening.py, docs/hardening.md).
Without a host: tests/steps/test_hardening.py.

One copy of the shared deployed host, on a Docker network the test creates, with
NET_ADMIN (a real server's root has it: fail2ban's bans are nftables rules). The
deploy connects as the sudo user through the published SSH port, so the host sees the
laptop as the network's gateway: that address is in fail2ban_ignore; an attacker is a
second container on the network.

What a container cannot show (docs/hardening.md): a swap file (its swap is the
kernel's; the deploy leaves it alone there), time synchronisation (systemd-timesyncd
starts nowhere its clock is not its own) and the sysctl values applied live
(/proc/sys is read-only: systemd-sysctl skips itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import paramiko
import pytest

from tests.conftest import REPO_ROOT, SESSION, SESSION_LABEL, run_deploy

pytestmark = pytest.mark.reliability

SSHD_CONFIG = "/etc/ssh/sshd_config.d/01-pyinfra-flask.conf"
LAST_GOOD = "/etc/ssh/.pyinfra-flask-sshd.conf.last-good"


def login(host, user: str, **auth) -> str:
    """'ok' once `sudo -n true` ran over a fresh SSH login, else why the login failed."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", host.ssh_port, username=user, timeout=10, allow_agent=False,
                       look_for_keys=False, **auth)
        _, out, _ = client.exec_command("sudo -n true && echo sudo-ok", timeout=20)
        return "ok" if out.read().decode().strip() == "sudo-ok" else "no sudo"
    except paramiko.SSHException as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def banned(host) -> str:
    return host.exec("fail2ban-client status sshd | sed -n 's/.*Banned IP list:[[:space:]]*//p'").strip()


def test_a_bare_server_is_made_safe_without_locking_the_deploy_out(hosts, deployed_image, bookworm_image,
                                                                   tmp_path):
    from dev import throwaway

    started = last = time.monotonic()
    laps = []

    def lap(label: str) -> None:
        nonlocal last
        laps.append(f"{label} {time.monotonic() - last:.1f} s")
        last = time.monotonic()

    network = hosts.network()
    gateway = throwaway.docker_client().networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    host = hosts.start(deployed_image, network=network, cap_add=("NET_ADMIN",))
    key_path, public_key = throwaway.ssh_key()
    admin_key = tmp_path / "admin.pub"
    admin_key.write_text(public_key + "\n")
    data = {"harden": True, "fail2ban_ignore": [gateway], "harden_admin_user": "ops",
            "harden_admin_key": str(admin_key)}

    lap("start")
    # Root login off while the inventory connects as root: refused, the host untouched.
    refused = run_deploy(host, tmp_path, data={**data, "harden_root_login": False},
                         inventory_data=host.inventory_data(as_root=True), check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.output
    assert ("harden_root_login = False: the inventory logs in as root (ssh_user), which this would lock out"
            in refused.output), refused.output[-3000:]
    assert host.exec(f"test -e {SSHD_CONFIG} || dpkg -s fail2ban >/dev/null 2>&1; echo $?",
                     check=False).strip() == "1"

    lap("refused")
    first = run_deploy(host, tmp_path, data=data)
    again = run_deploy(host, tmp_path, data=data)
    assert again.changed_operations() == [], again.output[-3000:]
    print(f"\nhardening a deployed host: {first.seconds:.1f} s; the second run: {again.seconds:.1f} s")

    lap("deploys")
    # Keys only, root never (the deploy logs in as the sudo user), the admin user made.
    assert login(host, "deploy", key_filename=str(key_path)) == "ok"
    assert login(host, "ops", key_filename=str(key_path)) == "ok"
    assert login(host, "root", key_filename=str(key_path)).startswith("AuthenticationException")
    assert login(host, "deploy", password="deploy") == (
        "BadAuthenticationType: Bad authentication type; allowed types: ['publickey']")
    effective = host.exec("sshd -T")
    for line in ("permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no"):
        assert line in effective.splitlines()
    assert "cbc" not in effective and "hmac-sha1" not in effective
    assert host.exec(f"cmp {SSHD_CONFIG} {LAST_GOOD} && echo kept").strip() == "kept"

    lap("logins")
    # Security updates: the configuration passes unattended-upgrades' own dry run.
    host.exec("unattended-upgrade --dry-run")
    assert host.exec("apt-config dump APT::Periodic::Unattended-Upgrade").strip() == (
        'APT::Periodic::Unattended-Upgrade "1";')
    assert host.exec("systemctl is-active fail2ban; systemctl is-enabled systemd-timesyncd").split() == [
        "active", "enabled"]
    assert "SystemMaxUse=500M" in host.exec("systemd-analyze cat-config systemd/journald.conf")
    # A container: no swap file made (its swap is the kernel's).
    assert host.exec("test -e /swapfile; echo $?").strip() == "1"

    lap("upgrades")
    # Ten failed logins from the laptop's address (in fail2ban_ignore): never banned.
    for attempt in range(10):
        assert login(host, f"nosuch{attempt}", key_filename=str(key_path)).startswith("AuthenticationException")
    deadline = time.monotonic() + 30
    while host.exec(f"grep -c 'Ignore {gateway} by ip' /var/log/fail2ban.log", check=False).strip() in ("", "0"):
        assert time.monotonic() < deadline, host.exec("tail -20 /var/log/fail2ban.log")
        time.sleep(0.5)
    assert gateway not in banned(host) and login(host, "deploy", key_filename=str(key_path)) == "ok"

    lap("ignored")
    # Ten failed logins from another container (all ten made, whether the ban lands during them or
    # not): banned, its next connection fails. fail2ban reads the journal on its own time: the next
    # one is tried until it fails (20 tries, a second apart). A ban rejects the address's packets,
    # and ICMP answers are rate-limited, so a try may time out instead; a login under way when the
    # ban lands would wait on TCP retries: each one bounded.
    target = host.address(network)
    ssh = ("timeout 8 ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o ConnectTimeout=5 -o LogLevel=ERROR")
    refused = 'case "$said" in *"port 22: Connection"*|"") break;; esac'
    attack = (f'for i in $(seq 10); do said=$({ssh} nosuch$i@{target} true 2>&1); echo "try $i: $said"; done; '
              f'for i in $(seq 20); do said=$({ssh} nosuch@{target} true 2>&1); echo "next: $said"; {refused}; '
              'sleep 1; done; hostname -i')
    said = throwaway.docker_client().containers.run(
        bookworm_image, [attack], entrypoint=["sh", "-c"], network=network, remove=True, stderr=True,
        labels={throwaway.LABEL: "attacker", SESSION_LABEL: SESSION}).decode().replace("\r\n", "\n")
    lines = said.splitlines()
    attacker, final = lines[-1].strip(), lines[-2]
    assert [line.split(":")[0] for line in lines if line.startswith("try ")] == [f"try {i}" for i in range(1, 11)]
    assert sum("Permission denied" in line for line in lines) >= 5, said
    assert final == "next: " or re.fullmatch(
        rf"next: ssh: connect to host {target} port 22: Connection (refused|timed out)", final), said
    assert attacker in banned(host).split() and gateway not in banned(host)

    lap("attack")
    # A change whose second login fails (the key removed on the host mid-run, by a hook run
    # once the deploy is connected): the last good sshd settings back, the original key works.
    hook = tmp_path / "remove-key"
    hook.write_text(f"#!{sys.executable}\nimport docker\ndocker.from_env().containers.get({host.name!r}).exec_run("
                    "['mv', '/home/deploy/.ssh/authorized_keys', '/home/deploy/.ssh/away'])\n")
    hook.chmod(0o755)
    failed = run_deploy(host, tmp_path, data={**data, "harden_root_login": True, "before_deploy_hooks": [str(hook)]},
                        check=False)
    assert failed.returncode != 0
    assert ("failed with the new sshd settings (Authentication error (username=deploy" in failed.output
            and "the last good settings are back and sshd was reloaded" in failed.output), failed.output[-3000:]
    host.exec("mv /home/deploy/.ssh/away /home/deploy/.ssh/authorized_keys")
    assert host.exec(f"cmp {SSHD_CONFIG} {LAST_GOOD} && grep PermitRootLogin {SSHD_CONFIG}").strip() == (
        "PermitRootLogin no")
    assert "permitrootlogin no" in host.exec("sshd -T").splitlines()
    assert login(host, "deploy", key_filename=str(key_path)) == "ok"
    assert login(host, "root", key_filename=str(key_path)).startswith("AuthenticationException")

    lap("revert")
    # An update that needs a reboot shows in ops.py status (not as unhealthy).
    host.exec("touch /run/reboot-required")
    inventory = host.write_inventory(tmp_path / "status.py", data)
    status = subprocess.run([sys.executable, "ops.py", str(inventory), "status"], cwd=REPO_ROOT,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert f"[{host.name}] reboot required: an update needs it (/run/reboot-required)" in status.stdout, (
        status.stdout + status.stderr)
    lap("status")
    print(f"the test's own cost (its host included): {time.monotonic() - started:.1f} s; " + ", ".join(laps))
