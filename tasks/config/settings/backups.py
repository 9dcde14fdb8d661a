"""The settings of one concern: off-host backups, when the inventory has a
`backup_servers` host (tasks/roles/backup_server.py, docs/backups.md): the database
with pgBackRest (tasks/steps/pgbackrest.py), the apps' `shared_paths` with restic
(tasks/steps/restic.py).

The db server reads `pgbackrest_archive_timeout` from its own data, each app server
`files_backup_schedule` from its app's; the other schedules and the retention are read
from the backup host's own data (it runs the backups, the expiry and the drills).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from tasks.config.settings.values import calendar_event

Calendar = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(calendar_event)]


class BackupSettings(BaseModel):
    """pgBackRest: WAL archiving from the db server, full and differential backups on the backup host."""

    pgbackrest_archive_timeout: int = Field(
        60, ge=10, le=3600,
        description="With a `backup_servers` host: PostgreSQL's `archive_timeout` on the db server, in seconds: "
        "a WAL segment is archived to the backup host at least this often while anything is written, so at "
        "most this many seconds of writes are lost with the db host (docs/backups.md).",
    )
    pgbackrest_full_schedule: Calendar = Field(
        "Sun *-*-* 01:00:00",
        description="On the `backup_servers` host: when a systemd timer takes a full backup of the db server "
        "(a calendar event like `jobs`' schedules).",
    )
    pgbackrest_diff_schedule: Calendar | None = Field(
        "Mon..Sat *-*-* 01:00:00",
        description="On the `backup_servers` host: when a differential backup is taken (what changed since the "
        "last full one); `null` for none.",
    )
    pgbackrest_retention_full: int = Field(
        2, ge=1, le=100,
        description="Full backups kept (pgBackRest's `repo1-retention-full`); older ones, and the WAL only they "
        "need, are expired on the backup host after each backup.",
    )
    pgbackrest_retention_diff: int = Field(
        6, ge=1, le=1000,
        description="Differential backups kept (`repo1-retention-diff`).",
    )
    pgbackrest_verify_schedule: Calendar | None = Field(
        "*-*-* 05:00:00",
        description="On the `backup_servers` host: when the restore drill runs: the newest backup restored into "
        "a scratch directory there, recovered to the end of the archive by a throwaway PostgreSQL (no TCP) as "
        "the unprivileged `pgbackrest` user, checked (the app's database has tables; `pgbackrest_verify_query` "
        "returns rows), then removed; a failure fails the unit and shows in `ops.py status`. `null`: no drill.",
    )
    pgbackrest_verify_query: str | None = Field(
        None, min_length=1, max_length=2000,
        description="With the restore drill: an SQL query run (read-only) in the restored copy of the app's "
        "database that must return at least one row, e.g. `select 1 from notes where created > now() - "
        "interval '2 days'`; `null`: only the tables are checked.",
    )
    files_backup_schedule: Calendar | None = Field(
        "*-*-* *:15:00",
        description="With a `backup_servers` host, on each app server: when the app's `shared_paths` (uploads, "
        "`instance/`) are backed up there with restic, encrypted, as the app user, into a repository the app "
        "server can only add to; skipped while they are all empty (a new host before `ops.py restore-files`). "
        "`null`: no file backups.",
    )
    files_keep_hourly: int = Field(
        24, ge=0, le=10000,
        description="On the `backup_servers` host: hourly snapshots of each app server's files kept (restic's "
        "`forget --keep-hourly`); the others are forgotten and pruned there, by `files_prune_schedule`.",
    )
    files_keep_daily: int = Field(7, ge=0, le=10000, description="Daily snapshots kept (`--keep-daily`).")
    files_keep_weekly: int = Field(4, ge=0, le=10000, description="Weekly snapshots kept (`--keep-weekly`).")
    files_prune_schedule: Calendar = Field(
        "*-*-* 04:00:00",
        description="On the `backup_servers` host: when restic forgets the snapshots the `files_keep_*` settings "
        "do not keep and prunes what only they used, as the repositories' owner (the app servers cannot).",
    )
    files_verify_schedule: Calendar | None = Field(
        "*-*-* 05:30:00",
        description="On the `backup_servers` host: when the files drill runs: each app server's newest snapshot "
        "restored into a scratch directory there and its contents verified against the repository, then "
        "removed; a failure fails the unit and shows in `ops.py status`. `null`: no drill.",
    )
