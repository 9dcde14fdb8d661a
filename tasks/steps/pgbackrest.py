"""pgBackRest (Debian's package) between the db server and the `backup_servers` host:
its standard "dedicated repository host" design (docs/backups.md).

On the db server PostgreSQL archives every WAL segment with `pgbackrest archive-push`
(at least every `pgbackrest_archive_timeout` s): `postgres` logs in to the backup host
over SSH as the *ingest* user, whose only command is pgBackRest's remote
(files/pgbackrest-ssh.py). The repository belongs to another user, the *owner*, who
alone takes, expires and lists backups (systemd timers on the backup host; it logs in
to the db server as `postgres`, again with pgBackRest's remote as its only command).
The ingest user can only add: the archive's directories are sticky and group-writable
for it, and a root sweep every few seconds (files/repository-sweep.py) hands each file
it completed over to the owner, read-only. Each side's SSH key is made on its host and
never leaves it; the public keys are read from the other host (a fact, or at
execution time on the first deploy, when they are made) and written into
authorized_keys with `restrict` and the forced command; host keys are pinned.
"""

from __future__ import annotations

import io
import os
import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, python, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES, render
from tasks.config import platform
from tasks.steps.database import version
from tasks.steps.metrics import TEXTFILE_DIR
from tasks.steps.packages import APT_LOCK_WAIT, DebInstalled
from tasks.steps.secrets import put_secret

STANZA = "main"
CONFIG = "/etc/pgbackrest.conf"
REPOSITORY = "/var/lib/pgbackrest"
QUARANTINE = "/var/lib/pyinfra-flask-pgbackrest-quarantine"
OWNER = "pgbackrest"  # owns the repository: backup, expire, info; runs on the backup host only
INGEST = "pgbackrest-ingest"  # the db server's login: pgBackRest's remote, able to add files only
OWNER_HOME = "/home/pgbackrest"
INGEST_HOME = "/home/pgbackrest-ingest"
POSTGRES_HOME = "/var/lib/postgresql"
LIB = "/usr/local/lib/pyinfra-flask"
GUARD = f"{LIB}/pgbackrest-ssh.py"
SWEEP = f"{LIB}/repository-sweep.py"  # shared with tasks/steps/restic.py
OLD_SWEEP = f"{LIB}/pgbackrest-sweep.py"  # its name until the restic repositories shared it
UNIT_DIR = "/etc/systemd/system"
BACKUP_SERVICE = "pyinfra-flask-pgbackrest@.service"
SWEEP_UNIT = "pyinfra-flask-pgbackrest-sweep"
SWEEP_SECONDS = 10
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
KINDS = ("full", "diff")
VERIFY = f"{LIB}/pgbackrest-verify.py"
VERDICT = f"{LIB}/unit-failed-metric.sh"  # ExecStopPost of the backup and drill units
VERIFY_UNIT = "pyinfra-flask-pgbackrest-verify"
VERIFY_STATE_NAME = "pyinfra-flask-pgbackrest-verify"  # StateDirectory=: /var/lib/<it>, the owner's
VERIFY_STATE = f"/var/lib/{VERIFY_STATE_NAME}"
VERIFY_QUERY = "/etc/pyinfra-flask/pgbackrest-verify.sql"
CREATECLUSTER = "/etc/postgresql-common/createcluster.conf"
S3_CA = "/etc/pgbackrest-s3-ca.crt"
PACKAGES = ("pgbackrest", "python3")


def timer(kind: str) -> str:
    return f"pyinfra-flask-pgbackrest-{kind}.timer"


def archive_command() -> str:
    return f"pgbackrest --stanza={STANZA} archive-push %p"


def pg_version(db) -> int:
    """The db server's PostgreSQL major version (its distribution's)."""
    return version(platform.detect(db))


def pg_path(db) -> str:
    """The db server's data directory (Debian's cluster `main` of its PostgreSQL)."""
    return f"/var/lib/postgresql/{pg_version(db)}/main"


def as_user(user: str, command: str) -> str:
    """`command` (a pgbackrest command line) as `user`, from a directory every user may enter."""
    return f"cd / && runuser -u {user} -- {command}"


def key_path(home: str) -> str:
    return f"{home}/.ssh/id_ed25519"


