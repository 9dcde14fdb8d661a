"""The settings of one concern: a bare server made safe (`harden`): SSH, brute force,
updates, swap, time, the journal and a sysctl baseline (tasks/steps/hardening.py,
docs/hardening.md). What would lock the deploy out is refused by tasks/config/hardening.py.

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from tasks.config.settings.values import NAME_RE, ip_network


def journal_size(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]{0,5}[KMG]", value):
        raise ValueError("must be a size like '500M' or '2G'")
    return value


def clock_time(value: str) -> str:
    """unattended-upgrades' Automatic-Reboot-Time: 24-hour clock, the host's time zone."""
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise ValueError("must be a time like '04:30' (HH:MM, 24-hour clock)")
    return value


class HardeningSettings(BaseModel):
    """A bare server made safe."""

    harden: bool = Field(
        False,
        description="Make the server itself safe (Debian and Ubuntu; docs/hardening.md): SSH by key only with a "
        "modern cipher set and no root login when the deploy connects as another user (a changed sshd "
        "config is kept only once `sshd -t` and a second, fresh SSH connection as the inventory's user "
        "succeed, else it is put back and the run stops), fail2ban on SSH, security updates by "
        "unattended-upgrades, a swap file when there is none, time synchronised, the journal capped, a "
        "sysctl baseline.",
    )
    harden_root_login: bool | None = Field(
        None,
        description="`true`: root may log in over SSH (by key only); `false`: never. Default: only when the "
        "inventory connects as root (`ssh_user`), or names no user; `false` while it connects as root is "
        "refused (it would lock the deploy out).",
    )
    harden_admin_user: str | None = Field(
        None, pattern=NAME_RE,
        description="A sudo user (passwordless sudo, key only) the deploy creates with `harden_admin_key`, so "
        "that a server reached as root can be reached as this user from the next run on (set `ssh_user` to "
        "it; root login then goes off).",
    )
    harden_admin_key: str | None = Field(
        None, min_length=1,
        description="Local public key file (`~/.ssh/id_ed25519.pub`) authorised for `harden_admin_user`; "
        "required with it.",
    )
    fail2ban_ignore: list[Annotated[str, AfterValidator(ip_network)]] = Field(
        [],
        description="Addresses or networks (`203.0.113.7`, `10.0.0.0/8`) fail2ban never bans, besides the "
        "host itself: your office, your CI, a bastion.",
    )
    harden_reboot_time: Annotated[str, AfterValidator(clock_time)] | None = Field(
        None,
        description="`HH:MM` (host time): when an update needs a reboot, unattended-upgrades reboots at this "
        "time. Default: never by itself (`ops.py status` says when a reboot is needed).",
    )
    harden_journal_max_use: Annotated[str, AfterValidator(journal_size)] = Field(
        "500M",
        description="Disk the systemd journal may use at most (journald's `SystemMaxUse`).",
    )
