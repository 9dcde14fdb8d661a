"""The opt-in local PostgreSQL of an app (`database: postgresql`) and its backups
(ops.py's backup and restore: tasks/ops/backups.py). See docs/database.md.

    /etc/postgresql/<version>/main/conf.d/pyinfra-flask.conf   listen_addresses = '' (unix socket only)
    /etc/postgresql/<version>/main/pg_hba.conf                 postgres by peer, each app's role to its own
                                                               database by scram, nothing else
    /etc/pyinfra-flask/postgresql/<app>.password                made on the host, root, 600
    <app_root>/secrets/database.env                             DATABASE_URL, root, 600 (systemd reads it)
    /usr/local/lib/pyinfra-flask/db-backup.py                   files/db-backup.py: backup, list, restore
    /etc/pyinfra-flask/db-backup/<app>.json                     its settings for the app
    pyinfra-flask-db-backup@<app>.service, pyinfra-flask-db-backup-<app>.timer

The password never leaves the host: the commands that set it and write the app's
DATABASE_URL read it there (`$(cat ...)` in the shell, printf a builtin: no argument
list shows it), so it is in no pyinfra output and no `--diff`. Upgrades of the app
never touch the data; an app whose `database` is turned off, or that is removed,
keeps its database and backups (dropping one is a decision made by hand).
"""

from __future__ import annotations

import io
import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES
from tasks.config import topology
from tasks.steps import healthcheck
from tasks.steps.packages import APT_LOCK_WAIT, DebInstalled
from tasks.steps.secrets import url_from_password, url_from_server

# The distribution's own PostgreSQL, by tasks/config/platform.py's system name.
VERSIONS = {"Debian 12 (bookworm)": 15, "Debian 13 (trixie)": 17,
            "Ubuntu 22.04 LTS (jammy)": 14, "Ubuntu 24.04 LTS (noble)": 16}
SOCKET_DIR = "/var/run/postgresql"
PASSWORD_DIR = "/etc/pyinfra-flask/postgresql"
BACKUP_ROOT = "/var/backups/pyinfra-flask"
BACKUP_CONFIG_DIR = "/etc/pyinfra-flask/db-backup"
TOOL = "/usr/local/lib/pyinfra-flask/db-backup.py"
UNIT_DIR = "/etc/systemd/system"
SERVICE = "pyinfra-flask-db-backup@.service"
WAKE_DROP_IN = f"{UNIT_DIR}/postgresql@.service.d/pyinfra-flask-wake.conf"
PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"


def password_path(app) -> str:
    return f"{PASSWORD_DIR}/{app.app_name}.password"


def backup_config_path(app) -> str:
    return f"{BACKUP_CONFIG_DIR}/{app.app_name}.json"


def backup_timer(app) -> str:
    return f"pyinfra-flask-db-backup-{app.app_name}.timer"


def tool_command(app, *arguments: str) -> str:
    """The backup tool's command line for the app (as root)."""
    return " ".join(["python3 -I -S", TOOL, "--config", backup_config_path(app), *map(shlex.quote, arguments)])


def database_url(name: str) -> str:
    """The URL handed to the app, with `%s` where the password goes (filled in on the host)."""
    return f"postgresql://{name}:%s@/{name}?host={SOCKET_DIR}"


class PostgresqlObjects(FactBase):
    """{"roles": [...], "databases": [...]} of the host's PostgreSQL, or none while it
    is not installed or not running."""

    @staticmethod
    def default() -> dict:
        return {"roles": [], "databases": []}

    def command(self) -> str:
        query = ("select 'role ' || rolname from pg_roles union all "
                 "select 'database ' || datname from pg_database")
        return (f"[ -S {SOCKET_DIR}/.s.PGSQL.5432 ] && (cd / && runuser -u postgres -- psql -X -A -t "
                f"-c {shlex.quote(query)}) 2>/dev/null; true")

    def process(self, output: list[str]) -> dict:
        found = {"roles": [], "databases": []}
        for line in output:
            kind, _, name = line.strip().partition(" ")
            if kind in ("role", "database") and name:
                found[kind + "s"].append(name)
        return found


