"""restic (Debian's package) for the apps' `shared_paths` (uploads, `instance/`): each
app server backs them up, encrypted, over SFTP to a repository of the app's on the
`backup_servers` host, which alone can forget and prune (docs/backups.md, "The app's
files").

The same design as pgBackRest's (tasks/steps/pgbackrest.py): on the backup host each
app's repository belongs to the owner `restic`; the app servers log in as the app's
*ingest* user, whose only command is OpenSSH's `sftp-server` (no links, no setstat),
and whose files a root sweep (files/repository-sweep.py) hands over to the owner,
read-only, once complete, after checking that each is named by the SHA-256 of its
contents, as restic names them. The ingest user can add snapshots and read the
repository (encrypted), nothing else; each app's is its own, so no app reads or adds
to another's.

On the app server the backup runs as the app user (it reads what the app wrote;
root never does), sandboxed, its SSH key, the backup host's pinned host key and the
repository's password handed to it by systemd (`LoadCredential=`) from a root-only
directory. The key is made on the app server and never leaves it; the password is
made on the backup host (which needs it to prune and to drill) and copied to the app
servers at execution time, never printed.
"""

from __future__ import annotations

import hashlib
import io
import shlex

from jinja2 import FileSystemLoader
from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import apt, files, python, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES
from tasks.config import inventory, topology
from tasks.config.settings import SANDBOX
from tasks.steps.metrics import TEXTFILE_DIR
from tasks.steps.packages import APT_LOCK_WAIT, DebInstalled
from tasks.steps.pgbackrest import (HOST_KEY, LIB, UNIT_DIR, VERDICT, PublicKey, as_user, install_verdict,
                                    read_public_key, start_timer, sweep_units, timer_unit, write_authorized)
from tasks.steps.secrets import copy_secret, upload_directory

PACKAGES = ("restic", "openssh-client", "python3")  # python3: the sweep and the drill
REPOSITORIES = "/var/lib/pyinfra-flask-restic"  # one repository per app: <it>/<app>
QUARANTINE = "/var/lib/pyinfra-flask-restic-quarantine"
OWNER = "restic"  # owns the repositories: forget, prune, the drill; on the backup host only
SECRETS = "/etc/pyinfra-flask/restic"  # backup host: <app>.password; app server: <app>/ (key, known_hosts, password)
SWEEP_UNIT = "pyinfra-flask-restic-sweep"
PRUNE_UNIT = "pyinfra-flask-restic-prune"
VERIFY = f"{LIB}/restic-verify.py"
VERIFY_UNIT = "pyinfra-flask-restic-verify"
VERIFY_STATE_NAME = "pyinfra-flask-restic-verify"  # StateDirectory=: /var/lib/<it>, the owner's
VERIFY_STATE = f"/var/lib/{VERIFY_STATE_NAME}"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# What restic never asks of its SFTP server (it writes a temporary file, sets its mode, renames it).
DENIED = "symlink,hardlink,setstat,lsetstat,copy-data,rmdir"


def with_includes() -> dict:
    """The app server's two units share their lines (templates/restic-client.j2): a loader
    of templates/ (pyinfra's own reads the cwd), new each time (pyinfra pops it)."""
    return {**JINJA, "loader": FileSystemLoader(str(TEMPLATES))}


def ingest_user(app_name: str) -> str:
    """The app's login on the backup host; within Linux's 32 characters (a name's hash when too long)."""
    name = f"restic-{app_name}"
    return name if len(name) <= 32 else f"restic-{app_name[:16]}-{hashlib.sha256(app_name.encode()).hexdigest()[:8]}"


def repository(app_name: str) -> str:
    return f"{REPOSITORIES}/{app_name}"


def password_path(app_name: str) -> str:
    """On the backup host: the app's repository password (root:restic 640)."""
    return f"{SECRETS}/{app_name}.password"


def client_dir(app_name: str) -> str:
    """On an app server: the app's restic secrets (root's, 700)."""
    return f"{SECRETS}/{app_name}"


def backup_unit(app_name: str) -> str:
    return f"pyinfra-flask-files-{app_name}"


def restore_unit(app_name: str) -> str:
    """The template unit that restores one snapshot (its instance: `latest` or a snapshot id)."""
    return f"pyinfra-flask-files-{app_name}-restore@"


def backed_up(app) -> bool:
    """Whether the app's `shared_paths` are backed up: a backup host in the inventory, shared paths, a schedule."""
    return bool(app.shared_paths and app.files_backup_schedule and topology.backup_server(host))


def served(backup) -> dict[str, list]:
    """{app name: [(app server, app)]} of the apps whose files the backup host keeps, in inventory order."""
    found: dict[str, list] = {}
    for app_server in topology.app_servers(backup):
        for app in inventory.load_apps(app_server, secrets=False):
            if app.shared_paths and app.files_backup_schedule:
                found.setdefault(app.app_name, []).append((app_server, app))
    return found


