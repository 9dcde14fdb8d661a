"""The local PostgreSQL (`database: postgresql`), migrations on one host, backups
(tasks/steps/database.py, files/db-backup.py, docs/database.md).

Host-less: settings refused naming the key, the rendered configs, the operations
against mocked facts (tests/roles/test_distros.py's fake hosts), the password never in
the commands. On a real host (marker `features`, one fork of the shared deployed
host): the notespg app (Flask-SQLAlchemy + Flask-Migrate) through its first
migration, a redeploy under load with a second migration, a rollback, a backup,
its restore, and the database unreachable from the network.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from pyinfra.api.exceptions import DeployError

from tasks.steps.database import PostgresqlObjects
from tests.conftest import REPO_ROOT, Load, get, run_deploy
from tests.roles.test_distros import LB_DATA, deploy, host_facts

DB = {"database": "postgresql"}
LB_GROUPS = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}


def one(**data):
    return deploy({"web": host_facts("debian12")}, **data)["web"]


def refused(facts=None, **data) -> str:
    with pytest.raises(DeployError) as info:
        deploy(facts or {"web": host_facts("debian12")}, **data)
    return str(info.value)


# Settings --------------------------------------------------------------------

@pytest.mark.parametrize(("data", "line"), [
    ({"database": "mysql"}, "database = 'mysql': Input should be 'postgresql'"),
    ({"database_backup_schedule": "nightly"}, "database_backup_schedule = 'nightly': must be a systemd calendar"),
    ({"database_backup_keep": 0}, "database_backup_keep = 0: Input should be greater than or equal to 1"),
    ({"migrate_commands": ["a\nb"]}, "migrate_commands[0] = 'a\\nb'"),
])
def test_bad_database_settings_are_refused_naming_the_key(data, line):
    message = refused(**data)
    assert line in message and "nothing was changed" in message


def test_a_local_database_behind_balancers_with_several_app_servers_is_refused():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    with pytest.raises(DeployError, match="database = 'postgresql': the database is local to each app server"):
        deploy(facts, groups=LB_GROUPS, host_data=LB_DATA, **DB)


def test_two_apps_whose_database_names_meet_are_refused():
    apps = [{"app_name": "a-b", "nginx_server_names": ["a.example"], **DB},
            {"app_name": "a_b", "nginx_server_names": ["b.example"], **DB}]
    assert "app_name = 'a_b': its PostgreSQL database and role would be a_b, as a-b's" in refused(apps=apps)


def test_migrations_host_must_be_an_app_server():
    assert "migrations_host = 'db9': not an app server" in refused(migrations_host="db9")


def test_rhel_is_refused_naming_the_setting():
    assert "database = 'postgresql': supported on Debian and Ubuntu" in refused(
        {"web": host_facts("rocky9")}, **DB)


# The operations -----------------------------------------------------------------

def test_postgresql_listens_on_the_socket_only_and_each_role_reaches_its_own_database():
    run = one(**DB)
    assert run.uploads["/etc/postgresql/15/main/conf.d/pyinfra-flask.conf"].strip().endswith("listen_addresses = ''")
    hba = [line.split() for line in run.uploads["/etc/postgresql/15/main/pg_hba.conf"].splitlines()
           if line and not line.startswith("#")]
    assert hba == [["local", "all", "postgres", "peer"], ["local", "greeting", "greeting", "scram-sha-256"]]
    assert "PostgreSQL | Restart PostgreSQL (where it listens changed)" in run.changed
    # Debian 13 has PostgreSQL 17.
    trixie = deploy({"web": host_facts("debian13")}, **DB)["web"]
    assert "/etc/postgresql/17/main/pg_hba.conf" in trixie.uploads


def test_the_password_is_made_on_the_host_and_never_in_the_commands():
    run = one(**DB)
    database = run.named("Database | ")
    made = database["Database | Generate greeting's database password (on the host, root-only)"]
    assert "umask 077" in made[0] and "/dev/urandom" in made[0]
    role = database["Database | Create the database role greeting"][0]
    assert "$(cat /etc/pyinfra-flask/postgresql/greeting.password)" in role and "runuser -u postgres" in role
    url = database["Database | Hand greeting its DATABASE_URL (/srv/greeting/secrets/database.env, "
                   "root-only)"][0]
    assert "umask 077" in url and "postgresql://greeting:%s@/greeting?host=/var/run/postgresql" in url
    # No literal password anywhere: every value comes from the file on the host.
    commands = "\n".join(c for cs in run.changed.values() for c in cs)
    assert "PASSWORD '%s'" in commands and "PASSWORD '" not in commands.replace("PASSWORD '%s'", "")


def test_database_url_reaches_every_unit_and_the_release_steps_before_they_run():
    run = one(**DB, workers={"w": {"command": "python w.py"}}, migrate_commands=["flask db upgrade"])
    env = "EnvironmentFile=/srv/greeting/secrets/database.env"
    assert env in run.uploads["/etc/systemd/system/greeting.service"]
    assert env in run.uploads["/etc/systemd/system/greeting-w@.service"]
    # At boot the app's units start after the database.
    for unit in ("greeting.service", "greeting-w@.service"):
        assert "After=network.target postgresql.service\n" in run.uploads[f"/etc/systemd/system/{unit}"]
    assert '"/srv/greeting/secrets/database.env"' in run.uploads["/srv/greeting/release-tool.json"]
    names = list(run.changed)
    url = names.index("Database | Hand greeting its DATABASE_URL (/srv/greeting/secrets/database.env, "
                      "root-only)")
    migrate = names.index("Release | Migrate: flask db upgrade")
    assert url < migrate < names.index(next(n for n in names if n.startswith("Release activation | ")))


def test_a_converged_host_creates_nothing_again():
    facts = host_facts("debian12", PostgresqlObjects={"roles": ["postgres", "greeting"],
                                                      "databases": ["postgres", "greeting"]},
                       File=lambda path: {"mode": 600, "user": "root", "group": "root"} if path in (
                           "/etc/pyinfra-flask/postgresql/greeting.password",
                           "/srv/greeting/secrets/database.env") else None)
    run = deploy({"web": facts}, **DB)["web"]
    assert not [name for name in run.changed if "Database | Create the database" in name
                or "Generate" in name or "DATABASE_URL" in name or "Create the database role" in name]


def test_behind_balancers_only_one_app_server_migrates_before_any_switches():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    data = {"migrate_commands": ["flask --app wsgi db upgrade"], "before_switch_commands": ["true"]}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA, **data)
    migrate = "Release | Migrate: flask --app wsgi db upgrade"
    assert migrate in runs["web1"].changed and migrate not in runs["web2"].changed
    assert "Release | Before switch: true" in runs["web2"].changed  # still on every host
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA, migrations_host="@fake/web2", **data)
    assert migrate in runs["web2"].changed and migrate not in runs["web1"].changed
    # Without balancers each host has its own database: each migrates it.
    alone = deploy({name: host_facts("debian12") for name in ("web1", "web2")}, **data)
    assert all(migrate in run.changed for run in alone.values())


def test_backup_timer_follows_the_schedule_and_goes_with_the_setting():
    run = one(**DB, database_backup_schedule="*-*-* 03:00:00")
    assert "OnCalendar=*-*-* 03:00:00" in run.uploads["/etc/systemd/system/pyinfra-flask-db-backup-greeting.timer"]
    assert "Unit=pyinfra-flask-db-backup@greeting.service" in run.uploads[
        "/etc/systemd/system/pyinfra-flask-db-backup-greeting.timer"]
    timers = ["pyinfra-flask-db-backup-greeting.timer", "pyinfra-flask-db-backup-old.timer"]
    gone = deploy({"web": host_facts("debian12", BackupTimers=timers, File=lambda path: {
        "mode": 644, "user": "root", "group": "root"} if path.endswith(tuple(timers)) else None)},
                  **DB, database_backup_schedule=None)["web"]
    assert "PostgreSQL | Remove pyinfra-flask-db-backup-greeting.timer" in gone.changed
    assert "PostgreSQL | Remove pyinfra-flask-db-backup-old.timer" in gone.changed
    # Turning the database off keeps it: only DATABASE_URL goes.
    off = deploy({"web": host_facts("debian12", File=lambda path: {"mode": 600, "user": "root", "group": "root"}
                                    if path == "/srv/greeting/secrets/database.env" else None)})["web"]
    assert [c for c in off.changed["Database | No DATABASE_URL for greeting (its database, if any, "
                                    "stays)"] if "rm" in c]
    assert not [name for name in off.changed if "PostgreSQL |" in name and "Remove" not in name
                and "No database backup service" not in name]


def test_backup_settings_name_the_units_a_restore_stops():
    import json

    run = one(**DB, workers={"w": {"command": "python w.py", "processes": 2}},
              jobs={"j": {"command": "true", "schedule": "daily"}})
    settings = json.loads(run.uploads["/etc/pyinfra-flask/db-backup/greeting.json"])
    assert settings["database"] == "greeting" and settings["directory"] == "/var/backups/pyinfra-flask/greeting"
    assert settings["service"] == "greeting.service" and settings["timers"] == ["greeting-j.timer"]
    assert settings["workers"] == ["greeting-w@1.service", "greeting-w@2.service"]


def test_postgresql_objects_fact_reads_roles_and_databases():
    found = PostgresqlObjects().process(["role postgres", "role shop", "database shop", "database template1", ""])
    assert found == {"roles": ["postgres", "shop"], "databases": ["shop", "template1"]}


# The backup tool, without PostgreSQL ------------------------------------------------

def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("db_backup", REPO_ROOT / "files/db-backup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retention_keeps_the_newest_by_count_and_age(tmp_path):
    import os

    tool = _tool()
    directory = tmp_path / "shop"
    directory.mkdir(mode=0o700)
    now = time.time()
    names = [f"shop-2026120{day}T030000Z.dump" for day in range(1, 7)]
    for age, name in zip(range(6, 0, -1), names):
        (directory / name).write_bytes(b"x")
        os.utime(directory / name, (now - age * 86400, now - age * 86400))
    (directory / "other-20261201T030000Z.dump").write_bytes(b"x")
    os.symlink("/etc/passwd", directory / "shop-20261207T030000Z.dump")
    fd = os.open(directory, os.O_RDONLY)
    tool.prune({"app": "shop", "keep": 4, "max_age_days": 4}, fd)
    # Count keeps the newest 4; age removes the one 4+ days old among them; links are no backups.
    assert sorted(p.name for p in directory.iterdir()) == sorted(names[3:] + ["other-20261201T030000Z.dump",
                                                                              "shop-20261207T030000Z.dump"])
    for name in names[3:5]:
        os.utime(directory / name, (now - 90 * 86400,) * 2)
    os.utime(directory / names[5], (now - 80 * 86400,) * 2)
    tool.prune({"app": "shop", "keep": 4, "max_age_days": 4}, fd)
    assert names[5] in os.listdir(directory) and names[4] not in os.listdir(directory)  # the newest stays


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="the tool wants root's directories")
def test_the_tool_refuses_a_backup_directory_others_can_enter_or_a_link(tmp_path):
    import os

    tool = _tool()
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    with pytest.raises(tool.Refused, match="must be root's and closed to others"):
        tool.private_directory(str(tmp_path / "open"))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(OSError):
        tool.private_directory(str(tmp_path / "link"))
    made = tool.private_directory(str(tmp_path / "made"))
    assert oct(os.fstat(made).st_mode & 0o777) == "0o700"


def test_the_tool_refuses_names_of_other_apps():
    tool = _tool()
    pattern = tool.name_pattern({"app": "shop"})
    assert pattern.match("shop-20261201T030000Z.dump") and pattern.match("shop-20261201T030000Z-2.dump")
    for name in ("shop-eu-20261201T030000Z.dump", "../shop-20261201T030000Z.dump", "shop-x.dump",
                 "blog-20261201T030000Z.dump"):
        assert not pattern.match(name)


TOC = """;
;     dbname: shop
;
2; 3079 16395 EXTENSION - pgcrypto 
3389; 0 0 COMMENT - EXTENSION pgcrypto 
4; 3079 16689 EXTENSION - postgis 
3534; 0 0 COMMENT - EXTENSION postgis 
216; 1259 16387 TABLE public note shop
3381; 0 16387 TABLE DATA public note shop
"""


class FakeClients:
    """subprocess.run for the backup tool: records each command line (and the
    environment and restore list it got), answers as PostgreSQL's clients would."""

    def __init__(self, installed="installed\tpgcrypto\ttrue\ninstalled\tpostgis\tfalse\n"):
        self.calls, self.installed, self.listed = [], installed, None

    def __call__(self, argv, **kwargs):
        import os

        self.calls.append((argv, kwargs.get("env") or {}))
        out = ""
        if "--list" in argv:
            out = TOC
        elif "psql" in argv and "--username" in argv:
            out = self.installed + "available\tpgcrypto\ttrue\navailable\tpostgis\tfalse\n"
        elif "pg_restore" in argv:
            fd = int(next(a for a in argv if a.startswith("--use-list=")).rsplit("/", 1)[1])
            assert kwargs["pass_fds"] == (fd,)
            self.listed = os.pread(fd, 65536, 0).decode()
        return subprocess.CompletedProcess(argv, 0, out if kwargs.get("text") else out.encode(), "")


