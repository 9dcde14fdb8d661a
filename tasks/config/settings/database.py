"""The settings of one concern: postgreSQL and its backups (tasks/steps/database.py, docs/database.md).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from tasks.config.settings.values import Command, calendar_event


class DatabaseSettings(BaseModel):
    """PostgreSQL and its backups (tasks/steps/database.py, docs/database.md)."""

    database: Literal["postgresql"] | None = Field(
        None,
        description="`postgresql`: install the distribution's PostgreSQL server on the host (unix socket only, "
        "nothing listening on the network), with a database and a role of the app's own and a password made on "
        "the host (root-only, never shown), handed to the app, its workers, jobs and `before_switch_commands` "
        "as `DATABASE_URL` (`postgresql://...?host=/var/run/postgresql`). Debian and Ubuntu.",
    )
    migrate_commands: list[Command] = Field(
        [],
        description="Like `before_switch_commands` (run after them, in the new release, before it goes live), "
        "but on one app server only behind load balancers (`migrations_host`), before any app server switches: "
        "schema migrations of a shared database, e.g. `flask --app wsgi db upgrade`. On every host otherwise.",
    )
    migrations_host: str | None = Field(
        None, min_length=1,
        description="The app server (inventory name) that runs `migrate_commands`. Default: the first host of "
        "`app_servers` behind load balancers, else every host.",
    )
    migrate_exclusive: bool = Field(
        False,
        description="Run `migrate_commands` with the app quiet (a table rewrite, a backfill that must not race "
        "writes): while they run, requests wait instead of reaching the app (at most `migrate_hold_timeout` s "
        "each, then 503 with `Retry-After`), and are then served by the new release. Each app server holds its "
        "own: behind load balancers, `migrations_host` only (docs/releases.md).",
    )
    migrate_hold_timeout: int = Field(
        20, ge=1, le=50,
        description="With `migrate_exclusive`: seconds a request waits at most, then 503; at least 5 s below "
        "`uwsgi_harakiri` (and below nginx's 60 s read timeout).",
    )
    database_backup_schedule: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(calendar_event)] | None = Field(
        "daily",
        description="With `database`: when a systemd timer dumps the app's database (`pg_dump` custom format) "
        "into `/var/backups/pyinfra-flask/<app_name>/` (root-only), a calendar event like `jobs`' schedules; "
        "`null` for no timer (`ops.py INVENTORY backup now` still works).",
    )
    database_backup_keep: int = Field(
        7, ge=1, le=1000,
        description="Backups kept: the newest this many; older ones are removed after each backup.",
    )
    database_backup_max_age: int = Field(
        30, ge=0, le=3650,
        description="Days a backup is kept at most (the newest is always kept; 0: no age limit).",
    )
