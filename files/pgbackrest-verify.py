#!/usr/bin/python3 -I -S
"""The pgBackRest restore drill, as the repository's owner on the backup host
(installed by tasks/steps/pgbackrest.py, run by pyinfra-flask-pgbackrest-verify.service,
docs/backups.md): backups that are tried, not hoped for.

It restores the newest backup into a scratch directory on this host (pgBackRest checks
every file against its own checksums), recovers it to the end of the archive with a
throwaway PostgreSQL of the db server's major version (a unix socket in the scratch
directory only, no TCP, archiving off), checks that the app's database has at least one
table outside the system schemas and that the optional query returns rows (read-only),
then stops PostgreSQL and removes the scratch directory, always. Nothing from the db
host is trusted beyond what pgBackRest verifies: the cluster runs as this unprivileged
user, reachable only through its socket directory (mode 700).

Its last line, and the file `<state>/last` (`ok|failed <UTC time> <why>`), say how it
ended; the exit status is 0 only when every check passed (`ops.py status` reads both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

# Tables of these schemas are PostgreSQL's own.
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"


class Failed(Exception):
    pass


def run(command: list[str], what: str, **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
        errors = [line for line in said if "ERROR:" in line or "FATAL:" in line]
        raise Failed(f"{what}: {(errors or said)[-1].strip()[:300]}")
    return done.stdout


def psql(bin_dir: str, socket: str, database: str, sql: str) -> list[str]:
    out = run([f"{bin_dir}/psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socket, "-U", "postgres",
               "-d", database, "-c", sql], f"query on {database}",
              env={**os.environ, "PGOPTIONS": "-c default_transaction_read_only=on -c statement_timeout=600000"})
    return [line for line in out.splitlines() if line.strip()]


def last_line(path: str) -> str:
    """The log's last FATAL, PANIC or ERROR line (why PostgreSQL stopped), else its last line."""
    try:
        with open(path, errors="replace") as file:
            lines = [line.strip() for line in file if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if any(f"{level}:" in line for level in ("FATAL", "PANIC", "ERROR"))]
    return (errors or lines or [""])[-1][:300]


def local(stanza: str, scratch: str) -> list[str]:
    """pgBackRest's options for the scratch cluster: on this host (the config's pg1-host reset)."""
    return [f"--stanza={stanza}", "--reset-pg1-host", f"--pg1-path={scratch}/data"]


def restore_command(stanza: str, scratch: str) -> str:
    """The restored cluster's restore_command: this host's repository, read locally."""
    return f"pgbackrest {' '.join(local(stanza, scratch))} archive-get %f \"%p\""


def drill(args, scratch: str) -> str:
    data, socket = f"{scratch}/data", f"{scratch}/socket"
    for path in (data, socket, f"{scratch}/spool"):
        os.mkdir(path, 0o700)
    # The db server's pg1-host-user and pg1-host-cmd in the config are not restore's options, and
    # pgBackRest ignores them there (and refuses them on the command line).
    # restore empties archive-get's spool, Debian's /var/spool/pgbackrest (`postgres`'s): one of its own.
    run(["pgbackrest", *local(args.stanza, scratch), f"--spool-path={scratch}/spool", "--type=default",
         "--archive-mode=off",
         f"--recovery-option=restore_command={restore_command(args.stanza, scratch)}",
         "--log-level-console=warn", "restore"], "pgbackrest restore")
    # Debian keeps postgresql.conf and pg_hba.conf in /etc: the scratch cluster gets its own.
    # hot_standby off: no connection before the end of recovery, and so no refusal of
    # settings lower than the db server's (max_connections and the like).
    with open(f"{data}/postgresql.conf", "w") as conf:
        conf.write(f"listen_addresses = ''\nunix_socket_directories = '{socket}'\nport = 5432\n"
                   "archive_mode = off\nhot_standby = off\nshared_buffers = 32MB\n"
                   f"hba_file = '{data}/pg_hba.conf'\nident_file = '{data}/pg_ident.conf'\n")
    with open(f"{data}/pg_hba.conf", "w") as hba:
        hba.write("local all all trust\n")
    open(f"{data}/pg_ident.conf", "w").close()
    log = f"{scratch}/postgresql.log"
    started = False
    try:
        started = True  # or half started: stopped in any case
        try:
            run([f"{args.bin}/pg_ctl", "-D", data, "-l", log, "-w", "-t", str(args.timeout),
                 "-o", f"-c config_file={data}/postgresql.conf", "start"], "start PostgreSQL on the restored copy")
        except Failed as exc:
            raise Failed(f"{exc} {last_line(log)}") from None
        deadline = time.monotonic() + args.timeout
        while True:  # until recovery reached the end of the archive and promoted
            try:
                if psql(args.bin, socket, "postgres", "select pg_is_in_recovery()") == ["f"]:
                    break
            except Failed as exc:
                if subprocess.run([f"{args.bin}/pg_ctl", "-D", data, "status"], capture_output=True).returncode:
                    raise Failed(f"PostgreSQL stopped during recovery: {last_line(log) or exc}") from None
                if time.monotonic() > deadline:
                    raise Failed(f"still recovering after {args.timeout} s: {exc}") from None
            time.sleep(1)
        tables = psql(args.bin, socket, args.database,
                      f"select count(*) from pg_tables where schemaname not in {SYSTEM_SCHEMAS}")
        if tables in ([], ["0"]):
            raise Failed(f"the database {args.database} has no tables")
        if args.query_file:
            with open(args.query_file) as file:
                query = file.read().strip()
            if query:
                rows = psql(args.bin, socket, args.database, query)
                if not rows:
                    raise Failed("pgbackrest_verify_query returned no rows")
                return f"{args.database}: {tables[0]} tables, the query returned {len(rows)} rows"
        return f"{args.database}: {tables[0]} tables"
    finally:
        if started:
            subprocess.run([f"{args.bin}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--bin", required=True, help="PostgreSQL's server binaries (the db server's version)")
    parser.add_argument("--database", required=True, help="the app's database, which must have tables")
    parser.add_argument("--query-file", help="a query that must return rows (optional)")
    parser.add_argument("--scratch-root", required=True, help="where the scratch directory is made")
    parser.add_argument("--state", required=True, help="where `last` is written")
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args(argv)
    os.umask(0o077)
    scratch = tempfile.mkdtemp(prefix="verify.", dir=args.scratch_root)
    try:
        why, ok = drill(args, scratch), True
    except Failed as exc:
        why, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 (any failure is the drill's result, said in one line)
        why, ok = f"{type(exc).__name__}: {exc}", False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    line = f"{'ok' if ok else 'failed'} {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} {why}"
    with open(f"{args.state}/last.new", "w") as file:
        file.write(line.replace("\n", " ") + "\n")
    os.replace(f"{args.state}/last.new", f"{args.state}/last")
    print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