class PublicKey(FactBase):
    """A public key file's one line (`type base64`, comment dropped), or None."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null; true"

    def process(self, output: list[str]) -> str | None:
        words = " ".join(output).split()
        return " ".join(words[:2]) if len(words) >= 2 and words[0].startswith("ssh-") else None


class StanzaMade(FactBase):
    """Whether stanza-create ran: its backup.info in the repository on this host's disk, or,
    for a repository elsewhere (S3), pgBackRest's `info` finding the stanza there (status
    0, ok, or 2, no valid backup yet)."""

    def command(self) -> str:
        return (f"if test -f {REPOSITORY}/backup/{STANZA}/backup.info; then echo yes; elif grep -qs '^repo1-type=s3' "
                f"{CONFIG}; then {as_user(OWNER, f'pgbackrest --stanza={STANZA} --output=json info')} 2>/dev/null "
                "| tr -d ' \\n' | grep -Eq '\"status\":\\{\"code\":(0|2),' && echo yes; fi; true")

    def process(self, output: list[str]) -> bool:
        return output[:1] == ["yes"]


def authorized_line(public_key: str, role: str) -> str:
    """The authorized_keys line of the other host's key: no pty, no forwarding, and
    the guard (files/pgbackrest-ssh.py) as its only command, whatever the client asks."""
    return f'restrict,command="/usr/bin/python3 -I -S {GUARD} {role}" {public_key}\n'


def known_hosts_line(address: str, host_key: str) -> str:
    return f"{address} {host_key}\n"


def ssh_config(address: str, known: str) -> str:
    """The user's ~/.ssh/config: the other host by its pinned key only, and ssh never
    adding keys to that file (UpdateHostKeys), so a second deploy changes nothing."""
    return (f"# Written by the pyinfra deploy (tasks/steps/pgbackrest.py): pgBackRest's SSH.\n"
            f"Host {address}\n    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n"
            f"    UpdateHostKeys no\n")


def install(apt_cache_valid_time: int, repository: bool) -> None:
    """Debian's pgbackrest (it brings postgresql-common, and so the `postgres` user), and
    python3 for the guard (and the sweep).
    Two operations, one per side, so that the two hosts never run apt at once (throwaway
    hosts share one package cache)."""
    if set(PACKAGES) - set(host.get_fact(DebInstalled, packages=PACKAGES)):
        apt.update(name="Refresh the package index if older than apt_cache_valid_time", cache_time=apt_cache_valid_time)
    if repository:
        apt.packages(name="Install pgBackRest (the repository host's)", packages=list(PACKAGES), no_recommends=True,
                     extra_install_args=APT_LOCK_WAIT)
    else:
        apt.packages(name="Install pgBackRest (the db server's)", packages=list(PACKAGES), no_recommends=True,
                     extra_install_args=APT_LOCK_WAIT)
    files.put(name="Install the pgBackRest SSH guard (the forced command of its logins)",
              src=str(REPO_ROOT / "files/pgbackrest-ssh.py"), dest=GUARD, mode="755", create_remote_dir=True)


def make_key(user: str, home: str) -> None:
    """`user`'s SSH key, made on this host (the private key never leaves it)."""
    files.directory(name=f"Create {home}/.ssh ({user}'s)", path=f"{home}/.ssh", user=user, group=user, mode="700")
    if not host.get_fact(File, path=key_path(home)):
        server.shell(name=f"Make {user}'s SSH key (on the host; the private key never leaves it)", commands=[
            f"[ -f {key_path(home)} ] || (cd / && runuser -u {user} -- ssh-keygen -q -t ed25519 -N '' "
            f"-C {user}@{shlex.quote(host.name)} -f {key_path(home)})"])


