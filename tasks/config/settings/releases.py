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
