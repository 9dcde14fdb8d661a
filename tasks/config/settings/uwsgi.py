"""The settings of one concern: uWSGI: its build, workers, socket and logs (tasks/steps/uwsgi.py).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from tasks.config.settings.values import AbsPath, SOCKET_RE, VERSION_RE, ip_address


class UwsgiSettings(BaseModel):
    """uWSGI: its build, workers, socket and logs (tasks/steps/uwsgi.py)."""

    uwsgi_version: str = Field(
        "2.0.31",
        pattern=VERSION_RE,
        description="uWSGI version pinned in the venv (compiled on the host, with PCRE).",
    )
    uwsgi_processes: int | None = Field(
        None, ge=1, le=256,
        description="uWSGI worker processes. Default: one per CPU of the host (from its facts), "
        "at least 2, at most 16.",
    )
    uwsgi_threads: int | None = Field(
        None, ge=1, le=256,
        description="Threads per worker process. Default: 2 (1 for `websockets` apps, "
        "where gevent and threads conflict).",
    )
    uwsgi_async_cores: int = Field(
        100, ge=1, le=10000,
        description="Concurrent requests (gevent greenlets) per worker for `websockets` apps.",
    )
    uwsgi_harakiri: int = Field(
        30, ge=0, le=3600, description="Seconds before a stuck request's worker is killed "
        "(0 disables)."
    )
    uwsgi_max_requests: int = Field(
        0, ge=0, le=10_000_000,
        description="Requests a worker serves before it is recycled, against slow leaks "
        "(0: never; recycling is spread with `max-requests-delta` so workers never all go at once).",
    )
    uwsgi_listen: int = Field(
        1024, ge=1, le=4096,
        description="Socket listen backlog: requests queued while all workers are busy.",
    )
    uwsgi_socket: Literal["unix"] | Annotated[str, Field(pattern=SOCKET_RE)] | None = Field(
        None,
        description="Where uWSGI listens (uwsgi protocol): `unix` (a socket under /run, "
        "nginx's group only) or `ADDRESS:PORT` (TCP). Default: `unix`, or "
        "`<private_address>:3031` on app servers behind a load balancer.",
    )
    private_address: Annotated[str, AfterValidator(ip_address)] | None = Field(
        None,
        description="The host's address on the private network: app servers in the `app_servers` "
        "group are reached on it by their load balancers, and each balancer in `load_balancers` "
        "connects from it (the only addresses the app servers' firewall lets reach uWSGI). "
        "Required on both when there are `load_balancers`. The `db_servers` host listens on its own "
        "(PostgreSQL, TLS) and lets in only the app servers' (required on both when there is one).",
    )
    uwsgi_log_requests: bool = Field(
        False,
        description="Log every request in uWSGI's log too (nginx's access log already has them; "
        "off saves a log write per request). Errors and start-up lines are always logged.",
    )
    uwsgi_log: Literal["journal"] | AbsPath = Field(
        "journal",
        description="`journal` (read with `journalctl -u <app_name>`) or an absolute "
        "log file path.",
    )
