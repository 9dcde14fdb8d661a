"""The local PostgreSQL on a real host (marker `features`, one fork of the shared
deployed host): the notespg app (Flask-SQLAlchemy + Flask-Migrate) through its first
migration, a redeploy under load with a second migration, a rollback, a backup, its
restore, and the database unreachable from the network (tasks/steps/database.py,
files/db-backup.py, docs/database.md). Without a host: tests/steps/test_database.py.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, Load, get, run_deploy
from tests.steps.test_database import DB, NOTESPG


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
