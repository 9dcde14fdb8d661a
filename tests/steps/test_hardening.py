"""`harden` without a host (tasks/steps/hardening.py, tasks/config/hardening.py): the
refusals of settings that would lock the deploy out, the operations on each system of
the Debian family by mocked facts (the harness of tests/roles/test_distros.py), and
`ops.py status` saying when a reboot is needed. On a real host: tests/hosts/test_hardening.py."""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.api import OperationError

from tasks.config import hardening
from tasks.config.checks import validate
from tasks.config.settings import parse
from tasks.ops import status as ops_status
from tasks.steps import hardening as steps
from tests.roles.test_distros import deploy, host_facts

APP = {"app_source": "files/greeting"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9v laptop"


def lockouts(data: dict, **settings) -> list[str]:
    return hardening.lockouts([validate({**APP, **settings})], data)


def test_settings_that_would_lock_the_deploy_out_are_refused(tmp_path):
    assert lockouts({"ssh_password": "x"}, harden=False) == []
    assert lockouts({"ssh_user": "root"}, harden=True) == []
    [password] = lockouts({"ssh_password": "hunter2"}, harden=True)
    assert password.startswith("harden: the inventory logs in with a password") and "hunter2" not in password
    assert lockouts({"ssh_password": "x", "ssh_key": "~/.ssh/id_ed25519"}, harden=True) == []
    [root] = lockouts({"ssh_user": "root"}, harden=True, harden_root_login=False)
    assert root.startswith("harden_root_login = False: the inventory logs in as root")
    assert lockouts({"ssh_user": "deploy"}, harden=True, harden_root_login=False) == []
    [no_key] = lockouts({}, harden=True, harden_admin_user="ops")
    assert no_key == "harden_admin_key: required with harden_admin_user (the user logs in by key only)"
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n")
    [not_public] = lockouts({}, harden=True, harden_admin_user="ops", harden_admin_key=str(private))
    assert "is not one SSH public key" in not_public and "b3Blbn" not in not_public
    public = tmp_path / "id_ed25519.pub"
    public.write_text(KEY + "\n")
    assert lockouts({}, harden=True, harden_admin_user="ops", harden_admin_key=str(public)) == []
    [app_user] = lockouts({}, harden=True, harden_admin_user="greeting", harden_admin_key=str(public))
    assert app_user.startswith("harden_admin_user = 'greeting': is root or an app's own user")


def test_bad_values_name_their_key():
    _, problems = parse({"harden": "yes", "harden_reboot_time": "4:30", "harden_journal_max_use": "1T",
                         "fail2ban_ignore": ["10.0.0.0/8", "office"], "harden_admin_user": "Ops"})
    assert problems == [
        "harden = 'yes': Input should be a valid boolean",
        "harden_admin_user = 'Ops': must be 1-31 characters: lowercase letters, digits, '-' or '_', starting with "
        "a letter",
        "fail2ban_ignore[1] = 'office': must be an IPv4 or IPv6 address or network (CIDR), e.g. '10.0.0.0/8'",
        "harden_reboot_time = '4:30': must be a time like '04:30' (HH:MM, 24-hour clock)",
        "harden_journal_max_use = '1T': must be a size like '500M' or '2G'",
    ]


def test_root_login_follows_how_the_deploy_logs_in():
    app = validate({**APP, "harden": True})
    assert hardening.root_login(app, "root") and hardening.root_login(app, None)
    assert not hardening.root_login(app, "deploy")
    assert hardening.root_login(validate({**APP, "harden_root_login": True}), "deploy")


@pytest.mark.parametrize("system", ["debian12", "debian13", "ubuntu2204", "ubuntu2404"])
def test_the_debian_family_is_hardened(system, tmp_path):
    public = tmp_path / "admin.pub"
    public.write_text(KEY + "\n")
    facts = host_facts(system, Memory=lambda: {"container": False, "swap": [], "memory": 1900})
    run = deploy({system: facts}, host_data={system: {"ssh_user": "deploy", "_sudo": True}}, harden=True,
                 harden_admin_user="ops", harden_admin_key=str(public), fail2ban_ignore=["203.0.113.7"],
                 harden_reboot_time="04:30")[system]
    hardened = run.named("Hardening | ")
    assert ("Hardening | Install fail2ban, python3-systemd, nftables, unattended-upgrades, systemd-timesyncd"
            in hardened)
    names = list(hardened)
    # The admin user exists before sshd may stop root from logging in; the new sshd settings are
    # checked before the reload, and kept only by the second login after it.
    assert names.index("Hardening | Create the admin user ops (sudo, by key only)") < names.index(
        "Hardening | Write sshd's settings (keys only, modern ciphers, no root login)")
    check, reload, prove = (
        "Hardening | Check sshd's new settings (sshd -t, and in effect) before sshd reloads",
        "Hardening | Reload sshd (its settings changed); sessions already open stay",
        "Hardening | Log in again over a second, fresh SSH connection before the new sshd settings are kept")
    assert names.index(check) < names.index(reload) < names.index(prove)
    assert hardened[reload] == ["systemctl reload-or-restart ssh.service"]
    sshd = run.uploads[steps.SSHD_CONFIG]
    assert "PasswordAuthentication no\n" in sshd and "PermitRootLogin no\n" in sshd and "cbc" not in sshd
    jail = run.uploads[steps.FAIL2BAN_JAIL]
    assert "ignoreip = 127.0.0.1/8 ::1 203.0.113.7/32\n" in jail and "backend = systemd" in jail
    upgrades = run.uploads[steps.UPGRADES_CONFIG]
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "04:30";' in upgrades
    assert 'APT::Periodic::Unattended-Upgrade "1";' in upgrades
    assert "SystemMaxUse=500M" in run.uploads[steps.JOURNALD_CONFIG]
    assert "net.ipv4.tcp_syncookies = 1" in run.uploads[steps.SYSCTL_CONFIG]
    [swap] = [commands for name, commands in hardened.items() if "swap file" in name and "Create" in name]
    assert "fallocate -l 1900M /swapfile" in swap[0]
    assert "Hardening | Enable /swapfile at boot" in hardened
    assert "echo 'ops ALL=(ALL:ALL) NOPASSWD: ALL'" not in str(hardened)  # uploaded as a file, mode 440
    assert "ops ALL=(ALL:ALL) NOPASSWD: ALL" in run.uploads["/etc/sudoers.d/pyinfra-flask-ops"]


def test_a_host_with_swap_a_time_daemon_or_in_a_container_keeps_its_own():
    for memory in ({"container": True, "swap": [], "memory": 1024},
                   {"container": False, "swap": ["/dev/vda3"], "memory": 1024}):
        facts = host_facts("debian12", Memory=lambda memory=memory: memory,
                           DebInstalled=lambda packages: {"chrony"} & set(packages))
        hardened = deploy({"debian12": facts}, harden=True)["debian12"].named("Hardening | ")
        assert not [name for name in hardened if "swap" in name.lower() or "timesyncd" in name], hardened
    assert steps.swap_size(300) == steps.SWAP_MIN and steps.swap_size(64000) == steps.SWAP_MAX
    assert steps.Memory().process(["container", "swap /swapfile", "memory 1987"]) == {
        "container": True, "swap": ["/swapfile"], "memory": 1987}


STUB = """#!/bin/sh
echo "$(basename "$0") $* (umask $(umask))" >> "$SWAP_LOG"
"""


@pytest.mark.parametrize("fallocate", ["works", "unsupported"])
def test_a_host_without_swap_gets_a_root_only_swap_file_as_large_as_its_memory(fallocate, tmp_path):
    """The commands a real server without swap gets (a container never does: its swap is
    its kernel's, and this machine's is not ours to turn on), run here against stubs of
    fallocate, dd, mkswap and swapon: the file made root-only from its first byte, sized
    to memory, made swap, turned on, and in fstab; a second run neither makes nor formats
    it again. (The file system's own fallocate may be refused, as on some: then dd.)"""
    facts = host_facts("debian12", Memory=lambda: {"container": False, "swap": [], "memory": 1900})
    hardened = deploy({"debian12": facts}, harden=True)["debian12"].named("Hardening | ")
    create = hardened["Hardening | Create and enable a 1900 MiB swap file /swapfile (the host has no swap)"]
    [fstab] = hardened["Hardening | Enable /swapfile at boot"]
    stubs, log, swapfile, table = tmp_path / "bin", tmp_path / "log", tmp_path / "swapfile", tmp_path / "fstab"
    stubs.mkdir()
    for name in ("fallocate", "dd", "mkswap", "swapon"):
        (stubs / name).write_text(STUB + {"fallocate": 'touch "$3"; exit 0' if fallocate == "works" else "exit 1",
                                          "dd": 'touch "${2#of=}"'}.get(name, ""))
        (stubs / name).chmod(0o755)
    table.write_text("UUID=0c6b / ext4 errors=remount-ro 0 1\n")
    script = "\n".join([*create, fstab]).replace("/swapfile", str(swapfile)).replace("/etc/fstab", str(table))
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "SWAP_LOG": str(log)}
    for _ in range(2):
        subprocess.run(["sh", "-ec", script], env=env, check=True)
    made = ([f"fallocate -l 1900M {swapfile} (umask 0077)"] if fallocate == "works" else
            [f"fallocate -l 1900M {swapfile} (umask 0077)",
             f"dd if=/dev/zero of={swapfile} bs=1M count=1900 status=none (umask 0077)"])
    assert log.read_text().splitlines() == [*made, f"mkswap {swapfile} (umask 0022)", f"swapon {swapfile} (umask 0022)",
                                            f"swapon {swapfile} (umask 0022)"]
    assert oct(swapfile.stat().st_mode & 0o777) == "0o600"
    assert table.read_text().splitlines()[-1] == f"{swapfile} none swap sw 0 0"
    # The next run's facts: /swapfile is the host's swap; only its fstab line is kept.
    facts = host_facts("debian12", Memory=lambda: {"container": False, "swap": ["/swapfile"], "memory": 1900})
    hardened = deploy({"debian12": facts}, harden=True)["debian12"].named("Hardening | ")
    assert [name for name in hardened if "swap" in name.lower()] == ["Hardening | Enable /swapfile at boot"]