def _restore_with(monkeypatch, tmp_path, clients, units_elsewhere):
    import os

    tool = _tool()
    monkeypatch.setattr(tool.subprocess, "run", clients)
    (tmp_path / "shop.password").write_text("s3cret-of-shop\n")
    directory = tmp_path / "backups"
    directory.mkdir(exist_ok=True)
    (directory / "shop-20261202T030000Z.dump").write_bytes(b"PGDMP")
    config = {"app": "shop", "database": "shop", "role": "shop", "password_file": str(tmp_path / "shop.password"),
              "socket": "/var/run/postgresql", "service": "shop.service", "workers": [], "jobs": [], "timers": [],
              "health": {}, "health_module": "/usr/local/lib/pyinfra-flask/healthcheck.py"}
    fd = os.open(directory, os.O_RDONLY)
    try:
        return tool, tool.cmd_restore(config, fd, "shop-20261202T030000Z.dump", units_elsewhere)
    finally:
        os.close(fd)


APP_ROLE = ["--host", "/var/run/postgresql", "--username", "shop", "--no-password", "--dbname", "shop"]


@pytest.mark.parametrize("units_elsewhere", [False, True], ids=["local", "db-server"])
def test_a_restore_runs_the_apps_data_as_the_apps_role_never_as_a_superuser(monkeypatch, tmp_path,
                                                                            units_elsewhere):
    clients = FakeClients()
    _, code = _restore_with(monkeypatch, tmp_path, clients, units_elsewhere)
    assert code == 0
    restores = [(argv, env) for argv, env in clients.calls if "pg_restore" in argv and "--list" not in argv]
    [(argv, env)] = restores
    # The exact command line: as the postgres user (not root), connected as the app's
    # role by its password (in the environment, not the arguments), all or nothing.
    fd = argv[-len(APP_ROLE) - 1].rsplit("/", 1)[1]
    assert argv == ["runuser", "-u", "postgres", "--", "pg_restore", "--clean", "--if-exists", "--single-transaction",
                    "--exit-on-error", "--no-owner", f"--use-list=/proc/self/fd/{fd}", *APP_ROLE]
    assert env["PGPASSWORD"] == "s3cret-of-shop"
    # Every connection to the app's database is the app role's; postgres connects only to
    # its own database, to end the app's connections, and runs nothing of the app's.
    for argv, env in clients.calls:
        assert "s3cret-of-shop" not in " ".join(argv) and "--role" not in " ".join(argv)
        if argv[0] == "runuser" and argv[4] in ("psql", "pg_dump", "pg_restore") and "--list" not in argv:
            assert argv[-len(APP_ROLE):] == APP_ROLE or argv[5:9] == ["-X", "-q", "-d", "postgres"], argv
    # The extension the administrator made stays as it is; the app's own is restored.
    assert ";4; 3079 16689 EXTENSION - postgis" in clients.listed
    assert ";3534; 0 0 COMMENT - EXTENSION postgis" in clients.listed
    assert "\n2; 3079 16395 EXTENSION - pgcrypto" in clients.listed
    stops = [argv for argv, _ in clients.calls if argv[:2] == ["systemctl", "stop"]]
    assert stops == ([] if units_elsewhere else [["systemctl", "stop", "shop.service"]])


