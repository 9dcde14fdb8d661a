"""Backups with a backup host (pgBackRest) against the one-host path (pg_dump), measured
side by side in one run on throwaway hosts (docs/backups.md).

    .venv/bin/python -m bench.backups [--scale 20] [--load-seconds 30] [--clients 4]

A db server, an app server with tests/apps/notespg and a backup host on a Docker
network of their own, deployed as users do (`pgbackrest_archive_timeout` 10 s). Then:

1. The app's database grown with `pgbench -i -s SCALE` (scale 20: about 300 MB).
2. Backup: a full pgBackRest backup with `ops.py backup now` (over SSH to the backup
   host, compressed there) and, the same database on the same host, `pg_dump -Fc`
   (the one-host path's tool). MB/s of the cluster and of the database, and the ratio.
3. Restore: `ops.py restore` (the whole cluster, its units stopped and started around
   it, recovery to the end of the archive) and `pg_restore -j 2` of the dump into a new
   database on the db server. MB/s and the ratio.
4. WAL archive lag under a write load: `pgbench -T LOAD_SECONDS -c CLIENTS` on the db
   server, sampled every second: segments written but not yet archived (the most, and
   the median), and the seconds from the end of the load until the last segment written
   was archived (`pg_switch_wal` first).

Prints one table. Every container and network it starts carries the label
io.pyinfra-flask.bench and is removed at the end, failed or not. Not a test: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.deploy_speed import LABELS
from dev import throwaway

NOTESPG = throwaway.REPO_ROOT / "tests/apps/notespg"
DATABASE = "notespg"


def psql(db: throwaway.Host, query: str, database: str = DATABASE) -> str:
    return db.exec(f"cd / && runuser -u postgres -- psql -XAtq -d {database} -c \"{query}\"").strip()


def timed(work) -> tuple[float, object]:
    started = time.monotonic()
    result = work()
    return time.monotonic() - started, result


def ops(inventory: Path, *arguments: str) -> None:
    done = subprocess.run([sys.executable, "ops.py", str(inventory), *arguments], cwd=throwaway.REPO_ROOT,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"ops.py {' '.join(arguments)} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")


def segment(lsn_name: str) -> int:
    """A WAL file name's position (timeline left out), to count segments between two."""
    return int(lsn_name[8:16], 16) * 0x100 + int(lsn_name[16:24], 16)


