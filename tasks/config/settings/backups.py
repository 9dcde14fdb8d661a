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

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from tasks.config.settings.alerts import ENV_NAME_RE, SMTP_HOST_RE
from tasks.config.settings.values import calendar_event

Calendar = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(calendar_event)]
# An S3 bucket's name (the rules every S3 implementation takes).
BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# What pgBackRest needs of an S3 repository (the key's secret: _secret or _secret_from).
S3_REQUIRED = ("pgbackrest_s3_endpoint", "pgbackrest_s3_bucket", "pgbackrest_s3_key")


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
    pgbackrest_repository: Literal["backup_host", "s3"] = Field(
        "backup_host",
        description="Where the backup host keeps pgBackRest's repository: on its own disk (`backup_host`, the db "
        "host can only add: docs/backups.md), or in an S3-compatible bucket (`s3`, the `pgbackrest_s3_*` "
        "settings; deleting there is the bucket policy's business). The backup host runs the backups either way.",
    )
    pgbackrest_s3_endpoint: Annotated[str, Field(pattern=SMTP_HOST_RE, max_length=253)] | None = Field(
        None, description="With `pgbackrest_repository = s3`: the S3 endpoint's host name, e.g. "
        "`s3.eu-west-1.amazonaws.com` (`repo1-s3-endpoint`).",
    )
    pgbackrest_s3_port: int = Field(443, ge=1, le=65535, description="The S3 endpoint's HTTPS port.")
    pgbackrest_s3_bucket: Annotated[str, Field(pattern=BUCKET_RE)] | None = Field(
        None, description="The bucket (`repo1-s3-bucket`).",
    )
    pgbackrest_s3_region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")] = Field(
        "us-east-1", description="The bucket's region (`repo1-s3-region`).",
    )
    pgbackrest_s3_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]*$", max_length=200)] = Field(
        "/pgbackrest", description="The repository's path in the bucket (`repo1-path`).",
    )
    pgbackrest_s3_uri_style: Literal["host", "path"] = Field(
        "host", description="`host` (bucket.endpoint, AWS) or `path` (endpoint/bucket, most self-hosted S3).",
    )
    pgbackrest_s3_key: Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$")] | None = Field(
        None, description="The access key's id (`repo1-s3-key`).",
    )
    pgbackrest_s3_key_secret: str | None = Field(
        None, description="The access key's secret (`repo1-s3-key-secret`), never shown; better "
        "`pgbackrest_s3_key_secret_from`, so that it is not in the inventory.",
    )
    pgbackrest_s3_key_secret_from: Annotated[str, Field(pattern=ENV_NAME_RE)] | None = Field(
        None, description="The name of an environment variable of the shell running pyinfra that holds the "
        "key's secret (instead of `pgbackrest_s3_key_secret`).",
    )
    pgbackrest_s3_ca_file: str | None = Field(
        None, min_length=1, description="A local file of CA certificates the endpoint's certificate must "
        "chain to, for an S3 with a private CA (`repo1-storage-ca-file`); default: the system's. TLS is "
        "always verified.",
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

    @model_validator(mode="after")
    def _s3(self):
        """An S3 repository needs its endpoint, bucket and key; its secret is judged here,
        so that the refusal names the key alone."""
        secret, named = self.pgbackrest_s3_key_secret, self.pgbackrest_s3_key_secret_from
        if secret is not None and named is not None:
            raise ValueError("pgbackrest_s3_key_secret_from: set it or pgbackrest_s3_key_secret, not both")
        if secret is not None and not re.fullmatch(r"[\x21-\x7e]{1,256}", secret):
            raise ValueError("pgbackrest_s3_key_secret: must be printable characters without spaces (its value is "
                             "not shown)")
        if self.pgbackrest_repository == "s3":
            for key in S3_REQUIRED:
                if getattr(self, key) is None:
                    raise ValueError(f"{key}: required with pgbackrest_repository = 's3'")
            if secret is None and named is None:
                raise ValueError("pgbackrest_s3_key_secret_from: required with pgbackrest_repository = 's3' (or "
                                 "pgbackrest_s3_key_secret)")
        return self
