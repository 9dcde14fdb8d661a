"""Values a setting must never take, whatever its pattern allows: the system's own
directories, accounts and units. The deploy runs as root; an `app_root` of `/etc`
would be chowned to the app, an `app_name` of `ssh` would replace `ssh.service`
(and lock everybody out), an `app_user` of `www-data` would turn nginx's account
into the app's. Each check raises ValueError with the reason, and the settings
model turns that into one line naming the key.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# Trees that belong to the system (or to nobody in particular): nothing of an app's
# goes inside them, and nothing the app may write.
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/proc",
    "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/tmp", "/var/cache", "/var/spool", "/var/mail",
    "/var/backups", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd", "/snap",
    # Where this deploy keeps uWSGI's builds, shared by every app.
    "/opt/pyinfra-flask",
)
# Log directories of root's services (and of daemons root starts), where they open
# their logs by name: one handed to an app user would let it put a link in a log's
# place (nginx's master, as root, would create the file it points to).
SERVICE_LOG_TREES = (
    "/var/log/nginx", "/var/log/apache2", "/var/log/httpd", "/var/log/postgresql", "/var/log/redis",
    "/var/log/mysql", "/var/log/mariadb", "/var/log/letsencrypt", "/var/log/apt", "/var/log/journal",
    "/var/log/private", "/var/log/audit", "/var/log/installer", "/var/log/unattended-upgrades",
    "/var/log/dist-upgrade", "/var/log/sysstat", "/var/log/chrony", "/var/log/exim4", "/var/log/firewalld",
    "/var/log/uwsgi",
)
# Directories many things share: an app may live below them, never be one.
SHARED_PARENTS = ("/", "/home", "/media", "/mnt", "/opt", "/srv", "/var", "/var/lib", "/var/log", "/var/opt",
                  "/var/www", "/usr/local")

# Accounts that Debian, Ubuntu and RHEL create for themselves or their services.
SYSTEM_ACCOUNTS = frozenset("""
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats nobody
    nogroup adm tty disk kmem dialout fax voice cdrom floppy tape sudo audio dip operator src shadow
    utmp video sasl plugdev staff users input sgx kvm render netdev ssl-cert crontab messagebus
    sshd ssh syslog uuidd tcpdump tss landscape pollinate polkitd lxd _apt _chrony chrony ntp
    nginx apache httpd postgres mysql redis memcache memcached docker systemd-journal
    systemd-network systemd-resolve systemd-timesync systemd-coredump wheel ftp halt shutdown
    dbus unbound dnsmasq avahi rtkit geoclue colord saned usbmux uwsgi prometheus
""".split())

# Units whose name `<app_name>.service` would take over.
SYSTEM_UNITS = frozenset("""
    ssh sshd nginx apache2 httpd cron crond rsyslog syslog networking network dbus getty
    systemd-journald udev polkit sudo docker containerd postgresql redis redis-server mysql
    mariadb memcached firewalld nftables ufw iptables fail2ban chrony ntp ntpd logrotate
    unattended-upgrades apt-daily dpkg cloud-init snapd uwsgi exim4 postfix emergency rescue
    reboot poweroff halt shutdown multi-user graphical default user kmod auditd rc-local
    systemd-resolved systemd-networkd systemd-timesyncd systemd-logind
""".split())


def _inside(path: PurePosixPath, tree: str) -> bool:
    return path == PurePosixPath(tree) or PurePosixPath(tree) in path.parents


def app_directory(value: str, example: str = "/srv/myapp") -> str:
    """A directory the deploy makes the app's own (chowned, its group given access)."""
    path = PurePosixPath(value)
    if str(path) in SHARED_PARENTS:
        raise ValueError(f"{path} is a directory the system and other software share; use one of the app's "
                         f"own, e.g. {example}")
    if path.parent == PurePosixPath("/home"):
        raise ValueError(f"{path} is a user's home directory; use a directory of the app's own, e.g. {example}")
    for tree in SYSTEM_TREES:
        if _inside(path, tree):
            raise ValueError(f"{path} is inside {tree}, which belongs to the system; use e.g. {example}")
    return value


def log_directory(value: str, example: str) -> str:
    """A log directory the deploy gives the app user: an app directory (above), and
    none of the system services' log directories."""
    app_directory(value, example=example)
    for tree in SERVICE_LOG_TREES:
        if _inside(PurePosixPath(value), tree):
            where = "" if PurePosixPath(value) == PurePosixPath(tree) else f"inside {tree}, "
            raise ValueError(f"{value} is {where}where a service run by root writes its logs; use e.g. "
                             f"{example}")
    return value


def account(value: str) -> str:
    if value in SYSTEM_ACCOUNTS or value.startswith("systemd-"):
        raise ValueError("is an account the system or one of its services uses; the app needs its own")
    return value


def unit(value: str) -> str:
    if value in SYSTEM_UNITS or value.startswith("systemd-") or value.startswith("pyinfra-flask"):
        raise ValueError(f"would replace the system's own {value}.service; name the app something else")
    return account(value)


def no_dot_segments(value: str) -> str:
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("must not contain '.' or '..' path segments")
    return value
