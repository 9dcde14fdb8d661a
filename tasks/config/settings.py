"""Every setting of the deploy, with its default, in one place.

Settings are pyinfra host/group data: set them in an inventory (per host or per
group), in ``group_data/*.py``, or on the command line with ``--data key=value``.
``tasks.config.inventory.load_apps`` validates the whole lot before any operation is added,
so a typo or a bad value stops the run before any host is changed. This module is
the schema (each value on its own); the checks that look at the laptop's files or
at several values together are in tasks/config/checks.py, the derived defaults and paths
in tasks/config/app.py.

The README's settings table is generated from this module
(``python -m tasks.config.settings``) and a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
import sys
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pyinfra.api.exceptions import DeployError

from tasks.config import reserved

# A name that becomes a Unix user, a systemd unit, a directory and an nginx file name.
NAME_RE = r"^[a-z][a-z0-9_-]{0,30}$"
# Absolute paths without whitespace, quotes or shell/nginx/ini metacharacters.
ABS_PATH_RE = r"^/[A-Za-z0-9._/+-]*$"
# An import path and a callable: `wsgi:app`, `pkg.module:app` or a factory `pkg:create_app()`.
ENTRY_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\(\))?$"
# nginx server_name values: host names, wildcards, IPv4 addresses, or `_` (catch-all).
SERVER_NAME_RE = r"^(_|\*\.[A-Za-z0-9.-]+|\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?(\.\*)?|\[[0-9a-fA-F:]+\])$"
# A request path for the health check: no spaces, quotes or shell metacharacters.
URL_PATH_RE = r"^/[A-Za-z0-9._~/%=&+-]*(\?[A-Za-z0-9._~/%=&+-]*)?$"
# A TCP socket: IPv4 address, host name or [IPv6] address, then a port.
SOCKET_RE = r"^([0-9.]+|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\]):[0-9]{1,5}$"
# nginx sizes: `75M`, `512k`, `1g`, `0` (no limit).
SIZE_RE = r"^[0-9]+[kKmMgG]?$"
STATIC_URL_RE = r"^/([A-Za-z0-9._-]+/)*$"
VERSION_RE = r"^[0-9]+\.[0-9]+\.[0-9]+$"
REL_PATH_RE = r"^[A-Za-z0-9._/-]*$"
# Release ids: the deploying machine's UTC time, the git commit if any, the run's id.
RELEASE_ID_RE = r"^[0-9]{8}T[0-9]{6}Z(-[0-9a-f]{4,40}){0,2}$"

# systemd's confinement of everything that runs as the app user: the service
# (templates/uwsgi.service.j2) and the release tool's steps in a new release (venv
# build, import check, before-switch commands, canary; rendered into
# release-tool.json). Each adds ReadWritePaths= for where it must write. No
# capabilities at all: uWSGI binds a unix socket in its own directory or a port
# above 1024, and never changes users itself. Not a setting, but kept here, where the
# unit's comment says it is (tasks/config/app.py hands it to the templates).
SANDBOX = (
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "ProtectKernelLogs=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "RestrictSUIDSGID=yes", "RestrictRealtime=yes",
    "RestrictNamespaces=yes", "LockPersonality=yes", "SystemCallArchitectures=native", "CapabilityBoundingSet=",
    "UMask=0027",
)

# What each pattern means, for error messages people can act on.
PATTERN_HELP = {
    NAME_RE: "must be 1-31 characters: lowercase letters, digits, '-' or '_', "
    "starting with a letter",
    RELEASE_ID_RE: "must be a release id like '20261121T073000Z-3a98e1d-5f0c2a' (see releases.py)",
    ABS_PATH_RE: "must be an absolute path of letters, digits and . _ / + - "
    "(no spaces, quotes or shell/nginx metacharacters)",
    ENTRY_RE: "must be 'module:callable' (e.g. 'wsgi:app') or a factory "
    "'package:create_app()'",
    SERVER_NAME_RE: "must be a host name, '*.example.com', an IP address or '_'",
    URL_PATH_RE: "must be a URL path starting with '/' (no spaces, quotes or ';')",
    SIZE_RE: "must be a size like '75M', '512k' or '1g'",
    STATIC_URL_RE: "must start and end with '/' (e.g. '/static/')",
    VERSION_RE: "must be a release version like '2.0.31'",
    REL_PATH_RE: "must be a relative path of letters, digits and . _ / -",
    SOCKET_RE: "must be 'unix' or ADDRESS:PORT, e.g. '10.0.0.5:3031' or '[fd00::5]:3031'",
}


def _no_dot_dot(value: str) -> str:
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address or network (CIDR), e.g. '10.0.0.0/8'") from None


def _relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a path inside the app directory, without '..'")
    return value



# systemd calendar events (OnCalendar=), checked on the laptop (no `systemd-analyze`
# there): a shorthand, or `[WEEKDAYS] [DATE] TIME [UTC]` (or a date without a time),
# each component `*`, a number, a range `a..b`, a list `a,b`, with an optional
# repetition `/n`. Documented in docs/workers.md.
CALENDAR_SHORTHANDS = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
                       "semiannually")
_DAY = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_DAYS_RE = re.compile(rf"^{_DAY}(\.\.{_DAY})?(,{_DAY}(\.\.{_DAY})?)*$")


def _calendar_component(text: str, low: int, high: int) -> bool:
    for part in text.split(","):
        match = re.fullmatch(r"(\*|([0-9]+)(\.\.([0-9]+))?)(/([0-9]+))?", part)
        if not match:
            return False
        numbers = [int(n) for n in (match.group(2), match.group(4)) if n is not None]
        if any(not low <= n <= high for n in numbers) or (match.group(6) is not None and int(match.group(6)) < 1):
            return False
    return True


def _calendar(value: str) -> str:
    problem = ValueError("must be a systemd calendar event (OnCalendar=) like 'daily', '*-*-* 03:00:00', "
                         "'Mon..Fri 08:30' or '*:0/15' (see docs/workers.md)")
    words = value.split()
    if len(words) == 1 and words[0] in CALENDAR_SHORTHANDS:
        return value
    if words and words[-1] == "UTC":
        words = words[:-1]
    if words and _DAYS_RE.match(words[0]):
        words = words[1:]
    date = time = None
    for word in words:
        if ":" in word and time is None:
            time = word
        elif "-" in word and date is None and time is None:
            date = word
        else:
            raise problem
    if date is None and time is None:
        raise problem
    if date is not None:
        parts = date.split("-")
        if len(parts) == 2:
            parts = ["*", *parts]
        if len(parts) != 3 or not all(_calendar_component(p, lo, hi) for p, (lo, hi) in
                                      zip(parts, ((1970, 2199), (1, 12), (1, 31)))):
            raise problem
    if time is not None:
        parts = time.split(":")
        if len(parts) == 2:
            parts.append("00")
        if len(parts) != 3 or not all(_calendar_component(p, 0, hi) for p, hi in zip(parts, (23, 59, 59))):
            raise problem
    return value

AbsPath = Annotated[str, Field(pattern=ABS_PATH_RE), AfterValidator(_no_dot_dot)]
AppDirectory = Annotated[AbsPath, AfterValidator(reserved.app_directory)]
RelPath = Annotated[str, Field(pattern=REL_PATH_RE), AfterValidator(_relative_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
ServerName = Annotated[str, Field(pattern=SERVER_NAME_RE, max_length=253)]


# One line of shell, run by /bin/sh in the live release (systemd's `$` and `%` escaped
# by the templates).
Command = Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^[^\n\r\x00]*$")]
UnitName = Annotated[str, Field(pattern=NAME_RE)]


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
    schedule: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_calendar)]
    timeout: int = Field(3600, ge=1, le=86400 * 7)
    randomized_delay: int = Field(0, ge=0, le=86400)


class Settings(BaseModel):
    """The deploy's settings as given: None where the default is derived (tasks/config/app.py
    fills it in). Field descriptions become the README table."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The app
    app_name: Annotated[str, AfterValidator(reserved.unit)] = Field(
        "greeting",
        pattern=NAME_RE,
        description="Name of the app: its system user and group, systemd unit, "
        "nginx site and directory names derive from it.",
    )
    app_source: str = Field(
        "files/greeting",
        min_length=1,
        description="Local directory with the app's code, uploaded to the host "
        "(relative paths are relative to the repository root). Its regular files ship; a "
        "symbolic link or special file among them is refused, never followed (see Troubleshooting).",
    )
    app_entry: str = Field(
        "wsgi:app",
        pattern=ENTRY_RE,
        description="WSGI entry point: `module:callable`, or an application factory "
        "`package:create_app()`.",
    )
    app_requirements: RelPath = Field(
        "requirements.txt",
        min_length=1,
        description="The app's pip requirements file, relative to `app_source`.",
    )
    app_static_dir: RelPath | None = Field(
        None,
        description="Directory (relative to `app_source`) that nginx serves itself "
        "under `app_static_url`; empty to serve no static files. Default: the app's own static "
        "folder, found in its `Flask(...)` call (`static/` beside the module, `pkg/static` for a "
        "package, its `static_folder`), or none when it has none.",
    )
    app_static_url: str | None = Field(
        None,
        pattern=STATIC_URL_RE,
        description="URL prefix for the static directory; starts and ends with `/`. Default: the "
        "app's `static_url_path`, or `/static/`.",
    )
    url_prefix: Annotated[str, AfterValidator(reserved.no_dot_segments)] = Field(
        "/",
        pattern=r"^/([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?/?$",
        description="URL path the app is mounted under, e.g. `/blog` (it sees SCRIPT_NAME "
        "`/blog`; `/blog` and `/blog/` both reach it). Several apps can share a host name "
        "under different prefixes.",
    )
    websockets: bool = Field(
        False,
        description="Serve WebSockets: uWSGI runs gevent with `http-websockets` on an HTTP "
        "socket and nginx proxies with the Upgrade headers. Needs `gevent` in the app's "
        "requirements; threads are not used.",
    )
    socketio: bool = Field(
        False,
        description="Serve a Flask-SocketIO app over real WebSockets on every CPU: `socketio_instances` "
        "single-process gevent uWSGI workers, each on a socket of its own, behind nginx with session "
        "affinity (a route cookie), and Redis as the message queue (`redis` defaults to on; `REDIS_URL`). "
        "Needs `gevent` and `Flask-SocketIO` in the app's requirements. See docs/socketio.md.",
    )
    socketio_instances: int | None = Field(
        None, ge=2, le=64,
        description="Socket.IO instances (single-process uWSGI workers, one socket each) for `socketio` apps. "
        "Default: one per CPU of the host (from its facts), at least 2, at most 16.",
    )
    app_user: Annotated[str, AfterValidator(reserved.account)] | None = Field(
        None,
        pattern=NAME_RE,
        description="Unprivileged system user (and group) the app runs as. "
        "Default: `app_name`.",
    )
    app_root: AppDirectory | None = Field(
        None,
        description="Directory on the host holding code, venv and uWSGI config. "
        "Default: `/srv/<app_name>`.",
    )
    shared_paths: list[RelPath] = Field(
        ["instance/"],
        description="Paths (relative to the app) kept outside the releases and linked into "
        "each, so data survives redeploys and rollbacks; a trailing `/` makes a directory, "
        "otherwise a file.",
    )
    app_env_file: str | None = Field(
        None, min_length=1,
        description="Local file of `KEY=value` lines (keep it out of git) that become the app's "
        "environment: uploaded with mode 600, owned by the app user, never printed.",
    )
    app_env_from: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        [],
        description="Names of environment variables of the shell running pyinfra to pass to the app "
        "the same way (e.g. `SECRET_KEY`).",
    )
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

    # Background workers, scheduled jobs, Redis (tasks/steps/background.py, docs/workers.md)
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
        "itself cannot reconfigure it (no CONFIG, ACL, SAVE, SHUTDOWN...). Refused with `workers` or `socketio` "
        "on several app servers (each would have its own Redis). Default: on for `socketio` apps, else off.",
    )
    redis_port: int | None = Field(
        None, ge=1024, le=65535,
        description="The 127.0.0.1 port of the app's Redis (`redis`). Default: 6380 + a number from 0 to 999 "
        "made from `app_name` (the same on every run and host); two apps of a host on one port are refused, "
        "naming both: set it for one of them.",
    )

    # PostgreSQL (tasks/steps/database.py, docs/database.md)
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
    database_backup_schedule: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_calendar)] | None = Field(
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

    # uWSGI
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
    private_address: Annotated[str, AfterValidator(_ip_address)] | None = Field(
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

    # nginx
    nginx_port: Port = Field(80, description="Port nginx listens on for the site.")
    nginx_server_names: list[ServerName] = Field(
        ["_"],
        min_length=1,
        description="nginx `server_name` values; `_` matches any host name.",
    )
    nginx_client_max_body_size: str = Field(
        "75M", pattern=SIZE_RE, description="Largest request body nginx accepts."
    )
    nginx_static_max_age: str = Field(
        "30d", pattern=r"^(off|[0-9]+[smhdwMy]?)$",
        description="How long browsers may cache static files (nginx `expires`), or `off`.",
    )
    tls_certificate: str | None = Field(
        None, min_length=1,
        description="Local path of the site's certificate (PEM, full chain) to serve HTTPS with; "
        "with `tls_certificate_key`.",
    )
    tls_certificate_key: str | None = Field(
        None, min_length=1,
        description="Local path of the certificate's private key: uploaded with mode 600, "
        "never shown in `--diff` output.",
    )
    tls_port: Port = Field(443, description="HTTPS port, when a certificate is set.")
    tls_redirect_http: bool = Field(
        True, description="With TLS: answer plain HTTP with a redirect to HTTPS (else serve both)."
    )
    tls_hsts_max_age: int = Field(
        0, ge=0, le=63072000,
        description="With TLS: send Strict-Transport-Security with this max-age (0: no HSTS).",
    )
    # ACME (automatic HTTPS): checked by tasks/steps/acme.py `check`, see docs/https.md.
    tls_acme: bool = Field(
        False,
        description="Get the site's certificate from an ACME CA (Let's Encrypt by default) with certbot's "
        "HTTP-01 webroot method, renew it twice a day and reload nginx; instead of `tls_certificate`. Needs "
        "`acme_email`, real host names in `nginx_server_names` and `nginx_port` 80. On a load balancer's "
        "inventory only the balancers get certificates.",
    )
    acme_email: str | None = Field(None, min_length=1, description="Contact address registered with the ACME CA "
                                   "(expiry notices); required with `tls_acme`.")
    acme_directory: str = Field(
        "https://acme-v02.api.letsencrypt.org/directory", min_length=1,
        description="The ACME CA's directory URL. Let's Encrypt's staging CA (for trying things out, "
        "untrusted certificates, high limits): `https://acme-staging-v02.api.letsencrypt.org/directory`.",
    )
    acme_ca_bundle: str | None = Field(None, min_length=1, description="Local PEM file of the CA(s) to trust for "
                                       "HTTPS to `acme_directory` (a private or test CA); default: the host's own "
                                       "trust store.")
    acme_min_valid_days: int = Field(
        14, ge=1, le=3650,
        description="The deploy fails when the live ACME certificate expires in fewer days than this "
        "(certbot renews from 30 days before: a certificate this close means renewal is failing).",
    )
    nginx_access_log: AbsPath | Literal["off"] | None = Field(
        None,
        description="Site access log, or `off`. Default: `/var/log/nginx/<app_name>.access.log`.",
    )
    nginx_error_log: AbsPath | None = Field(
        None, description="Site error log. Default: `/var/log/nginx/<app_name>.error.log`."
    )

    # Load balancing (hosts in the `load_balancers` group)
    lb_method: Literal["round_robin", "least_conn", "ip_hash"] = Field(
        "round_robin", description="How the balancer spreads requests over the app servers."
    )
    lb_max_fails: int = Field(
        3, ge=0, le=100,
        description="Failed attempts after which the balancer rests an app server for "
        "`lb_fail_timeout` (0: never).",
    )
    lb_fail_timeout: int = Field(10, ge=1, le=3600, description="Seconds an app server rests after `lb_max_fails`.")

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
    maintenance_allow: list[Annotated[str, AfterValidator(_ip_network)]] = Field(
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


class SettingsError(DeployError):
    """Bad settings: raised before any operation is added, so no host is changed."""

    @classmethod
    def listing(cls, where: str, problems: list[str]) -> SettingsError:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        return cls(f"Invalid {where}; nothing was changed on any host:\n{lines}")


# Data keys pyinfra itself understands: global arguments (`_sudo`, ...) and
# connector data (`ssh_port`, `docker_identifier`, ...).
def _is_pyinfra_key(key: str) -> bool:
    return key.startswith("_") or any(key.startswith(f"{name}_") for name in _connector_names())


@functools.cache
def _connector_names() -> tuple[str, ...]:
    from pyinfra.api.connectors import get_all_connectors

    return tuple(get_all_connectors())


# Settings that map names to blocks of their own fields (errors name the block).
NAMED_BLOCKS = ("workers", "jobs")


def parse(data: dict[str, Any]) -> tuple[Settings | None, list[str]]:
    """A host's data as Settings (None when a value is bad), and one line per
    unknown key or bad value, naming it."""
    known = set(Settings.model_fields)
    problems = []
    for key in sorted(data):
        if key in known or _is_pyinfra_key(key):
            continue
        hint = difflib.get_close_matches(key, known, n=1)
        problems.append(
            f"{key}: unknown setting" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    ours = {key: value for key, value in data.items() if key in known}
    try:
        return Settings(**ours), problems
    except ValidationError as exc:
        # One line per bad key; a value failing every branch of a union (e.g.
        # `journal` or a path) gets the branches' messages joined.
        by_key: dict[str, tuple[Any, list[str]]] = {}
        for error in exc.errors():
            loc = error["loc"]
            key = "".join([str(loc[0]) if loc else ""] + [f"[{p}]" for p in loc[1:] if isinstance(p, int)])
            if loc and loc[0] in NAMED_BLOCKS and len(loc) > 1:
                # workers.celery.processes, or workers.Bad for a bad name
                key = ".".join(str(p) for p in loc if p != "[key]")
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "string_pattern_mismatch":
                message = PATTERN_HELP.get(error["ctx"]["pattern"], message)
            by_key.setdefault(key, (error["input"], []))[1].append(message)
        for key, (value, messages) in by_key.items():
            message = ", or ".join(messages)
            problems.append(f"{key} = {value!r}: {message}" if key else message)
        return None, problems


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| Setting | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if field.default is not None:
            default = f"`{json.dumps(field.default)}`"
        else:  # unset: derived where the description says what from, else simply not set
            default = "(derived)" if "Default:" in (field.description or "") else "(not set)"
        rows.append(f"| `{name}` | {default} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