def trust(other, user: str, public: str, role: str, authorized: str, owner: str, home: str,
          home_owner: str, address: str) -> None:
    """On this host: the `other` host's key `public` (its `user`'s) in `authorized`
    (owned by `owner`) with the guard for `role`, and the other host's host key for
    `address` pinned for `home_owner` (whose home is `home`), who connects there. On
    the first deploy the key is made during the run: read then, at execution time, from
    the other host."""
    host_key = other.get_fact(PublicKey, path=HOST_KEY)
    if host_key is None:
        raise DeployError(f"{other.name}: no {HOST_KEY} to pin for pgBackRest's SSH; nothing was changed.")
    known = f"{home}/.ssh/pgbackrest_known_hosts"
    files.put(name=f"Pin {other.name}'s SSH host key for pgBackRest ({known})",
              src=io.StringIO(known_hosts_line(address, host_key)), dest=known, user=home_owner,
              group=home_owner, mode="644")
    files.put(name=f"Connect to {other.name} by that key only ({home}/.ssh/config)",
              src=io.StringIO(ssh_config(address, known)), dest=f"{home}/.ssh/config", user=home_owner,
              group=home_owner, mode="644")
    key = other.get_fact(PublicKey, path=f"{public}.pub")
    if key is not None:
        files.put(name=f"Let {other.name}'s {user} in, for pgBackRest's {role} remote only ({authorized})",
                  src=io.StringIO(authorized_line(key, role)), dest=authorized, user=owner, group=owner, mode="644")
    else:
        python.call(name=f"Let {other.name}'s {user} in, for pgBackRest's {role} remote only ({authorized}; "
                         "its key read from there now)",
                    function=_trust_now, other=other, target=host, public=f"{public}.pub", role=role,
                    authorized=authorized, owner=owner)


def _trust_now(other, target, public: str, role: str, authorized: str, owner: str) -> None:
    write_authorized(target, authorized_line(read_public_key(other, public), role), authorized, owner)


def read_public_key(other, public: str) -> str:
    """At execution time: the public key file `public` of the host `other` (`type base64`)."""
    ok, output = other.run_shell_command(f"cat {shlex.quote(public)}", _sudo=bool(other.data.get("_sudo")))
    words = " ".join(output.stdout_lines).split() if ok else []
    if len(words) < 2 or not words[0].startswith("ssh-"):
        raise DeployError(f"Could not read {public} on {other.name}")
    return " ".join(words[:2])


def write_authorized(target, text: str, authorized: str, owner: str) -> None:
    """At execution time: `text` as the authorized_keys file `authorized` of `target`, `owner`'s, 644."""
    command = (f"(umask 022; printf %s {shlex.quote(text)} > {authorized}.new) && chown {owner}:{owner} "
               f"{authorized}.new && mv -f {authorized}.new {authorized}")
    if not target.run_shell_command(command, _sudo=bool(target.data.get("_sudo")))[0]:
        raise DeployError(f"Could not write {authorized} on {target.name}")


def database_config(backup_address: str, pg_path: str):
    """The db server's /etc/pgbackrest.conf: the repository is the backup host, reached as the ingest user."""
    return files.template(jinja_env_kwargs=JINJA, name=f"Write {CONFIG} (the repository: the backup host)",
                          src=str(TEMPLATES / "pgbackrest-db.conf.j2"), dest=CONFIG, user="root",
                          group="postgres", mode="640", stanza=STANZA, repo_host=backup_address, ingest=INGEST,
                          pg_path=pg_path)


def database_side(other, backup_address: str, pg_path: str) -> None:
    """On the db server: the config, and the backup host's owner let in as `postgres` (pgBackRest's pg remote)."""
    database_config(backup_address, pg_path)
    ssh = f"{POSTGRES_HOME}/.ssh"
    trust(other, OWNER, key_path(OWNER_HOME), "pg", f"{ssh}/authorized_keys", "postgres", POSTGRES_HOME,
          "postgres", backup_address)


def users() -> None:
    """On the backup host: the repository's owner (its group is the repository's) and
    the ingest user (in that group, its home and authorized_keys root's: it cannot
    change what it may run)."""
    server.group(name=f"Create the group {OWNER}", group=OWNER, system=True)
    server.user(name=f"Create the repository owner {OWNER}", user=OWNER, group=OWNER, home=OWNER_HOME,
                create_home=True, shell="/bin/sh", system=True)
    server.user(name=f"Create the ingest user {INGEST} (adds to the repository, nothing else)", user=INGEST,
                group=OWNER, home=INGEST_HOME, create_home=False, ensure_home=False, shell="/bin/sh", system=True)
    files.directory(name=f"Create {INGEST_HOME} (root's: the ingest user changes nothing there)", path=INGEST_HOME,
                    user="root", group="root", mode="755")
    files.directory(name=f"Create {INGEST_HOME}/.ssh (root's)", path=f"{INGEST_HOME}/.ssh", user="root",
                    group="root", mode="755")