class BackupTimers(FactBase):
    """The backup timers this deploy wrote (file names in /etc/systemd/system)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self) -> str:
        return f"cd {UNIT_DIR} 2>/dev/null && ls -1 pyinfra-flask-db-backup-*.timer 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip().endswith(".timer"))


def version(system) -> int:
    found = VERSIONS.get(system.name)
    if found is None:
        raise DeployError(f"database = 'postgresql': supported on Debian and Ubuntu (the distribution's "
                          f"postgresql package), not on {system.name}; nothing was changed.")
    return found


def local(apps) -> list:
    """The apps of an app server whose PostgreSQL is on the host itself."""
    return [s for s in apps if s.database and not s.database_host]


def certificate_paths(address: str) -> tuple[str, str]:
    """The db server's self-signed certificate and key, named after the address they
    are for (a new address: a new certificate)."""
    base = f"/etc/postgresql/pyinfra-flask-{address}"
    return f"{base}.crt", f"{base}.key"


def self_signed(address: str, certificate: str, key: str, owner: str, what: str) -> None:
    """A self-signed certificate for `address`, made on the host unless it is there;
    its key never leaves it (mode 600, `owner`'s)."""
    if not host.get_fact(File, path=certificate):
        # Tested again on the host: one the app servers already trust is never replaced.
        server.shell(name=f"Make {what} self-signed TLS certificate (for {address}, on the host)", commands=[
            f"[ -f {certificate} ] || {{ (umask 077; openssl req -x509 -newkey rsa:3072 -nodes -days 36500 "
            f"-subj /CN={address} -addext subjectAltName=IP:{address} -keyout {key} -out {certificate} 2>/dev/null) "
            f"&& chown {owner} {certificate} {key} && chmod 644 {certificate}; }}"])


def wake_checkpointer(archiving: bool):
    """With WAL archiving, every start of the cluster ends with a reload
    (templates/postgresql-wake.conf.j2): PostgreSQL's checkpointer otherwise ignores
    archive_timeout for up to checkpoint_timeout after a start. Returns the op that
    writes (or removes) the drop-in; systemd is reloaded when it changed."""
    if archiving:
        wake = files.template(jinja_env_kwargs=JINJA, name=f"Wake PostgreSQL's checkpointer after each start "
                              f"(archive_timeout from the first minute; {WAKE_DROP_IN})",
                              src=str(TEMPLATES / "postgresql-wake.conf.j2"), dest=WAKE_DROP_IN, mode="644",
                              create_remote_dir=True)
    else:
        wake = files.file(name=f"No checkpointer wake-up without WAL archiving ({WAKE_DROP_IN})", path=WAKE_DROP_IN,
                          present=False)
    systemd.daemon_reload(name="Reload systemd (PostgreSQL's wake-up changed)", _if=wake.did_change)
    return wake


@deploy("PostgreSQL")
def install(system, wanted, listen: tuple[str, list[tuple[str, str, str]]] | None = None, guard=None,
            archive: tuple[str, int] | None = None) -> None:
    """The distribution's PostgreSQL, each app's role allowed to its own database and
    nothing else; the backup tool and its service. `wanted`: the apps with a database
    here. Alone it listens on the unix socket only; on a db server, `listen` is (its
    private address, [(app server, its private address, database)]): it listens on
    that address, with TLS, and each app server's role reaches only its database;
    `guard` adds the firewall's operations, before PostgreSQL listens there; `archive`
    is (archive_command, archive_timeout) with a backup host (tasks/steps/pgbackrest.py)."""
    if wanted:
        major = version(system)
        config_dir = f"/etc/postgresql/{major}/main"
        packages = ["postgresql", "nftables"] if listen else ["postgresql"]
        if set(packages) - set(host.get_fact(DebInstalled, packages=tuple(packages))):
            # The base packages may all be there, and the index too old for a new one.
            apt.update(name="Refresh the package index if older than apt_cache_valid_time",
                       cache_time=wanted[0].apt_cache_valid_time)
        # Without recommends (sysstat and the like): the server and its client only.
        apt.packages(name=f"Install PostgreSQL ({', '.join(packages)})", packages=packages, no_recommends=True,
                     extra_install_args=APT_LOCK_WAIT)
        if guard:
            guard()
        address, clients = listen or (None, [])
        tls = certificate_paths(address) if listen else None
        if tls:
            # Public: the app servers get a copy and verify the server by it (sslmode=verify-full).
            self_signed(address, *tls, owner="postgres:postgres", what="the server's")
        conf = files.template(jinja_env_kwargs=JINJA, name=f"Listen on {address} with TLS only" if listen else
                              "Listen on the unix socket only (no TCP)", src=str(TEMPLATES / "postgresql.conf.j2"),
                              dest=f"{config_dir}/conf.d/pyinfra-flask.conf", mode="644", address=address, tls=tls,
                              archive=archive)
        hba = files.template(jinja_env_kwargs=JINJA, name="Allow each app's role to its own database only "
                             "(pg_hba.conf)", src=str(TEMPLATES / "pg_hba.conf.j2"), dest=f"{config_dir}/pg_hba.conf",
                             user="postgres", group="postgres", mode="640",
                             names=sorted({s.database_name for s in wanted}), clients=clients,
                             monitor=topology.monitoring_server(host) is not None)
        wake = wake_checkpointer(archive is not None)
        # By command, not systemd.service: on the first deploy its facts (read before the
        # package was installed) would say "not running" and only start what the package
        # already started with Debian's listen_addresses = 'localhost'.
        restarted = server.shell(name="Restart PostgreSQL (where it listens changed)",
                                 commands=["systemctl restart postgresql"], _if=conf.did_change)
        server.shell(name="Reload PostgreSQL (who may connect, or its wake-up, changed)",
                     commands=["systemctl reload postgresql"],
                     _if=lambda: (hba.did_change() or wake.did_change()) and not restarted.did_change())
        systemd.service(name="Run PostgreSQL at boot", service="postgresql", running=True, enabled=True)
        files.directory(name=f"Create {PASSWORD_DIR} (root-only)", path=PASSWORD_DIR, user="root",
                        group="root", mode="700")
        files.directory(name=f"Create {BACKUP_CONFIG_DIR} (root-only)", path=BACKUP_CONFIG_DIR, user="root",
                        group="root", mode="700")
        files.directory(name=f"Create {BACKUP_ROOT} (root-only)", path=BACKUP_ROOT, user="root",
                        group="root", mode="700")
        files.put(name="Install the database backup tool", src=str(REPO_ROOT / "files/db-backup.py"),
                  dest=TOOL, mode="755", create_remote_dir=True)
        service = files.template(jinja_env_kwargs=JINJA, name=f"Write the backup service ({SERVICE})",
                                 src=str(TEMPLATES / "db-backup.service.j2"), dest=f"{UNIT_DIR}/{SERVICE}",
                                 mode="644", tool=TOOL, config_dir=BACKUP_CONFIG_DIR)
    else:
        service = files.file(name=f"No database backup service ({SERVICE})", path=f"{UNIT_DIR}/{SERVICE}",
                             present=False)
    timers = {}
    for s in wanted:
        if s.database_backup_schedule:
            timers[backup_timer(s)] = files.template(
                jinja_env_kwargs=JINJA, name=f"Write the backup timer of {s.app_name} ({backup_timer(s)})",
                src=str(TEMPLATES / "db-backup.timer.j2"), dest=f"{UNIT_DIR}/{backup_timer(s)}", mode="644", s=s)
    removed = []
    for timer in host.get_fact(BackupTimers):
        if timer not in timers:
            # The app is gone or wants no timer: its database and backups stay.
            server.shell(name=f"Stop {timer} (no longer in the settings; the database and backups stay)",
                         commands=[f"systemctl disable --now {shlex.quote(timer)}"])
            removed.append(files.file(name=f"Remove {timer}", path=f"{UNIT_DIR}/{timer}", present=False))
    changes = [service, *timers.values(), *removed]
    systemd.daemon_reload(name="Reload systemd (the database backup units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    for timer, op in timers.items():
        server.shell(name=f"Start {timer} (and at boot)", commands=[f"systemctl enable {shlex.quote(timer)}",
                                                                    f"systemctl restart {shlex.quote(timer)}"],
                     _if=op.did_change)


@deploy("Database")
def provision(app) -> list:
    """The app's role (its password made on the host), its database, DATABASE_URL
    (root's, mode 600), the backup tool's settings; with a db server, DATABASE_URL
    and the server's certificate from there (`hand_over`). Before the release is
    prepared: its before_switch and migrate commands get DATABASE_URL on the first
    deploy too. Returns the ops that changed DATABASE_URL (the app's units restart on them)."""
    if not app.database:
        files.file(name=f"No DATABASE_URL for {app.app_name} (its database, if any, stays)",
                   path=app.database_env_path, present=False)
        return []
    files.directory(name=f"Create {app.app_root}/secrets (private)", path=f"{app.app_root}/secrets",
                    user="root", group="root", mode="700")
    if app.database_host:
        return hand_over(app)
    return url_from_password(app, "DATABASE_URL", database_url(app.database_name), password_path(app),
                             app.database_env_path, made=role(app))


def password_command(role_name: str, password: str, create: bool = False) -> str:
    """Set the role's password from the root-only file `password` (CREATE the role when
    `create`): the password goes through a pipe, never onto a command line or into the output."""
    verb = f"CREATE ROLE {role_name} LOGIN PASSWORD" if create else f"ALTER ROLE {role_name} PASSWORD"
    return f"printf \"{verb} '%s';\\n\" \"$(cat {password})\" | (cd / && {PSQL})"


def passwords_again_command(apps) -> str:
    """After a restore of the whole cluster (pgBackRest): each app's role gets this host's
    password again, the one its app servers hold (the restored state may carry an older
    one, or, on a replacement db server, another host's); a role the restored state does
    not have is said and left to the next deploy."""
    steps = []
    for app in apps:
        name = app.database_name
        exists = f"[ \"$(cd / && runuser -u postgres -- psql -XAtc \"select 1 from pg_roles where rolname = '{name}'\")\" = 1 ]"
        steps.append(f"if {exists}; then {password_command(name, password_path(app))} && "
                     f"echo 'Set the role {name}'\\''s password (this host'\\''s)'; "
                     f"else echo 'No role {name} in the restored state: the next deploy makes it'; fi")
    return " && ".join(f"{{ {step}; }}" for step in steps) or "true"


def role(app):
    """The app's role, its password (made on this host, root-only), its database and
    the backup tool's settings. Returns the op that made a new password, or None."""
    name, password = app.database_name, password_path(app)
    found = host.get_fact(PostgresqlObjects)
    made = None
    if not host.get_fact(File, path=password):
        # Made on the host and never printed: pyinfra's output shows only the commands.
        made = server.shell(name=f"Generate {app.app_name}'s database password (on the host, root-only)", commands=[
            f"(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {password})"])
    if name not in found["roles"]:
        server.shell(name=f"Create the database role {name}", commands=[password_command(name, password, create=True)])
    elif made:
        server.shell(name=f"Set the database role {name}'s new password", commands=[password_command(name, password)])
    if name not in found["databases"]:
        server.shell(name=f"Create the database {name} (owned by {name}, closed to other roles)", commands=[
            f"(cd / && runuser -u postgres -- createdb -O {name} {name})",
            f"(cd / && {PSQL} -c 'REVOKE ALL ON DATABASE {name} FROM PUBLIC')"])
    files.put(name=f"Write the backup settings of {app.app_name}", src=_json(backup_settings(app)),
              dest=backup_config_path(app), mode="600")
    return made


# An app server whose database is on the db_servers host.

CA_PATH = "/etc/pyinfra-flask/database-server.crt"


def remote_url(app) -> str:
    """The URL handed to the app, `%s` where the password goes: TLS, the server
    verified by its certificate and address."""
    return (f"postgresql://{app.database_name}:%s@{app.database_host}:5432/{app.database_name}"
            f"?sslmode=verify-full&sslrootcert={CA_PATH}")


def hand_over(app) -> list:
    """DATABASE_URL and the db server's certificate, copied from the db server
    (tasks/steps/secrets.py's url_from_server): never printed."""
    return url_from_server(app, "DATABASE_URL", remote_url(app), password_path(app), app.database_env_path,
                           certificate=certificate_paths(app.database_host)[0], ca=CA_PATH)


def backup_settings(app) -> dict:
    """What files/db-backup.py knows of the app: its database, where its backups go and
    how many stay, the units a restore stops and starts again, its health check."""
    return {
        "app": app.app_name,
        "database": app.database_name,
        # pg_dump and pg_restore connect as the app's own role, never as a superuser.
        "role": app.database_name,
        "password_file": password_path(app),
        "socket": SOCKET_DIR,
        "directory": f"{BACKUP_ROOT}/{app.app_name}",
        "keep": app.database_backup_keep,
        "max_age_days": app.database_backup_max_age,
        "service": app.service,
        "workers": app.worker_instances,
        "jobs": [f"{app.unit_prefix(name)}.service" for name in sorted(app.jobs)],
        "timers": [f"{app.unit_prefix(name)}.timer" for name in sorted(app.jobs)] if app.runs_jobs else [],
        "health": healthcheck.spec(app),
        "health_module": healthcheck.MODULE,
    }


def _json(data: dict) -> io.StringIO:
    return io.StringIO(json.dumps(data, indent=2, sort_keys=True) + "\n")
