"""pgBackRest on real hosts (marker `features`): a db server, an app server with
tests/apps/notespg and a `backup_servers` host on a Docker network of the test's own
(tasks/roles/backup_server.py, tasks/steps/pgbackrest.py, docs/backups.md): WAL
archived within archive_timeout, a full backup, a point-in-time restore that returns
exactly the rows written before the time, and the db host's attempts at the
repository failing. Without a host: tests/steps/test_pgbackrest.py.
"""

from __future__ import annotations

import shlex
import threading
import time

import pytest
import requests

from dev import throwaway
from tests.conftest import get, run_deploy
from tests.hosts.test_database import notespg, notespg_data, ops

ARCHIVE_TIMEOUT = 10
# The segment is written seconds after the deploy restarted PostgreSQL: without the wake-up after each
# start (templates/postgresql-wake.conf.j2) its checkpointer slept through archive_timeout for up to
# checkpoint_timeout (5 min), and this wait failed. The slack is archive-push's SSH hop and pgBackRest's
# start on a loaded test machine; the lag is printed.
SLACK = 30
REPOSITORY = "/var/lib/pgbackrest"
DRILL = "pyinfra-flask-pgbackrest-verify.service"
TEXTFILE_DIR = "/var/lib/pyinfra-flask/metrics"


def sql(db: throwaway.Host, query: str) -> str:
    return db.exec(f"cd / && runuser -u postgres -- psql -XAt -d notespg -c {shlex.quote(query)}").strip()


def archived(db: throwaway.Host) -> str:
    """The last WAL segment PostgreSQL archived."""
    return sql(db, "select coalesce(last_archived_wal, '') from pg_stat_archiver")