def test_a_backup_connects_as_the_apps_role(monkeypatch, tmp_path):
    import os

    tool, clients = _tool(), FakeClients()
    monkeypatch.setattr(tool.subprocess, "run", clients)
    (tmp_path / "shop.password").write_text("s3cret-of-shop\n")
    directory = tmp_path / "backups"
    directory.mkdir()
    fd = os.open(directory, os.O_RDONLY)
    tool.cmd_backup({"app": "shop", "database": "shop", "role": "shop", "password_file": str(tmp_path / "shop.password"),
                     "socket": "/var/run/postgresql", "keep": 2, "max_age_days": 0}, fd)
    [(argv, env)] = clients.calls
    assert argv == ["runuser", "-u", "postgres", "--", "pg_dump", "--format=custom", *APP_ROLE]
    assert env["PGPASSWORD"] == "s3cret-of-shop"


def test_a_restore_needing_an_extension_only_a_superuser_may_make_stops_before_anything(monkeypatch, tmp_path):
    clients = FakeClients(installed="installed\tpgcrypto\ttrue\n")
    with pytest.raises(Exception, match=r"the backup needs extension postgis, which database shop lacks and only "
                                        r"a superuser may make .*CREATE EXTENSION postgis.*nothing was changed"):
        _restore_with(monkeypatch, tmp_path, clients, False)
    assert not [argv for argv, _ in clients.calls if "systemctl" in argv or "pg_restore" in argv and
                "--list" not in argv]


