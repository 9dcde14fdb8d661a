"""The settings of one concern: day two (maintenance, hooks, notifications), the health check and packages.

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from tasks.config.settings.values import URL_PATH_RE, ip_network


class DayTwoSettings(BaseModel):
    """Day two (maintenance, hooks, notifications), the health check and packages."""

    # Day-two: maintenance mode, hooks and notifications (docs/maintenance-audit-hooks.md)
    maintenance_page: str | None = Field(
        None, min_length=1,
        description="Local HTML file nginx answers with (status 503) while the app is in maintenance "
        "(`ops.py INVENTORY maintenance on`), uploaded by every deploy. Default: a plain page of its own "
        "(files/maintenance.html).",
    )
    maintenance_retry_after: int = Field(
        300, ge=1, le=86400,
        description="Seconds sent in the `Retry-After` header of the maintenance page.",
    )
    maintenance_allow: list[Annotated[str, AfterValidator(ip_network)]] = Field(
        [],
        description="Client addresses or networks (`203.0.113.7`, `10.0.0.0/8`) that still reach the app "
        "during maintenance. The address nginx sees: behind the load balancers, the balancers' clients "
        "(maintenance is switched there).",
    )
    before_deploy_hooks: list[str] = Field(
        [],
        description="Local executables run on your machine once per `deploy.py`/`rollback.py` run, before any "
        "host is changed, with the run's details in `PYINFRA_FLASK_*` environment variables; one that fails "
        "stops the run with nothing changed.",
    )
    after_deploy_hooks: list[str] = Field(
        [],
        description="Local executables run on your machine once at the end of every `deploy.py`/`rollback.py` "
        "run (`PYINFRA_FLASK_OUTCOME` says how it went); one that fails only warns.",
    )
    webhook_url: str | None = Field(
        None, min_length=1,
        description="An `http(s)://` URL that gets a JSON POST at the end of every deploy or rollback run "
        "(success, failure, automatic rollback); never printed (it may hold a token); a failed delivery only "
        "warns.",
    )

    # Health check and packages
    healthcheck_path: str = Field(
        "/", pattern=URL_PATH_RE,
        description="Path requested through nginx after a deploy. Redirects are followed on the site only (same "
        "host, port and scheme, or HTTP to HTTPS on port 443); a redirect elsewhere (a login service, another "
        "port) is the answer, and fails a check expecting 200.",
    )
    healthcheck_status: int = Field(
        200, ge=100, le=599, description="HTTP status the health check expects."
    )
    healthcheck_body: str = Field(
        "",
        max_length=200,
        pattern=r"^[^\n\r]*$",
        description="Text the health check's response body must contain (empty: any body).",
    )
    healthcheck_timeout: int = Field(5, ge=1, le=120, description="Seconds one health check request may take.")
    healthcheck_retries: int = Field(
        10, ge=1, le=300, description="Attempts (one second apart) before the check fails."
    )
    reload_timeout: int = Field(
        90, ge=5, le=3600,
        description="Seconds uWSGI may take to have every worker on the new release before "
        "the deploy counts it as failed (and rolls back).",
    )
    fact_batch: bool = Field(
        True,
        description="Read a run's facts from each host in one command (the ones the previous run "
        "asked, remembered in `~/.cache/pyinfra-flask`), again when pyinfra starts executing; `false` "
        "leaves every fact to pyinfra (one command each).",
    )
    apt_cache_valid_time: int = Field(
        86400, ge=0,
        description="Seconds the package index counts as fresh; it is refreshed only "
        "when packages are missing and it is older than this.",
    )