def wait_archived(db: throwaway.Host, segment: str, seconds: float) -> float:
    """Seconds until `segment` (or a later one) is archived; fails after `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        found = archived(db)
        if found and found[-24:] >= segment[-24:]:
            return time.monotonic() - started
        time.sleep(0.5)
    diag = db.exec("tail -20 /var/log/postgresql/*.log; ls /var/lib/postgresql/*/main/pg_wal/archive_status; "
                   "runuser -u postgres -- psql -XAt -c 'select * from pg_stat_archiver'", check=False)
    raise AssertionError(f"{segment} not archived within {seconds} s:\n{diag}")


def disaster_drill(hosts, db, app, machines, image, network, write_inventory, tmp_path) -> None:
    """Rows written through the app every 0.2 s; the db host removed outright (its container and
    disk); a new empty host under its inventory name (a new address, as a new machine gets); one
    deploy of the inventory (docs/backups.md: it ends at the app's health check, on an empty
    database) and one `ops.py restore`; the app serves again. Prints what was lost
    (the writes in the last seconds before the loss: the goal is under 60 s) and the time from the
    new host to serving (the goal: under 5 minutes)."""
    written, stop = [], threading.Event()

    def writer():
        number = 0
        while not stop.is_set():
            number += 1
            try:
                ok = requests.post(app.url + "/notes", data={"text": f"w{number}"}, timeout=3).status_code == 200
            except requests.RequestException:
                ok = False
            written.append((f"w{number}", time.time(), ok))
            time.sleep(0.2)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(25)
    db.remove()  # killed and gone with its disk, now (not in the background)
    lost_at = time.time()  # every write acknowledged before this was committed on it
    hosts.remove(db)
    time.sleep(2)
    stop.set()
    thread.join()
    acknowledged = [(text, at) for text, at, ok in written if ok and at < lost_at]
    assert len(acknowledged) > 50, written[-5:]
    replaced = time.monotonic()
    new = hosts.start(image, network=network, cap_add=("NET_ADMIN",), hostname=db.name)
    machines.append(new)
    inventory = write_inventory(new)
    deployed = run_deploy(inventory, tmp_path, check=False)
    # Everything converges; the app's health check then fails on the new, empty database (500: no table),
    # so the app server's run stops there, saying so, and the app serves no empty database.
    if deployed.returncode != 0:
        errors = [line for line in deployed.output.splitlines() if "ERROR" in line or "Error:" in line]
        assert errors and all("health check" in line or "executed 0 commands" in line for line in errors) and \
            "answered 500" in deployed.output, deployed.output[-6000:]
    deploy_seconds = time.monotonic() - replaced
    restored = ops(inventory, "restore")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    serving = get(app.url + "/notes")
    seconds = time.monotonic() - replaced
    kept = [line for line in serving.text.splitlines() if line.startswith("w")]
    texts = [text for text, _ in acknowledged]
    # What came back is every acknowledged write up to a point, in order, and nothing else.
    assert kept == texts[:len(kept)], (kept[-3:], texts[:len(kept)][-3:])
    last_kept = acknowledged[len(kept) - 1][1] if kept else 0.0
    window = lost_at - last_kept
    print(f"disaster drill: {len(acknowledged)} writes acknowledged before the db host was removed, {len(kept)} "
          f"back after the restore, {len(acknowledged) - len(kept)} lost: the last {window:.1f}s of writes "
          f"(archive_timeout {ARCHIVE_TIMEOUT}s); new host to serving {seconds:.1f}s (its boot and the deploy "
          f"{deploy_seconds:.1f}s, the restore {seconds - deploy_seconds:.1f}s)")
    assert window < 60 and seconds < 300
    run_deploy(inventory, tmp_path)  # what the first run left undone on the app server, now it can


@pytest.mark.features
def test_wal_reaches_the_backup_host_a_point_in_time_restores_and_the_db_host_cannot_destroy_it(
        hosts, deployed_image, bookworm_image, tmp_path):
    started = time.monotonic()
    network = hosts.network()
    db = hosts.start(deployed_image, network=network, cap_add=("NET_ADMIN",))
    app = hosts.start(deployed_image, network=network)
    backup = hosts.start(bookworm_image, network=network)
    machines = [db, app, backup]
    data = notespg_data(notespg(tmp_path, "v1"))

    def write_inventory(db):
        return throwaway.write_group_inventory(tmp_path / "inventory.py", {
            "db_servers": [(db, {"private_address": db.address(network),
                                 "pgbackrest_archive_timeout": ARCHIVE_TIMEOUT, **data})],
            "app_servers": [(app, {"private_address": app.address(network), **data})],
            "backup_servers": [(backup, {"private_address": backup.address(network), **data,
                                         "pgbackrest_verify_query": "select 1 from note"})]})

    inventory = write_inventory(db)
    try:
        first = run_deploy(inventory, tmp_path, check=False)
        assert first.returncode == 0, "\n".join(line for line in first.output.splitlines()
                                                if "rror" in line or "ailed" in line or "Traceback" in line)
        print(f"\nfirst deploy (db server, app server, backup host): {first.seconds:.1f}s")
        # WAL written now reaches the repository within archive_timeout (and the sweep's interval).
        requests.post(app.url + "/notes", data={"text": "before the backup"}, timeout=10).raise_for_status()
        segment = sql(db, "select pg_walfile_name(pg_current_wal_lsn())")
        print(f"WAL {segment} archived after {wait_archived(db, segment, ARCHIVE_TIMEOUT + SLACK):.1f}s")
        made = ops(inventory, "backup", "now")
        assert made.returncode == 0, made.stdout + made.stderr
        listed = ops(inventory, "backups")
        assert listed.returncode == 0 and "full backup:" in listed.stdout, listed.stdout + listed.stderr
        # The restore drill, on the backup host as `pgbackrest`: the newest backup restored, recovered, checked.
        # As when a monitoring host's exporters are there: systemd's verdict in node exporter's textfile directory.
        backup.exec(f"mkdir -p {TEXTFILE_DIR}")
        drill_started = time.monotonic()
        backup.exec(f"systemctl start {DRILL}")
        drill_seconds = time.monotonic() - drill_started
        assert f'pyinfra_flask_unit_failed{{unit="{DRILL}"}} 0' in backup.exec(f"cat {TEXTFILE_DIR}/unit-{DRILL}.prom")
        status = ops(inventory, "status")
        assert "restore drill: ok at " in status.stdout and "notespg: " in status.stdout, status.stdout + status.stderr
        assert "the query returned 1 rows" in status.stdout, status.stdout
        print(f"restore drill (ok): {drill_seconds:.1f}s")
        # Two writes a moment apart; the time between them is the target.
        requests.post(app.url + "/notes", data={"text": "kept"}, timeout=10).raise_for_status()
        time.sleep(1)
        target = sql(db, "select now()")
        time.sleep(1)
        requests.post(app.url + "/notes", data={"text": "after the target"}, timeout=10).raise_for_status()
        segment = sql(db, "select pg_walfile_name(pg_current_wal_lsn())")
        wait_archived(db, segment, ARCHIVE_TIMEOUT + SLACK)
        # The db host's root, with the db host's credentials, against the repository: all refused.
        backup.exec("systemctl start pyinfra-flask-pgbackrest-sweep.service")
        wal = backup.exec(f"find {REPOSITORY}/archive -name '0000*-*' -type f | sort | head -1").strip()
        before = backup.exec(f"sha1sum {shlex.quote(wal)}")
        login = f"runuser -u postgres -- ssh -o BatchMode=yes pgbackrest-ingest@{backup.address(network)}"
        attacks = {
            "stanza-delete": "cd / && runuser -u postgres -- pgbackrest --stanza=main stanza-delete --force",
            "expire": "cd / && runuser -u postgres -- pgbackrest --stanza=main expire",
            "ssh rm -rf": f"cd / && {login} rm -rf {REPOSITORY}",
            "ssh shell": f"cd / && {login} sh -c id",
        }
        for what, command in attacks.items():
            out = db.exec(f"{command} 2>&1; echo status=$?", check=False)
            assert "status=0" not in out, f"{what}: {out}"
        # Whatever pgBackRest's remote could be made to do runs as the ingest user: as that user, on the
        # backup host itself, overwriting, removing and renaming a WAL file all fail.
        ingest = "cd / && runuser -u pgbackrest-ingest -- sh -c"
        for what, command in {"overwrite": f"echo x > {wal}", "remove": f"rm -f {wal}",
                              "rename": f"mv {wal} {wal}.x", "chmod": f"chmod 666 {wal}"}.items():
            out = backup.exec(f"{ingest} {shlex.quote(command)} 2>&1; echo status=$?", check=False)
            assert "status=0" not in out, f"{what}: {out}"
        assert backup.exec(f"sha1sum {shlex.quote(wal)}") == before
        # A second file for a segment the archive has is taken out by the sweep.
        backup.exec(f"{ingest} {shlex.quote(f'echo x > {wal[:-10]}x.gz')}")
        backup.exec("systemctl start pyinfra-flask-pgbackrest-sweep.service")
        assert not backup.exec(f"ls {shlex.quote(wal[:-10])}x.gz 2>/dev/null; true").strip()
        # The repository still restores: to the time between the two writes.
        restored = ops(inventory, "restore", "--to", target)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "Stopped notespg.service" in restored.stdout, restored.stdout
        assert get(app.url + "/notes").text == "before the backup\nkept\n"
        # The restored cluster archives within archive_timeout again (its checkpointer woken once out of recovery).
        requests.post(app.url + "/notes", data={"text": "after the restore"}, timeout=10).raise_for_status()
        segment = sql(db, "select pg_walfile_name(pg_current_wal_lsn())")
        print(f"WAL {segment} archived {wait_archived(db, segment, ARCHIVE_TIMEOUT + SLACK):.1f}s after the restore")
        second = run_deploy(inventory, tmp_path)
        assert second.changed_operations() == [], second.output[-3000:]
        disaster_drill(hosts, db, app, machines, bookworm_image, network, write_inventory, tmp_path)
        db = machines[-1]
        # A corrupted copy: a byte run changed in the largest file of the newest backup (as root on the
        # backup host). The drill's restore refuses it: the unit fails, status says so and why.
        newest = f"{REPOSITORY}/backup/main/latest/pg_data"
        victim = backup.exec(f"find -L {newest} -type f -printf '%s %p\\n' | sort -n | tail -1").split()[-1]
        backup.exec(f"printf 'corrupted-by-the-test-0123456789' | dd of={shlex.quote(victim)} bs=1 seek=64 "
                    "conv=notrunc status=none")
        drill_started = time.monotonic()
        failed = backup.exec(f"systemctl start {DRILL} 2>&1; echo status=$?", check=False)
        drill_seconds += time.monotonic() - drill_started
        assert "status=0" not in failed, failed
        assert backup.exec(f"systemctl is-failed {DRILL}", check=False).strip() == "failed"
        assert f'pyinfra_flask_unit_failed{{unit="{DRILL}"}} 1' in backup.exec(f"cat {TEXTFILE_DIR}/unit-{DRILL}.prom")
        assert not backup.exec("ls /var/lib/pyinfra-flask-pgbackrest-verify/ | grep -v '^last$'; true").strip()
        status = ops(inventory, "status")
        assert status.returncode != 0 and "restore drill: FAILED at " in status.stdout, status.stdout + status.stderr
        said = [line for line in status.stdout.splitlines() if "] restore drill: " in line]
        print(f"{said[0] if said else status.stdout}\nboth drills: {drill_seconds:.1f}s")
    except BaseException:
        print(db.exec("tail -n 30 /var/log/postgresql/*.log", check=False) if db in hosts.hosts else "")
        print(backup.exec(f"journalctl --no-pager -n 30 -u pyinfra-flask-pgbackrest-sweep -u {DRILL}; "
                          f"ls -laR {REPOSITORY} | head -60", check=False))
        raise
    finally:
        for h in machines:
            hosts.remove(h)
    print(f"test_backups on real hosts: {time.monotonic() - started:.1f}s")