def test_the_backup_tool_gets_the_apps_role_and_password_on_both_kinds_of_database_host():
    import json

    from tests.hosts.test_database_servers import cluster

    local = json.loads(one(**DB).uploads["/etc/pyinfra-flask/db-backup/greeting.json"])
    remote = json.loads(str(cluster()["db1"].uploads["/etc/pyinfra-flask/db-backup/greeting.json"]))
    for settings in (local, remote):
        assert {k: settings[k] for k in ("database", "role", "password_file", "socket")} == {
            "database": "greeting", "role": "greeting", "socket": "/var/run/postgresql",
            "password_file": "/etc/pyinfra-flask/postgresql/greeting.password"}


# On a real host ---------------------------------------------------------------------

NOTESPG = REPO_ROOT / "tests/apps/notespg"


def notespg(tmp_path, version: str, second_migration: bool = False):
    target = tmp_path / f"notespg-{version}"
    shutil.copytree(NOTESPG, target, ignore=shutil.ignore_patterns("next"))
    module = target / "wsgi.py"
    module.write_text(module.read_text().replace('VERSION = "v1"', f"VERSION = {version!r}"))
    if second_migration:
        shutil.copy(NOTESPG / "next/0002_note_author.py", target / "migrations/versions/")
    return target


def notespg_data(source) -> dict:
    return {"app_name": "notespg", "app_source": str(source), **DB, "healthcheck_body": "notespg",
            "migrate_commands": ["flask --app wsgi db upgrade"], "database_backup_schedule": "*-*-* 03:00:00"}