def install(apt_cache_valid_time: int) -> None:
    """Debian's restic, and ssh (restic's SFTP goes through it)."""
    if set(PACKAGES) - set(host.get_fact(DebInstalled, packages=PACKAGES)):
        apt.update(name="Refresh the package index if older than apt_cache_valid_time (restic)",
                   cache_time=apt_cache_valid_time)
    apt.packages(name="Install restic (the apps' files' backups)", packages=list(PACKAGES), no_recommends=True,
                 extra_install_args=APT_LOCK_WAIT)


def make_key(app) -> None:
    """On an app server: the app's SSH key for the backup host, made here (root's; it never
    leaves the host), in a directory root's alone until `client()` lets the app's group read it
    (the app user is made later in the run)."""
    directory = client_dir(app.app_name)
    files.directory(name=f"Create {SECRETS}", path=SECRETS, user="root", group="root", mode="755")
    if not host.get_fact(File, path=f"{directory}/id_ed25519"):
        server.shell(name=f"Make {app.app_name}'s SSH key for its file backups (on the host; it never leaves it)",
                     commands=[f"install -d -o root -g root -m 700 {directory}",
                               f"[ -f {directory}/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' "
                               f"-C {shlex.quote(f'{app.app_name}@{host.name}')} -f {directory}/id_ed25519"])


# On the backup host.

def authorized_lines(keys: list[str], app_name: str) -> str:
    """The ingest user's authorized_keys: each app server's key, SFTP in the app's repository only."""
    command = f"{SFTP_SERVER} -d {repository(app_name)} -P {DENIED} -u 0027"
    return "".join(f'restrict,command="{command}" {key}\n' for key in keys)


def init_command(app_name: str) -> str:
    """The app's repository made (as the owner), then readable by its ingest user's group and, where
    restic adds files, writable for it and sticky (the sweep keeps it so)."""
    repo, group = repository(app_name), ingest_user(app_name)
    restic = f"restic --repo {repo} --password-file {password_path(app_name)} --cache-dir /nonexistent --no-cache"
    return (f"{as_user(OWNER, f'{restic} --quiet init')} && chgrp -R {group} {repo} && "
            f"chmod 2750 {repo} {repo}/keys {repo}/data && chmod 0440 {repo}/config {repo}/keys/* && "
            f"chmod 3770 {repo}/data/* {repo}/index {repo}/snapshots {repo}/locks")


def repositories(own, apps: dict[str, list]) -> None:
    """On the backup host: the owner, and for each app (`apps`: `served()`) its ingest user, its
    password (made here), its repository, its app servers' keys let in; the sweep, the prune
    and the drill."""
    server.group(name=f"Create the group {OWNER}", group=OWNER, system=True)
    server.user(name=f"Create the restic repositories' owner {OWNER}", user=OWNER, group=OWNER, home=REPOSITORIES,
                create_home=False, ensure_home=False, shell="/usr/sbin/nologin", system=True)
    files.directory(name=f"Create {REPOSITORIES} (root's; each app's repository in it its own)",
                    path=REPOSITORIES, user="root", group="root", mode="711")
    files.directory(name=f"Create {QUARANTINE} (root-only: what the sweep takes out of the repositories)",
                    path=QUARANTINE, user="root", group="root", mode="700")
    files.directory(name=f"Create {SECRETS} (the repositories' passwords)", path=SECRETS, user="root",
                    group=OWNER, mode="750")
    for app_name, running in apps.items():
        ingest = ingest_user(app_name)
        server.group(name=f"Create the group {ingest}", group=ingest, system=True)
        server.user(name=f"Create {app_name}'s ingest user {ingest} (adds to its repository, nothing else)",
                    user=ingest, group=ingest, home=f"/home/{ingest}", create_home=False, ensure_home=False,
                    shell="/bin/sh", system=True)
        for path in (f"/home/{ingest}", f"/home/{ingest}/.ssh"):
            files.directory(name=f"Create {path} (root's: {ingest} changes nothing there)", path=path,
                            user="root", group="root", mode="755")
        password = password_path(app_name)
        if not host.get_fact(File, path=password):
            server.shell(name=f"Make {app_name}'s repository password ({password}; never shown)", commands=[
                f"[ -f {password} ] || (umask 037; head -c 48 /dev/urandom | base64 -w0 > {password}.new && "
                f"chgrp {OWNER} {password}.new && mv {password}.new {password})"])
        files.directory(name=f"Create {app_name}'s repository {repository(app_name)}", path=repository(app_name),
                        user=OWNER, group=ingest, mode="2750")
        if not host.get_fact(File, path=f"{repository(app_name)}/config"):
            server.shell(name=f"Make {app_name}'s restic repository (as {OWNER})", commands=[init_command(app_name)])
        keys = [(app_server, app_server.get_fact(PublicKey, path=f"{client_dir(app_name)}/id_ed25519.pub"))
                for app_server, _ in running]
        authorized = f"/home/{ingest}/.ssh/authorized_keys"
        if all(key for _, key in keys):
            files.put(name=f"Let {app_name}'s app servers in as {ingest}, SFTP in its repository only ({authorized})",
                      src=io.StringIO(authorized_lines([key for _, key in keys], app_name)), dest=authorized,
                      user="root", group="root", mode="644")
        else:
            python.call(name=f"Let {app_name}'s app servers in as {ingest}, SFTP in its repository only "
                             f"({authorized}; their keys read from them now)",
                        function=_authorize_now, servers=[app_server for app_server, _ in running], target=host,
                        app_name=app_name, authorized=authorized)
    _units(own, apps)