def test_root_login_stays_by_key_when_the_deploy_logs_in_as_root():
    run = deploy({"debian12": host_facts("debian12")}, host_data={"debian12": {"ssh_user": "root"}},
                 harden=True)["debian12"]
    assert "PermitRootLogin prohibit-password\n" in run.uploads[steps.SSHD_CONFIG]


def test_rhel_is_refused_with_nothing_changed():
    with pytest.raises(OperationError, match="harden: supported on Debian and Ubuntu only, not Rocky Linux 9; "
                                             "nothing was changed"):
        deploy({"rocky9": host_facts("rocky9")}, harden=True)


def test_the_sshd_check_is_shell_that_restores_the_last_good_config():
    script = steps._check_or_restore({"passwordauthentication": "no", "permitrootlogin": "no"})
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert "grep -qx 'permitrootlogin no'" in script
    assert f"cp -p {steps.SSHD_LAST_GOOD} {steps.SSHD_CONFIG}" in script and "exit 1" in script


class _Host:
    name, groups, data = "web1", [], {}


def test_status_says_when_a_reboot_is_needed_once_per_host():
    apps = [validate(APP), validate({**APP, "app_name": "shop"})]
    command = ops_status.with_reboot_flag("true")
    assert command.startswith(f"if [ -e {ops_status.REBOOT_FLAG} ]; then echo REBOOT-REQUIRED; fi ; ")
    reports = ops_status.parse(_Host(), apps, ["REBOOT-REQUIRED"], [])
    rows = [ops_status.summary("web1", app, reports[app.app_name]) for app in apps]
    assert all(row["reboot_required"] for row in rows)
    lines = ops_status.table(rows)
    assert lines.count("[web1] reboot required: an update needs it (/run/reboot-required)") == 1
    assert not any("reboot" in line for line in ops_status.table(
        [ops_status.summary("web1", app, ops_status.parse(_Host(), apps, [], [])[app.app_name]) for app in apps]))
