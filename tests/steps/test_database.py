"""The local PostgreSQL without a host (tasks/steps/database.py, docs/database.md): the
settings refused before any host is touched, the operations against mocked facts
(tests/roles/test_distros.py's fake hosts), the password never in a command, and the
backup tool (files/db-backup.py) run here. On a real host: tests/hosts/test_database.py."""

from __future__ import annotations

import subprocess
import time

import pytest
from pyinfra.api.exceptions import DeployError

from tasks.steps.database import PostgresqlObjects
from tests.conftest import REPO_ROOT
from tests.roles.test_distros import LB_DATA, deploy, host_facts


DB = {"database": "postgresql"}


LB_GROUPS = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}


def one(**data):
    return deploy({"web": host_facts("debian12")}, **data)["web"]


def refused(facts=None, **data) -> str:
    with pytest.raises(DeployError) as info:
        deploy(facts or {"web": host_facts("debian12")}, **data)
    return str(info.value)


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
    # Still on every host: in its one `ship` command, before the checks end.
    assert any("| Ship release" in name and "`true`" in name for name in runs["web2"].changed)
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

    from tests.roles.test_database_server import cluster

    local = json.loads(one(**DB).uploads["/etc/pyinfra-flask/db-backup/greeting.json"])
    remote = json.loads(str(cluster()["db1"].uploads["/etc/pyinfra-flask/db-backup/greeting.json"]))
    for settings in (local, remote):
        assert {k: settings[k] for k in ("database", "role", "password_file", "socket")} == {
            "database": "greeting", "role": "greeting", "socket": "/var/run/postgresql",
            "password_file": "/etc/pyinfra-flask/postgresql/greeting.password"}


NOTESPG = REPO_ROOT / "tests/apps/notespg"