def _authorize_now(servers, target, app_name: str, authorized: str) -> None:
    """At execution time (the keys were made in this run): every app server's public key, read there."""
    keys = [read_public_key(app_server, f"{client_dir(app_name)}/id_ed25519.pub") for app_server in servers]
    write_authorized(target, authorized_lines(keys, app_name), authorized, "root")


def _units(own, apps: dict[str, list]) -> None:
    """The sweep (every few seconds), the prune and the drill (on their schedules), as units."""
    names = list(apps)
    keep = {"hourly": own.files_keep_hourly, "daily": own.files_keep_daily, "weekly": own.files_keep_weekly}
    common = {"owner": OWNER, "apps": [(name, repository(name), password_path(name), ingest_user(name))
                                       for name in names], "verdict": VERDICT, "textfile_dir": TEXTFILE_DIR}
    changes = [
        *sweep_units(SWEEP_UNIT, "restic-sweep.service.j2", "the restic repositories", QUARANTINE, **common),
        files.template(jinja_env_kwargs=JINJA, name=f"Write {PRUNE_UNIT}.service", src=str(
            TEMPLATES / "restic-prune.service.j2"), dest=f"{UNIT_DIR}/{PRUNE_UNIT}.service", mode="644",
            keep={kind: count for kind, count in keep.items() if count}, **common),
        files.put(name="Install the files drill (files/restic-verify.py)", src=str(REPO_ROOT / "files/restic-verify.py"),
                  dest=VERIFY, mode="755", create_remote_dir=True),
        files.template(jinja_env_kwargs=JINJA, name=f"Write the files drill's service ({VERIFY_UNIT}.service)",
                       src=str(TEMPLATES / "restic-verify.service.j2"), dest=f"{UNIT_DIR}/{VERIFY_UNIT}.service",
                       mode="644", script=VERIFY, state=VERIFY_STATE, state_name=VERIFY_STATE_NAME, **common),
    ]
    timers = {
        SWEEP_UNIT: (changes[2], True),
        PRUNE_UNIT: (timer_unit(f"{PRUNE_UNIT}.timer", own.files_prune_schedule, "restic.timer.j2",
                                unit=PRUNE_UNIT, what="forget and prune the apps' file snapshots"), True),
        VERIFY_UNIT: (timer_unit(f"{VERIFY_UNIT}.timer", own.files_verify_schedule, "restic.timer.j2",
                                 off="no files_verify_schedule", unit=VERIFY_UNIT,
                                 what="the files drill"), bool(own.files_verify_schedule)),
    }
    changes += [op for op, _ in timers.values()]
    systemd.daemon_reload(name="Reload systemd (restic's units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    for unit, (op, scheduled) in timers.items():
        if scheduled:
            start_timer(f"{unit}.timer", op)


# On an app server.

def client(app) -> list:
    """On an app server: the app's repository password (from the backup host), the backup
    host's pinned host key, the backup service and timer, the restore unit. Returns the ops
    that wrote them. Without a backup (`backed_up()` false): the units removed."""
    name = backup_unit(app.app_name)
    paths = [f"{UNIT_DIR}/{name}.service", f"{UNIT_DIR}/{restore_unit(app.app_name)}.service"]
    if not backed_up(app):
        if not any(host.get_fact(File, path=path) for path in [*paths, f"{UNIT_DIR}/{name}.timer"]):
            return []
        changes = [timer_unit(f"{name}.timer", None, "restic.timer.j2", off="no file backups"),
                   *(files.file(name=f"Remove {path}", path=path, present=False) for path in paths)]
        systemd.daemon_reload(name=f"Reload systemd ({app.app_name}'s file backups removed)",
                              _if=lambda: any(op.did_change() for op in changes))
        return changes
    backup = topology.backup_server(host)
    own = inventory.load_apps(backup, secrets=False)[0]
    directory = client_dir(app.app_name)
    # Root's, readable by the app's group: the backup runs as the app user.
    files.directory(name=f"Let {app.app_user} read {directory} (its file backups' key and password)",
                    path=directory, user="root", group=app.app_user, mode="750")
    files.file(name=f"Let {app.app_user} read its file backups' SSH key", path=f"{directory}/id_ed25519",
               user="root", group=app.app_user, mode="640", touch=False)
    source, mine = password_path(app.app_name), f"{directory}/password"
    wanted = backup.get_fact(Sha1File, path=source)
    if wanted is None or wanted != host.get_fact(Sha1File, path=mine):
        python.call(name=f"Hand {app.app_name} its file backups' repository password (from {backup.name}, "
                         "contents not shown)",
                    function=copy_secret, source=backup, target=host, path=source, dest=mine, mode="640",
                    group=app.app_user, directories=(upload_directory(backup), upload_directory(host)))
    host_key = backup.get_fact(PublicKey, path=HOST_KEY)
    if host_key is None:
        raise DeployError(f"{backup.name}: no {HOST_KEY} to pin for the file backups' SSH; nothing was changed.")
    shared = f"{app.app_root}/shared"
    values = {
        "app": app.app_name, "app_user": app.app_user, "host_name": host.name, "shared": shared, "secrets": directory,
        "repository": f"sftp:{ingest_user(app.app_name)}@{own.private_address}:{repository(app.app_name)}",
        "paths": [path.rstrip("/") for path in app.shared_paths],
        "conditions": [f"ConditionDirectoryNotEmpty=|{shared}/{path.rstrip('/')}" if path.endswith("/") else
                       f"ConditionFileNotEmpty=|{shared}/{path}" for path in app.shared_paths],
        "scratch": f"/var/cache/pyinfra-flask-restic-{app.app_name}/restore",  # the unit's CacheDirectory=
        "verdict": VERDICT, "textfile_dir": TEXTFILE_DIR, "sandbox": SANDBOX,
        # restic's SFTP: this key only, the pinned host key only, never a prompt.
        "ssh": f"ssh -F none -i {directory}/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
               f"-o UserKnownHostsFile={directory}/known_hosts "
               f"-o StrictHostKeyChecking=yes -o UpdateHostKeys=no {ingest_user(app.app_name)}@{own.private_address} "
               "-s sftp",
    }
    changes = [
        files.put(name=f"Pin {backup.name}'s SSH host key for {app.app_name}'s file backups",
                  src=io.StringIO(f"{own.private_address} {host_key}\n"), dest=f"{directory}/known_hosts",
                  user="root", group=app.app_user, mode="640"),
        install_verdict(),
        files.template(jinja_env_kwargs=with_includes(), name=f"Write {name}.service (restic, as {app.app_user})",
                       src=str(TEMPLATES / "restic-backup.service.j2"), dest=paths[0], mode="644", **values),
        files.template(jinja_env_kwargs=with_includes(),
                       name=f"Write {restore_unit(app.app_name)}.service (ops.py restore-files)",
                       src=str(TEMPLATES / "restic-restore.service.j2"), dest=paths[1], mode="644", **values),
    ]
    made = timer_unit(f"{name}.timer", app.files_backup_schedule, "restic.timer.j2", unit=name,
                      what=f"back up {app.app_name}'s shared_paths")
    changes.append(made)
    systemd.daemon_reload(name=f"Reload systemd ({app.app_name}'s file backup units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    start_timer(f"{name}.timer", made)
    return changes


def repository_units(own) -> dict[str, str]:
    """The backup host's restic units its watch alerts on: a timer must run, a service must not have failed."""
    units = {f"{SWEEP_UNIT}.timer": "the restic repositories' sweep timer",
             f"{SWEEP_UNIT}.service": "the last sweep of the restic repositories",
             f"{PRUNE_UNIT}.timer": "the file snapshots' prune timer", f"{PRUNE_UNIT}.service": "the last prune"}
    if own.files_verify_schedule:
        units[f"{VERIFY_UNIT}.timer"] = "the files drill's timer"
        units[f"{VERIFY_UNIT}.service"] = "the last files drill"
    return units


def watched_units(apps) -> dict[str, str]:
    """The file backups' units the app server's watch alerts on (tasks/steps/watch.py): the
    timer must run, the service must not have failed."""
    units = {}
    for app in apps:
        if backed_up(app):
            units[f"{backup_unit(app.app_name)}.timer"] = f"the file backups' timer of {app.app_name}"
            units[f"{backup_unit(app.app_name)}.service"] = f"the last file backup of {app.app_name}"
    return units


def restic_command(app_name: str, arguments: str) -> str:
    """restic on the backup host, as the owner, on the app's repository (ops.py)."""
    return as_user(OWNER, f"restic --repo {repository(app_name)} --password-file {password_path(app_name)} "
                          f"--no-cache {arguments}")