def install_sweep():
    """The repositories' sweep (files/repository-sweep.py), pgBackRest's and restic's; the
    file of its old name removed."""
    files.file(name=f"Remove {OLD_SWEEP} (now {SWEEP})", path=OLD_SWEEP, present=False)
    return files.put(name="Install the repository sweep (hands the ingest users' files to the owner)",
                     src=str(REPO_ROOT / "files/repository-sweep.py"), dest=SWEEP, mode="755", create_remote_dir=True)


def install_verdict():
    """The units' verdict for the monitoring host (files/unit-failed-metric.sh, their ExecStopPost)."""
    return files.put(name="Install the units' verdict for the monitoring host (unit-failed-metric.sh)",
                     src=str(REPO_ROOT / "files/unit-failed-metric.sh"), dest=VERDICT, mode="755",
                     create_remote_dir=True)


def sweep_units(unit: str, template: str, what: str, quarantine: str, **values) -> list:
    """The sweep installed, its service `unit` (templates/`template` with `values`) and its
    timer (every SWEEP_SECONDS s, sweeping `what`), and the units' verdict: the ops, the
    timer's third."""
    return [
        install_sweep(),
        files.template(jinja_env_kwargs=JINJA, name=f"Write {unit}.service", src=str(TEMPLATES / template),
                       dest=f"{UNIT_DIR}/{unit}.service", mode="644", sweep=SWEEP, quarantine=quarantine, **values),
        files.template(jinja_env_kwargs=JINJA, name=f"Write {unit}.timer (every {SWEEP_SECONDS} s)",
                       src=str(TEMPLATES / "pgbackrest-sweep.timer.j2"), dest=f"{UNIT_DIR}/{unit}.timer",
                       mode="644", seconds=SWEEP_SECONDS, unit=unit, what=what),
        install_verdict(),
    ]


def repository_config(own, db_address: str, pg_path: str):
    """The backup host's /etc/pgbackrest.conf: the repository (this host's disk, or an S3
    bucket: its key's secret in it, so the file is written as a secret, root:pgbackrest 640,
    never shown), the retention, the db server."""
    context = {"stanza": STANZA, "repository": REPOSITORY, "s": own, "pg_host": db_address, "pg_path": pg_path}
    if own.pgbackrest_repository != "s3":
        return files.template(jinja_env_kwargs=JINJA, name=f"Write {CONFIG} (the repository, retention, the db server)",
                              src=str(TEMPLATES / "pgbackrest-repo.conf.j2"), dest=CONFIG, user="root",
                              group="root", mode="644", s3_secret=None, ca_file=None, **context)
    ca_file = None
    if own.pgbackrest_s3_ca_file:
        ca_file = S3_CA
        files.put(name=f"Install the S3 endpoint's CA certificates ({S3_CA})",
                  src=str(own.local_path(own.pgbackrest_s3_ca_file)), dest=S3_CA, mode="644")
    else:
        files.file(name=f"No {S3_CA} (the system's CAs)", path=S3_CA, present=False)
    text = render("pgbackrest-repo.conf.j2", s3_secret=s3_secret(own), ca_file=ca_file, **context)
    return put_secret(name=f"Write {CONFIG} (the S3 repository, its key's secret not shown; retention, the db server)",
                      src=text.encode(), dest=CONFIG, user="root", group=OWNER, mode="640")


def s3_secret(own) -> str:
    """The S3 key's secret: the setting, or the laptop's environment variable it names."""
    if own.pgbackrest_s3_key_secret_from:
        return os.environ[own.pgbackrest_s3_key_secret_from]
    return own.pgbackrest_s3_key_secret