def ops(inventory, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ops.py", str(inventory), *arguments], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.features
def test_notes_in_postgresql_survive_redeploys_rollbacks_and_a_restore(fork, tmp_path):
    started = time.monotonic()
    try:
        _notes(fork, tmp_path)
    except BaseException:
        print(fork.exec("systemctl status --no-pager notespg postgresql@15-main; journalctl --no-pager -n 40 "
                        "-u notespg -u postgresql@15-main", check=False))
        raise
    print(f"\ntest_database on a real host: {time.monotonic() - started:.1f}s")


def _notes(fork, tmp_path):
    v1, v2 = notespg(tmp_path, "v1"), notespg(tmp_path, "v2", second_migration=True)
    first = run_deploy(fork, tmp_path, data=notespg_data(v1))
    print(f"\nfirst deploy (PostgreSQL installed, the first migration): {first.seconds:.1f}s")
    password = fork.exec("cat /etc/pyinfra-flask/postgresql/notespg.password").strip()
    assert len(password) == 64
    # The first deploy's migration made the schema; the app reaches it over the socket.
    assert fork.exec("cd / && runuser -u postgres -- psql -XAt -d notespg -c 'select version_num from "
                     "alembic_version'").strip() == "0001"
    assert fork.exec("stat -c '%U %a' /etc/pyinfra-flask/postgresql/notespg.password "
                     "/srv/notespg/secrets/database.env").split() == ["root", "600", "root", "600"]
    # Nothing listens on the network: no TCP socket of PostgreSQL's, and from outside nothing answers.
    assert ":5432" not in fork.exec("ss -ltn")
    fork.container.reload()
    address = fork.container.attrs["NetworkSettings"]["IPAddress"] or next(
        iter(fork.container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    with pytest.raises(OSError):
        socket.create_connection((address, 5432), timeout=3).close()
    for text in ("first", "second", "third"):
        fork_post(fork, text)
    assert get(fork.url + "/").text == "notespg v1: 3 notes\n"

    # A code redeploy with the second migration, under load: no request fails, no row is lost.
    dry = run_deploy(fork, tmp_path, "--dry", "--diff", data=notespg_data(v2))
    print(f"dry run: {dry.seconds:.1f}s")
    with Load(fork.url + "/", threads=2, interval=0.02, max_seconds=120) as load:
        second = run_deploy(fork, tmp_path, data=notespg_data(v2))
    print(load.report(f"redeploy with a migration ({second.seconds:.1f}s)"))
    assert load.failures == [] and load.ok > 20
    assert get(fork.url + "/").text == "notespg v2: 3 notes\n"
    assert get(fork.url + "/schema").text.split() == ["author", "id", "text"]
    # The second run touched nothing of the database's (and restarted no timer).
    assert not [name for name in second.changed_operations() if "PostgreSQL |" in name or "Database |" in name]
    assert fork.exec("systemctl is-active pyinfra-flask-db-backup-notespg.timer").strip() == "active"
    for run in (first, dry, second):
        assert password not in run.output
    print(f"rollback: {run_deploy(fork, tmp_path, deploy='rollback.py', data=notespg_data(v2)).seconds:.1f}s")
    ops_started = time.monotonic()
    assert get(fork.url + "/").text == "notespg v1: 3 notes\n"

    # The hostile app: as its own user and role it stores code that a superuser would run
    # while the rows load (a CHECK constraint's function). Restored with the app's rights
    # it finds itself no superuser and does nothing.
    attack_started = time.monotonic()
    as_app(fork, HOSTILE)
    assert as_app(fork, "select count(*) from note").strip() == "3"
    attack_seconds = time.monotonic() - attack_started
    # Backup, delete, restore through ops.py (as the deploy user with sudo, as users do).
    inventory = fork.write_inventory(tmp_path / "inventory.py", notespg_data(v1))
    download = tmp_path / "downloads"
    download.mkdir()
    made = ops(inventory, "backup", "now", "--download", str(download))
    assert made.returncode == 0, made.stdout + made.stderr
    name = next(word for line in made.stdout.splitlines() for word in line.split() if word.endswith(".dump"))
    assert [p.name for p in download.iterdir()] == [f"{fork.name}-{name}"]
    assert (download / f"{fork.name}-{name}").read_bytes().startswith(b"PGDMP")
    assert oct((download / f"{fork.name}-{name}").stat().st_mode & 0o777) == "0o600"
    assert name in ops(inventory, "backups").stdout
    assert fork.exec("stat -c '%U %a' /var/backups/pyinfra-flask /var/backups/pyinfra-flask/notespg").split() == [
        "root", "700", "root", "700"]
    assert not fork.exec("ls -A ~deploy/.pyinfra-flask-uploads").strip()  # the download's copy is gone
    import requests

    requests.delete(fork.url + "/notes", timeout=10).raise_for_status()
    assert get(fork.url + "/").text == "notespg v1: 0 notes\n"
    pid = fork.exec("systemctl show -p MainPID --value notespg").strip()
    restored = ops(inventory, "restore", name)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"RESTORED {name}" in restored.stdout
    # The app was stopped for the restore and started again (a new uWSGI master).
    assert fork.exec("systemctl show -p MainPID --value notespg").strip() not in ("0", pid)
    assert get(fork.url + "/notes").text == "first\nsecond\nthird\n"
    # The stored code ran as the app's role while the rows loaded: no superuser, no program.
    checks_started = time.monotonic()
    assert fork.exec("cd / && runuser -u postgres -- psql -XAt -c \"select rolsuper from pg_roles where "
                     "rolname = 'notespg'\"").strip() == "f"
    assert fork.exec("ls /var/lib/postgresql/pwned 2>&1", check=False).strip().endswith("No such file or directory")
    # Everything restored is the app's own, as before, and its constraint came back.
    assert fork.exec("cd / && runuser -u postgres -- psql -XAt -d notespg -c \"select distinct r.rolname from "
                     "pg_class c join pg_roles r on r.oid = c.relowner join pg_namespace n on n.oid = "
                     "c.relnamespace where n.nspname = 'public' union select r.rolname from pg_proc p join "
                     "pg_roles r on r.oid = p.proowner where p.proname = 'pwn'\"").split() == ["notespg"]
    assert "pwn" in as_app(fork, "select conname from pg_constraint where conname = 'pwn'")
    print(f"the hostile app's attack on the restore, and its checks: "
          f"{attack_seconds + time.monotonic() - checks_started:.1f}s")
    assert ops(inventory, "restore", "notespg-20200101T000000Z.dump").returncode != 0
    for result in (made, restored):
        assert password not in result.stdout + result.stderr
    print(f"backup, list, restore through ops.py: {time.monotonic() - ops_started:.1f}s")


# Runs only where it finds itself a superuser: then it makes the app's role one and runs
# a program as postgres (COPY ... TO PROGRAM), as a restore by the superuser used to let it.
HOSTILE = r"""
create function pwn(t text) returns boolean language plpgsql as $$
begin
  if current_setting('is_superuser') = 'on' then
    execute 'alter role notespg superuser';
    execute $c$copy (select 1) to program 'touch /var/lib/postgresql/pwned'$c$;
  end if;
  return true;
end $$;
alter table note add constraint pwn check (pwn(text));
"""


def as_app(fork, sql: str) -> str:
    """`sql` run by psql as the app's user with the app's DATABASE_URL (its role)."""
    return fork.exec(f"cd / && . /srv/notespg/secrets/database.env && runuser -u notespg -- psql -XAt "
                     f"-v ON_ERROR_STOP=1 \"$DATABASE_URL\" -c {shlex.quote(sql)}")


def fork_post(fork, text: str) -> None:
    import requests

    requests.post(fork.url + "/notes", data={"text": text}, timeout=10).raise_for_status()
