"""The settings of one concern: releases, the deploy lock and rollback (tasks/steps/release.py, docs/releases.md).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.config.settings.values import NAME_RE, RELEASE_ID_RE


class ReleaseSettings(BaseModel):
    """Releases, the deploy lock and rollback (tasks/steps/release.py, docs/releases.md)."""

    keep_releases: int = Field(5, ge=1, le=100, description="Releases kept on the host (the live one always).")
    before_switch_commands: list[str] = Field(
        [],
        description="Shell commands run in a new release as the app user (venv on PATH) "
        "before it goes live, e.g. migrations; a failure stops the deploy, the live "
        "release untouched.",
    )
    rollback_app: str | None = Field(
        None,
        pattern=NAME_RE,
        description="For `rollback.py` on hosts with several `apps`: which app to roll back.",
    )
    rollback_to: str | None = Field(
        None,
        pattern=RELEASE_ID_RE,
        description="For `rollback.py`: the release to go back to. Default: the one live before the "
        "live one, by the host's own record.",
    )
    release_id: str | None = Field(
        None,
        pattern=RELEASE_ID_RE,
        description="The id of the release this run makes. `rollout.py` sets one for the whole fleet, so "
        "`rollback_to` names it on every host. Default: one per run (time, git commit, run id).",
    )
    deploy_lock_timeout: int = Field(
        120, ge=0, le=3600,
        description="Seconds a deploy (or rollback) waits for another run's lock on the app before it "
        "stops, naming the holder.",
    )
    deploy_lock_break: bool = Field(
        False,
        description="Break the app's deploy lock whoever holds it (after a run died on another machine: "
        "one on this machine whose process is gone is recognised by itself).",
    )
    canary_share: int = Field(
        0, ge=0, le=50,
        description="Percent of new clients (a random id in a cookie, set once) a new release serves first, as "
        "a second uWSGI instance beside the live one, for `canary_window` s; then it is promoted or rolled back "
        "by its own numbers (docs/releases.md). 0: off (the release replaces the live one at once). On one host "
        "its nginx splits the clients; behind load balancers the balancers do (set it for them too), over every "
        "app server's canary instance (uWSGI's port + 1000), in a run over every host. Not with "
        "`migrate_exclusive`, `websockets` or `socketio`.",
    )
    canary_window: int = Field(
        300, ge=2, le=3600,
        description="With `canary_share`: seconds the canary serves its share before the verdict.",
    )
    canary_min_requests: int = Field(
        100, ge=1, le=1_000_000,
        description="With `canary_share`: requests the canary must have served in its window to be judged; "
        "fewer, and it is rolled back (too little traffic to tell).",
    )
    canary_max_error_rate: float = Field(
        1.0, ge=0, le=100,
        description="With `canary_share`: percentage points of 5xx answers the canary may have above the live "
        "release's in the same window; more, and it is rolled back.",
    )