def backup_side(other, own, db_address: str, pg_path: str) -> None:
    """On the backup host: the repository (the owner's, the archive sticky and writable
    for the ingest user's group), the config, the db server's `postgres` let in as the
    ingest user, the sweep, the stanza, the timers."""
    files.directory(name=f"Create the repository {REPOSITORY} (the owner's; the group reads it)",
                    path=REPOSITORY, user=OWNER, group=OWNER, mode="750")
    files.directory(name=f"Create {QUARANTINE} (root-only: what the sweep takes out of the repository)",
                    path=QUARANTINE, user="root", group="root", mode="700")
    files.directory(name="Create /var/log/pgbackrest (the owner's)", path="/var/log/pgbackrest", user=OWNER,
                    group=OWNER, mode="750")
    repository_config(own, db_address, pg_path)
    trust(other, "postgres", key_path(POSTGRES_HOME), "ingest", f"{INGEST_HOME}/.ssh/authorized_keys", "root",
          OWNER_HOME, OWNER, db_address)
    changes = [
        *sweep_units(SWEEP_UNIT, "pgbackrest-sweep.service.j2", "the pgBackRest repository", QUARANTINE,
                     repository=REPOSITORY, owner=OWNER, ingest=INGEST),
        files.template(jinja_env_kwargs=JINJA, name=f"Write the backup service ({BACKUP_SERVICE})",
                       src=str(TEMPLATES / "pgbackrest-backup.service.j2"), dest=f"{UNIT_DIR}/{BACKUP_SERVICE}",
                       mode="644", stanza=STANZA, owner=OWNER, verdict=VERDICT, textfile_dir=TEXTFILE_DIR),
    ]
    schedules = {"full": own.pgbackrest_full_schedule, "diff": own.pgbackrest_diff_schedule}
    timers = {kind: timer_unit(timer(kind), schedule, "pgbackrest-backup.timer.j2", kind=kind)
              for kind, schedule in schedules.items()}
    changes += timers.values()
    systemd.daemon_reload(name="Reload systemd (pgBackRest's units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    # The sweep first: the archive's directories are made sticky and writable for the ingest user by it.
    systemd.service(name=f"Run {SWEEP_UNIT}.timer", service=f"{SWEEP_UNIT}.timer", running=True, enabled=True)
    if not host.get_fact(StanzaMade):
        # Then `check`: a WAL switch on the db server, archived here, or the deploy fails saying why.
        server.shell(name=f"Create the pgBackRest stanza {STANZA} and check that WAL arrives (as {OWNER})", commands=[
            as_user(OWNER, f"pgbackrest --stanza={STANZA} --log-level-console=warn stanza-create"),
            f"systemctl start {SWEEP_UNIT}.service",
            as_user(OWNER, f"pgbackrest --stanza={STANZA} --log-level-console=warn check")])
    for kind, op in timers.items():
        if schedules[kind]:
            start_timer(timer(kind), op)


def timer_unit(name: str, schedule: str | None, template: str, off: str = "no schedule", **values):
    """The timer `name` on the calendar `schedule` (templates/`template` with `values`); with
    no schedule (`off` says which setting), stopped if it is there and its file removed.
    Returns the op that wrote or removed the file."""
    path = f"{UNIT_DIR}/{name}"
    if schedule:
        return files.template(jinja_env_kwargs=JINJA, name=f"Write {name} ({schedule})", src=str(TEMPLATES / template),
                              dest=path, mode="644", schedule=schedule, **values)
    if host.get_fact(File, path=path):
        server.shell(name=f"Stop {name} ({off})", commands=[f"systemctl disable --now {name}"])
    return files.file(name=f"Remove {name}", path=path, present=False)


def start_timer(name: str, written) -> None:
    """Enable the timer `name` and start it again when `written` (its file) changed."""
    server.shell(name=f"Start {name} (and at boot)", commands=[f"systemctl enable {name}", f"systemctl restart {name}"],
                 _if=written.did_change)


def verify_unit_lines(own, database: str, pg_version: int) -> dict:
    """The restore drill's service template's values (templates/pgbackrest-verify.service.j2)."""
    return {"owner": OWNER, "stanza": STANZA, "script": VERIFY, "bin": f"/usr/lib/postgresql/{pg_version}/bin",
            "database": database, "version": pg_version, "state": VERIFY_STATE, "state_name": VERIFY_STATE_NAME,
            "query_file": VERIFY_QUERY if own.pgbackrest_verify_query else None, "verdict": VERDICT,
            "textfile_dir": TEXTFILE_DIR}


def verify_side(own, database: str, pg_version: int) -> None:
    """On the backup host: the restore drill (files/pgbackrest-verify.py) and its timer,
    with the db server's PostgreSQL server binaries from the distribution (no cluster of
    their own: `create_main_cluster = false` first); `pgbackrest_verify_schedule = null`:
    the timer and the service removed."""
    service, unit_timer = f"{UNIT_DIR}/{VERIFY_UNIT}.service", f"{VERIFY_UNIT}.timer"
    schedule = own.pgbackrest_verify_schedule
    if not schedule:
        changes = [timer_unit(unit_timer, None, "pgbackrest-verify.timer.j2", off="no pgbackrest_verify_schedule"),
                   *(files.file(name=f"Remove {path}", path=path, present=False) for path in (service, VERIFY_QUERY))]
        systemd.daemon_reload(name="Reload systemd (the restore drill removed)",
                              _if=lambda: any(op.did_change() for op in changes))
        return
    files.line(name=f"No PostgreSQL cluster made by package installs here ({CREATECLUSTER})", path=CREATECLUSTER,
               line=r"^#?\s*create_main_cluster\s*=.*$", replace="create_main_cluster = false")
    server_package = f"postgresql-{pg_version}"
    if server_package not in host.get_fact(DebInstalled, packages=(server_package,)):
        apt.update(name="Refresh the package index if older than apt_cache_valid_time (for the restore drill)",
                   cache_time=own.apt_cache_valid_time)
    apt.packages(name=f"Install PostgreSQL {pg_version}'s server binaries (the restore drill's)",
                 packages=[server_package], no_recommends=True, extra_install_args=APT_LOCK_WAIT)
    query = own.pgbackrest_verify_query
    changes = [
        files.put(name="Install the restore drill (files/pgbackrest-verify.py)",
                  src=str(REPO_ROOT / "files/pgbackrest-verify.py"), dest=VERIFY, mode="755",
                  create_remote_dir=True),
        files.put(name=f"Write the restore drill's query ({VERIFY_QUERY})", src=io.StringIO(query + "\n"),
                  dest=VERIFY_QUERY, user="root", group=OWNER, mode="640", create_remote_dir=True) if query else
        files.file(name=f"Remove {VERIFY_QUERY} (no pgbackrest_verify_query)", path=VERIFY_QUERY, present=False),
        files.template(jinja_env_kwargs=JINJA, name=f"Write the restore drill's service ({VERIFY_UNIT}.service)",
                       src=str(TEMPLATES / "pgbackrest-verify.service.j2"), dest=service, mode="644",
                       **verify_unit_lines(own, database, pg_version)),
    ]
    made = timer_unit(unit_timer, schedule, "pgbackrest-verify.timer.j2", unit=VERIFY_UNIT)
    changes.append(made)
    systemd.daemon_reload(name="Reload systemd (the restore drill's units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    start_timer(unit_timer, made)


def watched_units(own) -> dict[str, str]:
    """The backup host's pgBackRest units its watch alerts on (tasks/steps/watch.py): a timer
    must run, a service must not have failed."""
    units = {f"{SWEEP_UNIT}.timer": "the pgBackRest repository's sweep timer",
             f"{SWEEP_UNIT}.service": "the last sweep of the pgBackRest repository"}
    schedules = {"full": own.pgbackrest_full_schedule, "diff": own.pgbackrest_diff_schedule}
    for kind in KINDS:
        if schedules[kind]:
            units[timer(kind)] = f"the {kind} backups' timer"
            units[BACKUP_SERVICE.replace("@", f"@{kind}")] = f"the last {kind} backup"
    if own.pgbackrest_verify_schedule:
        units[f"{VERIFY_UNIT}.timer"] = "the restore drill's timer"
        units[f"{VERIFY_UNIT}.service"] = "the last restore drill"
    return units


def restore_command(target: str | None) -> str:
    """The restore on the db server, as `postgres`, PostgreSQL stopped: the latest
    state, or the state at `target` (a time PostgreSQL reads), then promoted."""
    kind = f"--type=time --target={shlex.quote(target)} --target-action=promote" if target else "--type=default"
    return as_user("postgres", f"pgbackrest --stanza={STANZA} --delta {kind} --log-level-console=warn restore")

