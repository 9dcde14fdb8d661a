"""The settings of one concern: background workers, scheduled jobs and Redis (tasks/steps/background.py, docs/workers.md).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tasks.config.settings.values import Command, UnitName, calendar_event


class Worker(BaseModel):
    """A background worker (`workers`): see docs/workers.md."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    command: Command
    processes: int = Field(1, ge=1, le=64)
    stop_timeout: int = Field(30, ge=1, le=3600)


class Job(BaseModel):
    """A scheduled job (`jobs`): see docs/workers.md."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    command: Command
    schedule: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(calendar_event)]
    timeout: int = Field(3600, ge=1, le=86400 * 7)
    randomized_delay: int = Field(0, ge=0, le=86400)


class BackgroundSettings(BaseModel):
    """Background workers, scheduled jobs and Redis (tasks/steps/background.py, docs/workers.md)."""

    workers: dict[UnitName, Worker] = Field(
        {},
        description="Background workers: name -> `{command, processes (1), stop_timeout (30)}`. Each is the "
        "systemd unit `<app_name>-<name>@N.service` (N = 1..processes) running `command` (`/bin/sh`) in the live "
        "release with its venv, environment and the app's user and sandbox; restarted onto each release after "
        "its health gate (and on rollback), on failure, and when its unit changes; SIGTERM, then SIGKILL after "
        "`stop_timeout` seconds.",
    )
    jobs: dict[UnitName, Job] = Field(
        {},
        description="Scheduled jobs: name -> `{command, schedule, timeout (3600), randomized_delay (0)}`. Each is "
        "a oneshot `<app_name>-<name>.service` (never overlapping itself; killed after `timeout` seconds) run by "
        "`<app_name>-<name>.timer` on the systemd calendar `schedule` (`Persistent=`: a run missed while off "
        "happens at boot). Behind load balancers only on `jobs_host`.",
    )
    jobs_host: str | None = Field(
        None, min_length=1,
        description="The app server (inventory name) whose timers run the `jobs`; the others get the job units "
        "but no timers. Default: the first host of `app_servers` behind load balancers, else every host.",
    )
    redis: bool | None = Field(
        None,
        description="A Redis of the app's own (Debian's `redis-server@<app_name>.service`: its own process, data "
        "in `/var/lib/redis/<app_name>`, and password generated on the host, root-only, never shown), on "
        "127.0.0.1:`redis_port`, handed to the app, its workers and jobs as "
        "`REDIS_URL=redis://default:<password>@127.0.0.1:<port>/0`; no other app can reach it, and the app "
        "itself cannot reconfigure it (no CONFIG, ACL, SAVE, SHUTDOWN...). With a `db_servers` host it is there "
        "instead, for every app server: on its `private_address`, TLS only, only the app servers let in "
        "(`REDIS_URL=rediss://...`; docs/workers.md); without one, refused with `workers` or `socketio` on several "
        "app servers (each would have its own Redis). Default: on for `socketio` apps, else off.",
    )
    redis_port: int | None = Field(
        None, ge=1024, le=65535,
        description="The port of the app's Redis (`redis`): on 127.0.0.1, or on the `db_servers` host. Default: 6380 + a number from 0 to 999 "
        "made from `app_name` (the same on every run and host); two apps of a host on one port are refused, "
        "naming both: set it for one of them.",
    )
