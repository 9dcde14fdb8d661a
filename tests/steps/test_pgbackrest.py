"""pgBackRest without a host (tasks/steps/pgbackrest.py, tasks/roles/backup_server.py,
files/repository-sweep.py, files/pgbackrest-ssh.py, docs/backups.md): the settings
refused naming the key, the rendered configs and timers, the forced command's
refusals, the sweep's handling of what the ingest user leaves. On real hosts:
tests/hosts/test_backups.py."""

from __future__ import annotations

import os
import runpy
import stat
import subprocess

import pytest

from tasks import REPO_ROOT
from tasks.config.checks import validate
from tasks.config.settings import SettingsError
from tests.roles.test_distros import deploy, host_facts

GUARD = runpy.run_path(str(REPO_ROOT / "files/pgbackrest-ssh.py"))
SWEEP = runpy.run_path(str(REPO_ROOT / "files/repository-sweep.py"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAD"
GROUPS = {"db_servers": ["db1"], "app_servers": ["web1"], "backup_servers": ["bk1"]}
DATA = {"db1": {"private_address": "10.0.0.5"}, "web1": {"private_address": "10.0.0.11"},
        "bk1": {"private_address": "10.0.0.9"}}


def cluster(system="debian12", **data):
    facts = {name: host_facts(system, PublicKey=lambda path: KEY) for name in ("db1", "web1", "bk1")}
    return deploy(facts, groups=GROUPS, host_data=DATA, database="postgresql", **data)


def test_debian_13_archives_and_drills_with_its_postgresql_17():
    runs = cluster("debian13", pgbackrest_archive_timeout=30)
    db, bk = runs["db1"], runs["bk1"]
    assert "archive_timeout = 30" in str(db.uploads["/etc/postgresql/17/main/conf.d/pyinfra-flask.conf"])
    assert "reload" in str(db.uploads["/etc/systemd/system/postgresql@.service.d/pyinfra-flask-wake.conf"])
    assert "pg1-path=/var/lib/postgresql/17/main" in str(db.uploads["/etc/pgbackrest.conf"])
    assert "pg1-path=/var/lib/postgresql/17/main" in str(bk.uploads["/etc/pgbackrest.conf"])
    assert "--bin /usr/lib/postgresql/17/bin" in str(
        bk.uploads["/etc/systemd/system/pyinfra-flask-pgbackrest-verify.service"])
    assert [name for name in bk.changed if "PostgreSQL 17's server binaries" in name]


@pytest.mark.parametrize(("key", "value"), [
    ("pgbackrest_archive_timeout", 5), ("pgbackrest_full_schedule", "whenever"),
    ("pgbackrest_retention_full", 0), ("pgbackrest_retention_diff", "6"),
])
def test_bad_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(SettingsError) as error:
        validate({"app_name": "shop", key: value}, where="test", secrets=False)
    assert key in str(error.value)


def test_the_db_server_archives_to_the_backup_host_which_backs_up_and_expires():
    runs = cluster(pgbackrest_archive_timeout=30, pgbackrest_retention_full=3)
    db, bk = runs["db1"], runs["bk1"]
    conf = str(db.uploads["/etc/postgresql/15/main/conf.d/pyinfra-flask.conf"])
    assert "archive_mode = on" in conf and "archive_timeout = 30" in conf
    assert "archive_command = 'pgbackrest --stanza=main archive-push %p'" in conf
    # Every start ends with a reload, which wakes the checkpointer for archive_timeout (it sleeps through it
    # otherwise, tests/hosts/test_backups.py); the drop-in is in before the restart that turns archiving on.
    wake = "/etc/systemd/system/postgresql@.service.d/pyinfra-flask-wake.conf"
    assert "ExecStartPost=-/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i reload" in str(db.uploads[wake])
    names = list(db.changed)
    assert names.index(next(n for n in names if "Wake PostgreSQL" in n)) < names.index(
        next(n for n in names if "Restart PostgreSQL (" in n))
    db_conf = str(db.uploads["/etc/pgbackrest.conf"])
    assert "repo1-host=10.0.0.9" in db_conf and "repo1-host-user=pgbackrest-ingest" in db_conf
    assert "pg1-path=/var/lib/postgresql/15/main" in db_conf and "retention" not in db_conf
    repo = str(bk.uploads["/etc/pgbackrest.conf"])
    assert "pg1-host=10.0.0.5" in repo and "repo1-retention-full=3" in repo and "repo1-retention-diff=6" in repo
    # Each side lets the other's key in for pgBackRest's remote only, and pins its host key.
    assert str(bk.uploads["/home/pgbackrest-ingest/.ssh/authorized_keys"]) == (
        f'restrict,command="/usr/bin/python3 -I -S /usr/local/lib/pyinfra-flask/pgbackrest-ssh.py ingest" {KEY}\n')
    assert str(db.uploads["/var/lib/postgresql/.ssh/authorized_keys"]) == (
        f'restrict,command="/usr/bin/python3 -I -S /usr/local/lib/pyinfra-flask/pgbackrest-ssh.py pg" {KEY}\n')
    assert str(db.uploads["/var/lib/postgresql/.ssh/pgbackrest_known_hosts"]) == f"10.0.0.9 {KEY}\n"
    assert str(bk.uploads["/home/pgbackrest/.ssh/pgbackrest_known_hosts"]) == f"10.0.0.5 {KEY}\n"
    # The backups and the expiry run on the backup host only, as the repository's owner.
    service = str(bk.uploads["/etc/systemd/system/pyinfra-flask-pgbackrest@.service"])
    assert "User=pgbackrest" in service and "--type=%i" in service
    assert "OnCalendar=Sun *-*-* 01:00:00" in str(bk.uploads["/etc/systemd/system/pyinfra-flask-pgbackrest-full.timer"])
    assert "OnCalendar=Mon..Sat *-*-* 01:00:00" in str(
        bk.uploads["/etc/systemd/system/pyinfra-flask-pgbackrest-diff.timer"])
    commands = "\n".join(c for cs in bk.changed.values() for c in cs)
    assert "runuser -u pgbackrest -- pgbackrest --stanza=main --log-level-console=warn stanza-create" in commands
    assert not [c for cs in db.changed.values() for c in cs if "expire" in c or "stanza-" in c]
    # The app server has none of it.
    assert not [name for name in runs["web1"].changed if "pgBackRest" in name]


def test_a_backup_host_without_an_address_is_refused():
    # (Without a db server it holds the apps' files only: tests/steps/test_restic.py.)
    with pytest.raises(Exception, match="Backup host '@fake/bk1' has no private_address"):
        cluster_data = {**DATA, "bk1": {}}
        deploy({name: host_facts("debian12", PublicKey=lambda path: KEY) for name in ("db1", "web1", "bk1")},
               groups=GROUPS, host_data=cluster_data, database="postgresql")


@pytest.mark.parametrize("command", [
    "/usr/bin/pgbackrest --stanza=main stanza-delete --force",
    "/usr/bin/pgbackrest --stanza=main expire",
    "/usr/bin/pgbackrest --stanza=main --remote-type=repo expire:remote",
    "rm -rf /var/lib/pgbackrest",
    "sh -c id",
    "/usr/bin/pgbackrest --config=/tmp/x --stanza=main archive-push:remote",
    "/usr/bin/pgbackrest --repo1-path=/ --stanza=main archive-push:remote",
    "/usr/bin/pgbackrest --stanza=main archive-push:remote; rm -rf /",
    "/usr/bin/pgbackrest --stanza=main backup:remote",
])
def test_the_ingest_login_runs_only_pgbackrests_remote(command):
    assert GUARD["allowed"]("ingest", command) is None


def test_the_ingest_login_runs_archive_push_remote_without_a_shell():
    command = ("/usr/bin/pgbackrest --exec-id=1-abc --log-level-console=off --log-level-file=off "
               "--log-level-stderr=error --pg1-path=/var/lib/postgresql/15/main --process=0 --remote-type=repo "
               "--stanza=main archive-push:remote")
    assert GUARD["allowed"]("ingest", command) == command.split()
    assert GUARD["allowed"]("pg", command) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files of other users")
def test_the_sweep_hands_completed_files_over_and_takes_links_out(tmp_path):
    owner, ingest = 4001, 4002
    repository, quarantine = tmp_path / "repo", tmp_path / "quarantine"
    quarantine.mkdir(mode=0o700)
    segment = repository / "archive/main/15-1/0000000100000000"
    segment.mkdir(parents=True)
    os.chown(repository, owner, owner)
    for directory in (segment, segment.parent):
        os.chown(directory, ingest, owner)
    done = segment / "000000010000000000000001-aaaa.gz"
    writing = segment / "000000010000000000000002-bbbb.gz.pgbackrest.tmp"
    duplicate = segment / "000000010000000000000001-cccc.gz"
    secret = tmp_path / "secret"
    secret.write_text("root's")
    for path in (done, writing):
        path.write_text("wal")
        os.chown(path, ingest, owner)
    os.symlink(secret, segment / "000000010000000000000003-dddd.gz")
    sweep = SWEEP["Sweep"]
    root = os.open(repository, os.O_RDONLY | os.O_DIRECTORY)
    held = os.open(quarantine, os.O_RDONLY | os.O_DIRECTORY)
    archive = os.open("archive", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
    run = sweep(owner, owner, ingest, held)
    run.directory(archive)
    found = done.stat()
    assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (owner, 0o640)
    assert writing.stat().st_uid == ingest  # still being written: left alone
    assert stat.S_IMODE(segment.stat().st_mode) == 0o3770 and segment.stat().st_uid == owner
    # The link is taken out, never followed: the file it named is as it was.
    assert not os.path.lexists(segment / "000000010000000000000003-dddd.gz")
    assert secret.stat().st_uid == 0 and secret.read_text() == "root's"
    # A second file for a segment the archive has is taken out too.
    duplicate.write_text("junk")
    os.chown(duplicate, ingest, owner)
    sweep(owner, owner, ingest, held).directory(archive)
    assert not duplicate.exists() and done.exists()
    assert len(os.listdir(quarantine)) == 2


def test_a_point_in_time_restore_stops_the_app_everywhere_and_runs_on_the_db_server(monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    from tasks.config import inventory
    from tasks.ops import backups
    from tasks.ops.fleet import Fleet, FleetError

    db = SimpleNamespace(name="db1", groups=["db_servers"])
    web = SimpleNamespace(name="web1", groups=["app_servers"])
    bk = SimpleNamespace(name="bk1", groups=["backup_servers"])
    on_db = SimpleNamespace(app_name="shop", database="postgresql", database_host=None)
    on_web = replace(validate({"app_name": "shop", "database": "postgresql"}, where="test", secrets=False),
                     database_host="10.0.0.5")
    monkeypatch.setattr(inventory, "load_apps", lambda h, secrets=True: [on_web] if h is web else [on_db])
    commands = []

    def run(h, command, **options):
        commands.append((h.name, command))
        return True, ["ok"], []

    monkeypatch.setattr("tasks.ops.backups.run", run)
    fleet = Fleet(SimpleNamespace(inventory=[db, web, bk]), [db, web, bk],
                  {"db1": [on_db], "web1": [on_web], "bk1": [on_db]})
    results = backups.restore(fleet, None, to="2026-12-06 20:15:00+00")
    assert [name for name, _ in commands] == ["web1", "db1", "web1"]
    assert commands[0][1].startswith("systemctl stop shop.service")
    assert "runuser -u postgres -- pgbackrest --stanza=main --delta --type=time " \
           "--target='2026-12-06 20:15:00+00' --target-action=promote" in commands[1][1]
    assert commands[1][1].startswith("systemctl stop postgresql 'postgresql@*' && ")
    # Once out of recovery, and before the units start again, the role's password is this host's again
    # (through a pipe, from the root-only file), or the missing role is said.
    restore = commands[1][1]
    assert restore.index("pg_is_in_recovery") < restore.index("systemctl reload postgresql") < restore.index(
        "ALTER ROLE shop PASSWORD") < restore.index("RESTORED")
    assert "\"$(cat /etc/pyinfra-flask/postgresql/shop.password)\" | (cd / && runuser -u postgres -- psql" in restore
    assert "No role shop in the restored state" in restore
    assert all(ok for found in results.values() for _, ok, _ in found)
    with pytest.raises(FleetError, match="takes no backup name"):
        backups.restore(fleet, "shop-20261202T030000Z.dump")
    with pytest.raises(FleetError, match="--limit leaves out"):
        backups.listing(Fleet(SimpleNamespace(inventory=[db, web, bk]), [db, web], {}))


VERIFY = runpy.run_path(str(REPO_ROOT / "files/pgbackrest-verify.py"))
UNITS = "/etc/systemd/system"


@pytest.mark.parametrize(("key", "value"), [
    ("pgbackrest_verify_schedule", "whenever"), ("pgbackrest_verify_schedule", ""),
    ("pgbackrest_verify_query", ""), ("pgbackrest_verify_query", "x" * 2001), ("pgbackrest_verify_query", 1),
])
def test_bad_restore_drill_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(SettingsError) as error:
        validate({"app_name": "shop", key: value}, where="test", secrets=False)
    assert key in str(error.value)


def test_the_restore_drill_runs_on_the_backup_host_as_the_owner_on_its_schedule():
    runs = cluster(pgbackrest_verify_schedule="*-*-* 06:30:00",
                   pgbackrest_verify_query="select 1 from notes limit 1")
    bk = runs["bk1"]
    service = str(bk.uploads[f"{UNITS}/pyinfra-flask-pgbackrest-verify.service"])
    assert "User=pgbackrest\n" in service and "Group=pgbackrest\n" in service and "User=root" not in service
    assert ("ExecStart=/usr/bin/python3 -I -S /usr/local/lib/pyinfra-flask/pgbackrest-verify.py --stanza main "
            "--bin /usr/lib/postgresql/15/bin --database ") in service
    assert "--query-file /etc/pyinfra-flask/pgbackrest-verify.sql" in service
    assert "StateDirectory=pyinfra-flask-pgbackrest-verify\n" in service
    assert "--state /var/lib/pyinfra-flask-pgbackrest-verify" in service
    assert str(bk.uploads["/etc/pyinfra-flask/pgbackrest-verify.sql"]) == "select 1 from notes limit 1\n"
    timer = str(bk.uploads[f"{UNITS}/pyinfra-flask-pgbackrest-verify.timer"])
    assert "OnCalendar=*-*-* 06:30:00" in timer and "Unit=pyinfra-flask-pgbackrest-verify.service" in timer
    names = list(bk.changed)
    # No cluster of its own from the server package: the setting before the install.
    made = next(i for i, name in enumerate(names) if "create_main_cluster" in name or "createcluster" in name)
    installed = next(i for i, name in enumerate(names) if "PostgreSQL 15's server binaries" in name)
    assert made < installed
    assert not [name for host in ("db1", "web1") for name in runs[host].changed if "restore drill" in name]


def test_backups_and_drills_leave_systemds_verdict_for_the_monitoring_host(tmp_path):
    bk = cluster()["bk1"]
    line = "ExecStopPost=+/bin/sh /usr/local/lib/pyinfra-flask/unit-failed-metric.sh /var/lib/pyinfra-flask/metrics %n\n"
    for unit in ("pyinfra-flask-pgbackrest@.service", "pyinfra-flask-pgbackrest-verify.service"):
        assert line in str(bk.uploads[f"{UNITS}/{unit}"]), unit
    script = str(REPO_ROOT / "files/unit-failed-metric.sh")
    unit = "pyinfra-flask-pgbackrest-verify.service"
    for result, failed in (("success", "0"), ("exit-code", "1"), ("timeout", "1"), (None, "1")):
        env = {"PATH": os.environ["PATH"], **({"SERVICE_RESULT": result} if result else {})}
        subprocess.run(["/bin/sh", script, str(tmp_path), unit], env=env, check=True)
        written = (tmp_path / f"unit-{unit}.prom").read_text()
        assert f'pyinfra_flask_unit_failed{{unit="{unit}"}} {failed}\n' in written, (result, written)
        assert "# TYPE pyinfra_flask_unit_failed gauge" in written
        assert [p.name for p in tmp_path.iterdir()] == [f"unit-{unit}.prom"]  # no temporary file left
    # Without a monitoring host (no textfile directory) it writes nothing and succeeds.
    subprocess.run(["/bin/sh", script, str(tmp_path / "absent"), unit], env={"SERVICE_RESULT": "exit-code"},
                   check=True)
    assert not (tmp_path / "absent").exists()


def test_the_restore_drill_without_a_query_checks_tables_and_is_off_with_null():
    bk = cluster()["bk1"]
    service = str(bk.uploads[f"{UNITS}/pyinfra-flask-pgbackrest-verify.service"])
    assert "--query-file" not in service
    assert "OnCalendar=*-*-* 05:00:00" in str(bk.uploads[f"{UNITS}/pyinfra-flask-pgbackrest-verify.timer"])
    off = cluster(pgbackrest_verify_schedule=None)["bk1"]
    assert not [dest for dest in off.uploads if "pgbackrest-verify" in dest]
    assert not [name for name in off.changed if "server binaries" in name]


@pytest.fixture(autouse=True)
def _umask_given_back():
    """files/pgbackrest-verify.py's main(), called in this process, sets the umask (077): the
    tests after these in the same process (their files' modes) get theirs back."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


def fake_tools(tmp_path, monkeypatch, tables: str, rows: str):
    """pgbackrest, pg_ctl and psql as small scripts: the restore makes the data
    directory, psql answers `tables` for the count and `rows` for the query."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "pgbackrest": 'for a; do case "$a" in --pg1-path=*) mkdir -p "${a#--pg1-path=}";; esac; done\n'
                      f'echo "$@" > {tmp_path}/restore-args',
        "pg_ctl": f'echo "$@" >> {tmp_path}/pg_ctl-calls',
        "psql": 'case "$*" in *pg_is_in_recovery*) echo f;; *pg_tables*) echo ' + tables + ';; '
                '*) printf "' + rows + '";; esac',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "state").mkdir()
    (tmp_path / "query.sql").write_text("select 1\n")
    return ["--stanza", "main", "--bin", str(bin_dir), "--database", "shop", "--scratch-root",
            str(tmp_path / "state"), "--state", str(tmp_path / "state"), "--timeout", "5"]


def test_the_drill_passes_restores_without_the_db_host_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    args = fake_tools(tmp_path, monkeypatch, tables="3", rows="1\\n")
    assert VERIFY["main"]([*args, "--query-file", str(tmp_path / "query.sql")]) == 0
    last = (tmp_path / "state" / "last").read_text()
    assert last.startswith("ok ") and "shop: 3 tables, the query returned 1 rows" in last
    restore = (tmp_path / "restore-args").read_text()
    assert "--reset-pg1-host " in restore and "--archive-mode=off" in restore and "--type=default" in restore
    # Started on its socket, stopped, the scratch directory gone.
    calls = (tmp_path / "pg_ctl-calls").read_text()
    assert " start" in calls and "-m immediate -w stop" in calls
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["last"]


@pytest.mark.parametrize(("tables", "rows", "why"), [
    ("0", "", "the database shop has no tables"),
    ("2", "", "pgbackrest_verify_query returned no rows"),
])
def test_the_drill_fails_saying_why_and_still_stops_and_cleans_up(tmp_path, monkeypatch, tables, rows, why):
    args = fake_tools(tmp_path, monkeypatch, tables=tables, rows=rows)
    assert VERIFY["main"]([*args, "--query-file", str(tmp_path / "query.sql")]) == 1
    last = (tmp_path / "state" / "last").read_text()
    assert last.startswith("failed ") and why in last
    assert "-m immediate -w stop" in (tmp_path / "pg_ctl-calls").read_text()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["last"]


def test_a_restore_that_fails_is_a_failed_drill(tmp_path, monkeypatch):
    args = fake_tools(tmp_path, monkeypatch, tables="1", rows="")
    (tmp_path / "bin" / "pgbackrest").write_text("#!/bin/sh\necho 'ERROR: [028]: backup is corrupt' >&2\nexit 28\n")
    assert VERIFY["main"](args) == 1
    assert "pgbackrest restore: ERROR: [028]: backup is corrupt" in (tmp_path / "state" / "last").read_text()
    assert not (tmp_path / "pg_ctl-calls").exists()


def test_an_s3_repository_is_configured_on_the_backup_host_its_secret_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_S3_SECRET", "s3cr3t-value")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    runs = cluster(pgbackrest_repository="s3", pgbackrest_s3_endpoint="s3.example.net", pgbackrest_s3_port=9000,
                   pgbackrest_s3_bucket="db-backups", pgbackrest_s3_key="AKIDEXAMPLE", pgbackrest_s3_uri_style="path",
                   pgbackrest_s3_key_secret_from="TEST_S3_SECRET", pgbackrest_s3_ca_file=str(ca))
    db, bk = runs["db1"], runs["bk1"]
    conf = bk.uploads["/etc/pgbackrest.conf"].decode()
    for line in ("repo1-type=s3", "repo1-path=/pgbackrest", "repo1-s3-endpoint=s3.example.net",
                 "repo1-storage-port=9000", "repo1-s3-bucket=db-backups", "repo1-s3-uri-style=path",
                 "repo1-s3-key=AKIDEXAMPLE", "repo1-s3-key-secret=s3cr3t-value",
                 "repo1-storage-ca-file=/etc/pgbackrest-s3-ca.crt", "pg1-host=10.0.0.5"):
        assert line in conf, line
    written = [(name, commands) for name, commands in bk.changed.items() if "Write /etc/pgbackrest.conf" in name]
    assert written and "its key's secret not shown" in written[0][0]
    assert "s3cr3t-value" not in repr(written) and "chown root:pgbackrest" in " ".join(written[0][1])
    assert [name for name in bk.changed if "Install the S3 endpoint's CA certificates" in name]
    # The db server still reaches the repository through the backup host.
    assert "repo1-host=10.0.0.9" in str(db.uploads["/etc/pgbackrest.conf"])


@pytest.mark.parametrize(("data", "key"), [
    ({"pgbackrest_repository": "s3"}, "pgbackrest_s3_endpoint"),
    ({"pgbackrest_repository": "s3", "pgbackrest_s3_endpoint": "s3.example.net", "pgbackrest_s3_bucket": "b-1",
      "pgbackrest_s3_key": "k"}, "pgbackrest_s3_key_secret_from"),
    ({"pgbackrest_s3_bucket": "No_Such"}, "pgbackrest_s3_bucket"),
    ({"pgbackrest_s3_key_secret": "two words"}, "pgbackrest_s3_key_secret"),
    ({"pgbackrest_repository": "s3", "pgbackrest_s3_endpoint": "s3.example.net", "pgbackrest_s3_bucket": "b-1",
      "pgbackrest_s3_key": "k", "pgbackrest_s3_key_secret_from": "NOT_SET_HERE_S3"}, "pgbackrest_s3_key_secret_from"),
    ({"pgbackrest_repository": "s3", "pgbackrest_s3_endpoint": "s3.example.net", "pgbackrest_s3_bucket": "b-1",
      "pgbackrest_s3_key": "k", "pgbackrest_s3_key_secret": "x", "pgbackrest_s3_ca_file": "/no/such/ca.crt"},
     "pgbackrest_s3_ca_file"),
])
def test_an_s3_repository_without_what_it_needs_is_refused_naming_the_key(data, key):
    with pytest.raises(SettingsError) as error:
        validate({"app_name": "shop", **data}, where="test", secrets=True)
    assert str(error.value).splitlines()[1].startswith(f"  - {key}") and "two words" not in str(error.value)