def archive_lag(db: throwaway.Host, seconds: int, clients: int) -> tuple[list[int], float]:
    """Segments behind, sampled every second under pgbench's writes, and the seconds from
    the load's end until what it wrote was archived."""
    samples: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            row = psql(db, "select pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') "
                           "from pg_stat_archiver")
            current, archived = row.split("|")
            if archived:
                samples.append(segment(current) - segment(archived) - 1)  # the current one is still open
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        db.exec(f"cd / && runuser -u postgres -- /usr/lib/postgresql/*/bin/pgbench -n -T {seconds} -c {clients} "
                f"{DATABASE} > /dev/null")
    finally:
        done.set()
        sampler.join()
    ended = time.monotonic()
    last = psql(db, "select pg_walfile_name(pg_switch_wal())")
    while True:
        archived = psql(db, "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        if archived and segment(archived) >= segment(last):
            return samples, time.monotonic() - ended
        if time.monotonic() - ended > 600:
            raise SystemExit(f"{last} not archived within 600 s of the load's end")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=20, help="pgbench's scale (20: about 300 MB; default 20)")
    parser.add_argument("--load-seconds", type=int, default=30, help="seconds of pgbench writes (default 30)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench's clients during the load (default 4)")
    args = parser.parse_args()
    image = throwaway.ensure_image("bookworm")
    client = throwaway.docker_client()
    network = f"bench-backups-{uuid.uuid4().hex[:6]}"
    client.networks.create(network, driver="bridge", labels={throwaway.LABEL: "network", **LABELS})
    hosts: list[throwaway.Host] = []
    work = Path(tempfile.mkdtemp(prefix="bench-backups-"))
    try:
        for cap_add in (("NET_ADMIN",), (), ()):
            hosts.append(throwaway.start_host(image, name=f"bench-backups-{uuid.uuid4().hex[:6]}", network=network,
                                              labels=LABELS, cap_add=cap_add))
        db, app, backup = hosts
        source = work / "notespg"
        shutil.copytree(NOTESPG, source, ignore=shutil.ignore_patterns("next"))
        data = {"app_name": "notespg", "app_source": str(source), "database": "postgresql",
                "healthcheck_body": "notespg", "migrate_commands": ["flask --app wsgi db upgrade"]}
        inventory = throwaway.write_group_inventory(work / "inventory.py", {
            "db_servers": [(db, {"private_address": db.address(network), "pgbackrest_archive_timeout": 10, **data})],
            "app_servers": [(app, {"private_address": app.address(network), **data})],
            "backup_servers": [(backup, {"private_address": backup.address(network), **data})]})
        print("Deploying a db server, an app server and a backup host...", flush=True)
        deployed = throwaway.run_pyinfra(inventory, work, timeout=1800)
        if deployed.returncode != 0:
            raise SystemExit(f"the deploy failed:\n{deployed.output[-4000:]}")
        print(f"Growing {DATABASE} with pgbench -i -s {args.scale}...", flush=True)
        db.exec(f"cd / && runuser -u postgres -- /usr/lib/postgresql/*/bin/pgbench -i -q -s {args.scale} {DATABASE} "
                "> /dev/null 2>&1")
        psql(db, "checkpoint")
        database_mb = int(psql(db, f"select pg_database_size('{DATABASE}')")) / 1e6
        cluster_mb = int(psql(db, "select sum(pg_database_size(datname)) from pg_database")) / 1e6

        print("Backing up: pgBackRest (full, to the backup host), then pg_dump (on the db server)...", flush=True)
        full, _ = timed(lambda: ops(inventory, "backup", "now"))
        dump, _ = timed(lambda: db.exec(f"cd / && runuser -u postgres -- pg_dump -Fc -f /tmp/bench.dump {DATABASE}"))
        dump_mb = int(db.exec("stat -c %s /tmp/bench.dump")) / 1e6
        stored_mb = int(backup.exec("du -sb /var/lib/pgbackrest/backup | cut -f1")) / 1e6

        print("Restoring: ops.py restore (pgBackRest), then pg_restore -j 2 (a new database)...", flush=True)
        restore, _ = timed(lambda: ops(inventory, "restore"))
        psql(db, "create database bench_restore", database="postgres")
        pg_restore, _ = timed(lambda: db.exec("cd / && runuser -u postgres -- pg_restore -j 2 -d bench_restore "
                                              "/tmp/bench.dump"))
        psql(db, "drop database bench_restore", database="postgres")

        print(f"WAL under load: pgbench -T {args.load_seconds} -c {args.clients}...", flush=True)
        samples, drained = archive_lag(db, args.load_seconds, args.clients)
    finally:
        for h in hosts:
            h.remove()
        client.networks.get(network).remove()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("database (pgbench scale)", f"{database_mb:.0f} MB (scale {args.scale}); the cluster {cluster_mb:.0f} MB", ""),
        ("full backup, pgBackRest via ops.py", f"{full:.1f} s, {cluster_mb / full:.1f} MB/s of the cluster",
         f"{stored_mb:.0f} MB stored"),
        ("pg_dump -Fc of the database", f"{dump:.1f} s, {database_mb / dump:.1f} MB/s", f"{dump_mb:.0f} MB dump"),
        ("  pgBackRest / pg_dump time", f"{full / dump:.2f}x", ""),
        ("restore, pgBackRest via ops.py", f"{restore:.1f} s, {cluster_mb / restore:.1f} MB/s of the cluster",
         "units stopped and started, recovery"),
        ("pg_restore -j 2 into a new database", f"{pg_restore:.1f} s, {database_mb / pg_restore:.1f} MB/s", ""),
        ("  pgBackRest / pg_restore time", f"{restore / pg_restore:.2f}x", ""),
        (f"WAL segments not yet archived (pgbench -c {args.clients})",
         f"max {max(samples, default=0)}, median {statistics.median(samples) if samples else 0:g}",
         f"{len(samples)} samples, 1 s apart"),
        ("last segment archived after the load's end", f"{drained:.1f} s", "pg_switch_wal first"),
    ]
    width = max(len(row[0]) for row in rows)
    print()
    for what, figure, note in rows:
        print(f"{what:<{width}}  {figure}{'  (' + note + ')' if note else ''}")


if __name__ == "__main__":
    main()
